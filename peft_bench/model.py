"""The video classifier every method builds: backbone -> pooling -> dropout -> linear head.

The default pooling is the released ST-Adapter code's: temporal mean of the per-frame [CLS] tokens,
then the backbone's frozen final norm. Methods that pool differently (attentional pooling, X-ViT's
temporal aggregation) pass their own ``pool`` module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones import VideoBackbone


class ClsTemporalMean(nn.Module):
    """Mean over frames of the [CLS] token, then the backbone's final norm."""

    def forward(self, tokens: Tensor, final_norm: nn.Module) -> Tensor:
        return final_norm(tokens[:, :, 0].mean(dim=1))


class VideoClassifier(nn.Module):
    """The head is the same for every method, so rows differ only in what a method adds: its dropout is
    set by the runner from the recipe (``train.head_dropout``); ``dropout`` here is the default for a model
    built outside a run."""

    def __init__(self, backbone: VideoBackbone, num_classes: int, dropout: float = 0.5, pool: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.pool = pool if pool is not None else ClsTemporalMean()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def backbone_is_frozen(self) -> bool:
        """True when nothing inside the backbone trains: what the method adds sits after it (linear probe,
        attentional pooling). Read from ``requires_grad``, so a new method needs no list to join."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def backbone_tokens(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> the backbone's final tokens (B, T, L, D).

        A frozen backbone runs without autograd: no graph, no saved activations, nothing to go back
        through; the gradient of the trainable layers after it does not need any of it. (Frozen weights on
        an input without grad already give autograd nothing to record; no_grad makes it a guarantee,
        whatever the input.)"""
        if self.backbone_is_frozen():
            with torch.no_grad():
                return self.backbone(video)
        return self.backbone(video)

    def head_from_tokens(self, tokens: Tensor) -> Tensor:
        """Backbone tokens (B, T, L, D) -> logits: everything after the backbone (what a feature cache feeds)."""
        return self.head(self.dropout(self.pool(tokens, self.backbone.final_norm)))

    def features(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> pooled features (B, D)."""
        return self.pool(self.backbone_tokens(video), self.backbone.final_norm)

    def forward(self, video: Tensor) -> Tensor:
        return self.head_from_tokens(self.backbone_tokens(video))


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def trainable_m(self) -> float:
        return self.trainable / 1e6


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
        raise ValueError(f"checkpoint does not match this method's trainable parameters: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
