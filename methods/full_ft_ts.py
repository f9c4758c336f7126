"""Full fine-tuning with X-ViT space-time mixing (SA+TS) (Bulat et al., NeurIPS 2021).

Space-time mixing: in every block's attention the queries stay those of frame t, while the keys and
values are assembled from a local temporal window: of each head's d channels, one block of
d // (2w + 1) comes from each neighbouring frame t-w..t+w (w = 1: the first third from t-1, the last
third from t+1) and the rest from t. Spatial attention then mixes space and time at the cost of an
image model and with no new parameters. Frames past the clip's ends contribute zeros.

Temporal aggregation (X-ViT's temporal attention aggregation): instead of averaging the per-frame
[CLS] tokens, a new learned token attends to them through one transformer layer (pre-norm attention
and MLP, as a ViT block); its output, through the final norm, is classified. X-ViT also adds a learned
temporal embedding to the input tokens. Everything trains.

Parameters, ViT-B/16: backbone 85,799,424 + temporal embedding 8 x 768 = 6,144 + aggregation token 768
+ aggregation layer 7,087,872 (the size of a ViT-B block) + head 307,600 = 93,201,808 = 93.20M.
The paper prints 93.79M, 0.63% more: 588,192 more than this, close to one more 768 x 768 linear layer
with bias (590,592). Neither paper says what that layer would be, so it is not added.

Weight decay: none on the position embedding and class token (as timm and open_clip declare them), the
temporal embedding and the aggregation token. X-ViT's model declares its position embedding, class
token and temporal embedding in ``no_weight_decay()`` (1adrianb/video-transformers at 82ca176,
slowfast/models/transformers/vit.py, where the last is misspelt ``temp_token`` and so matches nothing);
the aggregation token is a learned token like the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_bench.backbones import Features, FrameBlock, VideoBackbone
from peft_bench.method_api.layers import WrappedBlock
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, from_context, register_method
from peft_bench.method_api.temporal import Attention, TemporalEmbedding, init_vit_linear


@dataclass
class FullFTTSConfig:
    window: int = 1  # temporal window w: channels come from frames t-w..t+w
    num_frames: int | None = from_context("num_frames", "length of the learned temporal embedding (None: the run's)")

    def __post_init__(self):
        if self.window < 0:
            raise ValueError(f"window must be non-negative, got {self.window}")


def shift_frames(x: Tensor, offset: int) -> Tensor:
    """(B, T, ...) -> frame t holds frame t + offset, zeros where that falls outside the clip."""
    if offset == 0:
        return x
    steps = min(abs(offset), x.shape[1])
    pad = x.new_zeros(x.shape[0], steps, *x.shape[2:])
    if offset > 0:
        return torch.cat([x[:, steps:], pad], dim=1)
    return torch.cat([pad, x[:, : x.shape[1] - steps]], dim=1)


def mix_time(x: Tensor, num_frames: int, window: int) -> Tensor:
    """Keys or values (B*T, heads, L, d) -> the same with channel blocks taken from neighbouring frames."""
    if window == 0:
        return x
    d = x.shape[-1]
    block = d // (2 * window + 1)
    if block == 0:
        raise ValueError(f"head width {d} is too small for a temporal window of {window}")
    x = x.view(x.shape[0] // num_frames, num_frames, *x.shape[1:])
    past = [shift_frames(x[..., (window + o) * block : (window + o + 1) * block], o) for o in range(-window, 0)]
    future = [
        shift_frames(x[..., d - (window - o + 1) * block : d - (window - o) * block], o) for o in range(1, window + 1)
    ]
    present = x[..., window * block : d - window * block]  # the middle channels (and any remainder)
    return torch.cat([*past, present, *future], dim=-1).flatten(0, 1)


class SpaceTimeMixingBlock(WrappedBlock):
    """A backbone block whose attention takes keys and values from a local temporal window."""

    def __init__(self, block: FrameBlock, window: int, time_embedding: TemporalEmbedding | None = None):
        super().__init__(block)
        self.window = window
        self.time_embedding = time_embedding  # the first block adds X-ViT's temporal embedding

    def attend(self, q: Tensor, k: Tensor, v: Tensor, num_frames: int) -> Tensor:
        k, v = mix_time(k, num_frames, self.window), mix_time(v, num_frames, self.window)
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        if self.time_embedding is not None:
            x = self.time_embedding(x, num_frames)
        return super().forward(x, num_frames)


class TemporalAggregation(nn.Module):
    """A learned token attends to the frames' [CLS] tokens through one pre-norm transformer layer."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        init_vit_linear(self.mlp)

    def no_weight_decay(self) -> set[str]:
        return {"token"}

    def forward(self, features: Features) -> Tensor:
        cls = features.tokens[:, :, 0]  # (B, T, D)
        x = torch.cat([self.token.to(cls.dtype).expand(cls.shape[0], -1, -1), cls], dim=1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return features.final_norm(x[:, 0])


@register_method("full_ft_ts", config=FullFTTSConfig, group="Full fine-tuning", architecture="SA+TS", models_time=True)
def build(backbone: VideoBackbone, context: RunContext, cfg: FullFTTSConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    backbone.requires_grad_(True)
    for i, block in enumerate(backbone.blocks):
        embedding = TemporalEmbedding(backbone.width, cfg.num_frames) if i == 0 else None
        backbone.blocks[i] = SpaceTimeMixingBlock(block, cfg.window, embedding)
    pool = TemporalAggregation(backbone.width, backbone.num_heads)
    return VideoClassifier(backbone, context, pool=pool)
