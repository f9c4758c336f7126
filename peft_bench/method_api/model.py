"""The video classifier every method builds: backbone -> features -> pooling -> dropout -> head.

The default is the released ST-Adapter code's: temporal mean of the per-frame [CLS] tokens, the
backbone's frozen final norm, the run's head dropout, a new linear head. A method replaces what it
changes: ``pool`` (any module reading a :class:`~peft_bench.backbones.base.Features`, of any output
width), ``head`` (after the run's dropout), and what the backbone hands over (intermediate blocks'
outputs, their attention q/k, the clip itself). The optimizer's view of a model (weight-decay exemptions,
parameter groups) is ``optim.py``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from peft_bench.backbones import VideoBackbone
from peft_bench.backbones.base import Features, take_indices
from peft_bench.method_api.context import RunContext


class ClsTemporalMean(nn.Module):
    """Mean over frames of the [CLS] token, then the backbone's final norm."""

    def forward(self, features: Features) -> Tensor:
        return features.final_norm(features.tokens[:, :, 0].mean(dim=1))


class NormedClsMean(nn.Module):
    """The final norm on each frame's [CLS] token, then the mean over frames: the pooling of AIM's and
    ZeroI2V's released heads (``ln_post`` per frame), where ``ClsTemporalMean`` norms the mean."""

    def forward(self, features: Features) -> Tensor:
        return features.final_norm(features.tokens[:, :, 0]).mean(dim=1)


@dataclass(frozen=True)
class FeatureRequest:
    """What the part after the backbone reads besides the final tokens (and what a feature cache keys on)."""

    intermediates: tuple[int, ...] = ()  # block indices whose outputs it reads
    qk: bool = False  # the attention q and k of those blocks
    video: bool = False  # the input clip itself
    frame_stride: int = 1  # the backbone sees every frame_stride-th frame of the clip

    @property
    def tokens_only(self) -> bool:
        return self == FeatureRequest()


class VideoClassifier(nn.Module):
    """Backbone, pooling and head. Rows differ only in what a method adds; by default the head is the
    same for every method and its dropout is the run's (``RunContext.head_dropout``).

    Args:
        backbone: the (frozen) backbone, with whatever the method put inside it.
        context: the run's context: the number of classes and the head dropout come from it.
        pool: ``pool(features) -> (B, feature_dim)``; default :class:`ClsTemporalMean`.
        head: ``head(pooled) -> logits``, after the run's dropout; default a new ``nn.Linear``.
        feature_dim: the pool's output width (default the backbone's width), for the default head.
        intermediates: blocks whose outputs the pool reads, in timm's convention (``()`` none, None all,
            an int n the last n, a list of indices; negatives count from the end).
        qk: the pool also reads those blocks' attention q and k.
        video: the pool also reads the input clip (a side network of its own); a feature cache cannot serve it.
        frame_stride: the backbone sees every ``frame_stride``-th frame (a side network may read all of them).
    """

    def __init__(
        self,
        backbone: VideoBackbone,
        context: RunContext,
        *,
        pool: nn.Module | None = None,
        head: nn.Module | None = None,
        feature_dim: int | None = None,
        intermediates: int | Sequence[int] | None = (),
        qk: bool = False,
        video: bool = False,
        frame_stride: int = 1,
    ):
        super().__init__()
        num_classes = getattr(context, "num_classes", None)  # read so: callers have passed other objects
        if num_classes is None:
            raise TypeError("VideoClassifier needs the run's RunContext, with num_classes")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
        self.backbone = backbone
        self.pool = pool if pool is not None else ClsTemporalMean()
        self.dropout = nn.Dropout(context.head_dropout)
        if head is None:
            head = nn.Linear(feature_dim or backbone.width, num_classes)
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.head = head
        self.reads = FeatureRequest(tuple(take_indices(intermediates, len(backbone.blocks))), qk, video, frame_stride)

    def backbone_is_frozen(self) -> bool:
        """True when nothing inside the backbone trains: what the method adds sits after it (linear probe,
        attentional pooling). Read from ``requires_grad``, so a new method needs no list to join."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def forward_features(self, video: Tensor) -> Features:
        """(B, T, C, H, W) -> what the pool reads: final tokens and what the method asked for.

        A frozen backbone runs without autograd: no graph, no saved activations, nothing to go back
        through; the gradient of the trainable layers after it does not need any of it. (Frozen weights on
        an input without grad already give autograd nothing to record; no_grad makes it a guarantee,
        whatever the input.)"""
        frames = video[:, :: self.reads.frame_stride] if self.reads.frame_stride > 1 else video
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_is_frozen()):
            features = self.backbone.forward_intermediates(frames, list(self.reads.intermediates), qk=self.reads.qk)
        if self.reads.video:
            features.video = video
        return features

    def backbone_tokens(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> the backbone's final tokens (B, T, L, D)."""
        return self.forward_features(video).tokens

    def forward_head(self, features: Features) -> Tensor:
        """Everything after the backbone: pooling, the run's dropout, the head."""
        return self.head(self.dropout(self.pool(features)))

    def pooled_features(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> what the head classifies (B, feature_dim)."""
        return self.pool(self.forward_features(video))

    def forward(self, video: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(video))

    # -- features as one tensor (what a feature cache stores) ------------------------------------------

    def pack_features(self, features: Features) -> Tensor:
        """The features the pool reads as one tensor: the final tokens (B, T, L, D) alone, or, when it reads
        more, (B, T, S, L, D) with S streams: tokens, each intermediate block, then each block's q and k
        (heads merged). Whatever is stored can be indexed per clip and per view like the tokens."""
        if self.reads.video:
            raise ValueError("features that include the input clip cannot be packed into one tensor")
        if self.reads.tokens_only:
            return features.tokens
        streams = [features.tokens] + [features.intermediates[i] for i in self.reads.intermediates]
        for i in self.reads.intermediates if self.reads.qk else ():
            streams += [merge_frame_heads(t) for t in features.qk[i]]
        return torch.stack(streams, dim=2)

    def unpack_features(self, packed: Tensor) -> Features:
        if self.reads.tokens_only:
            return Features(packed, self.backbone.final_norm)
        streams = iter(packed.unbind(dim=2))
        tokens = next(streams)
        intermediates = {i: next(streams) for i in self.reads.intermediates}
        qk = {}
        if self.reads.qk:
            for i in self.reads.intermediates:
                qk[i] = (
                    split_frame_heads(next(streams), self.backbone.num_heads),
                    split_frame_heads(next(streams), self.backbone.num_heads),
                )
        return Features(tokens, self.backbone.final_norm, intermediates, qk)

    def head_from_tokens(self, packed: Tensor) -> Tensor:
        """Packed features (see :meth:`pack_features`) -> logits: what a feature cache feeds."""
        return self.forward_head(self.unpack_features(packed))


def merge_frame_heads(x: Tensor) -> Tensor:
    """(B, T, heads, L, d) -> (B, T, L, heads * d)."""
    b, t, heads, length, d = x.shape
    return x.transpose(2, 3).reshape(b, t, length, heads * d)


def split_frame_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, L, D) -> (B, T, heads, L, D / heads)."""
    b, t, length, dim = x.shape
    return x.view(b, t, length, num_heads, dim // num_heads).transpose(2, 3)


# --- counting and trainable state -------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())  # deduplicated by nn.Module
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only what the method trains: the checkpoint of a parameter-efficient run stays small."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict(keep_vars=True).items() if n in names}


def load_trainable_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"checkpoint does not match this method's trainable parameters: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
