"""Temporal layers that several methods share: one implementation each, used through the FrameBlock interface.

* :class:`Attention`: multi-head attention with its own ``qkv`` and ``proj`` (self- or cross-attention),
  always through ``F.scaled_dot_product_attention``.
* :class:`TemporalEmbedding`: a learned embedding per frame position, added to every token of a frame
  (TimeSformer's and X-ViT's ``time_embed``). Resampled linearly when a clip has another frame count.
* :class:`TemporalAttention`: TimeSformer's temporal attention (Bertasius et al., ICML 2021, divided
  space-time attention): norm -> attention across the frames at each spatial position -> ``proj`` ->
  ``temporal_fc`` (zero-initialised) -> residual. Parameters: 2D + (3D^2 + 3D) + (D^2 + D) + (D^2 + D)
  = 5D^2 + 7D; ViT-B/16: 2,954,496 per block.
* :func:`add_divided_attention`: puts one before the spatial attention of the chosen blocks, initialised
  from that block's spatial attention as TimeSformer does, with the clip's temporal embedding in front of
  the first (full_ft_ta, partial_ft_ta, temporal_ft).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_bench.backbones.base import VideoBackbone, merge_heads, split_heads
from peft_bench.method_api.layers import add_hook


def init_vit_linear(module: nn.Module) -> None:
    """ViT's initialisation for new layers: truncated normal (std 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head attention: 4 D x D projections with biases (qkv fused, proj), 4D^2 + 4D parameters."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        init_vit_linear(self)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Self-attention over ``x`` (N, L, D); with ``context`` (N, S, D), ``x`` queries it instead."""
        if context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            # Cross-attention on the same weights: q from the queries, k and v from the context.
            dim = x.shape[-1]
            q = F.linear(x, self.qkv.weight[:dim], self.qkv.bias[:dim])
            k, v = F.linear(context, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


def resampling_matrix(size: int, source_size: int) -> Tensor:
    """(size, source_size) weights of linear interpolation, as ``F.interpolate(mode="linear",
    align_corners=False)``; a matrix so that resampling is a matmul the FLOP counter knows."""
    pos = ((torch.arange(size, dtype=torch.float64) + 0.5) * source_size / size - 0.5).clamp(0, source_size - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=source_size - 1)
    frac = pos - low
    weights = torch.zeros(size, source_size, dtype=torch.float64)
    rows = torch.arange(size)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.float()


class TemporalEmbedding(nn.Module):
    """A learned vector per frame position, ``num_frames`` x D, added to all tokens of that frame.

    It gets no weight decay: TimeSformer's model declares its ``time_embed`` in ``no_weight_decay()``,
    as timm's ViTs declare their position embedding."""

    def __init__(self, dim: int, num_frames: int, init_std: float = 0.0):
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        # Zero by default (as TimeSformer): a model that adds it starts as the image model.
        self.table = nn.Parameter(torch.zeros(num_frames, dim))
        if init_std > 0:
            nn.init.trunc_normal_(self.table, std=init_std)

    def no_weight_decay(self) -> set[str]:
        return {"table"}

    def for_frames(self, num_frames: int) -> Tensor:
        """(num_frames, D), linearly resampled when the clip is longer or shorter than the table."""
        if num_frames == self.table.shape[0]:
            return self.table
        return resampling_matrix(num_frames, self.table.shape[0]).to(self.table) @ self.table

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """Tokens (B*T, L, D) -> the same tokens plus their frame's embedding."""
        n, length, dim = x.shape
        table = self.for_frames(num_frames).to(x.dtype)
        return (x.view(n // num_frames, num_frames, length, dim) + table[None, :, None]).view(n, length, dim)


class TemporalAttention(nn.Module):
    """TimeSformer's temporal attention, a residual hook ``x + fc(attn(norm(x)))`` over the patch tokens.

    Each patch token attends to the tokens at the same spatial position in the other frames. The
    per-frame [CLS] tokens are left out, as TimeSformer leaves its [CLS] out of temporal attention.
    ``fc`` starts at zero, so the layer starts as the identity. ``time_embedding``, when given, is
    added to the tokens first (the first temporal layer of a network carries the clip's embedding).
    """

    def __init__(self, dim: int, num_heads: int, time_embedding: TemporalEmbedding | None = None):
        super().__init__()
        self.time_embedding = time_embedding
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def init_from_spatial(self, weights: dict[str, Tensor | None]) -> None:
        """Start norm, qkv and proj as copies of the block's spatial attention, as TimeSformer does:
        pre-trained attention already makes meaningful mixtures, so the zero ``fc`` gets a useful gradient
        from the first step (from small random weights, attention, ``fc`` and the zero time embedding
        wait on each other). ``fc`` stays zero: the layer still starts as the identity."""
        pairs = [
            (self.norm.weight, "norm_weight"),
            (self.norm.bias, "norm_bias"),
            (self.attn.qkv.weight, "qkv_weight"),
            (self.attn.qkv.bias, "qkv_bias"),
            (self.attn.proj.weight, "proj_weight"),
            (self.attn.proj.bias, "proj_bias"),
        ]
        for target, key in pairs:
            source = weights.get(key)
            if source is None:  # e.g. a ViT without qkv bias: keep ours at zero
                target.zero_()
            else:
                target.copy_(source)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        if self.time_embedding is not None:
            x = self.time_embedding(x, num_frames)
        n, length, dim = x.shape
        b, patches = n // num_frames, length - 1
        # (B*T, P, D) -> (B*P, T, D): one sequence of frames per spatial position.
        seq = x[:, 1:].reshape(b, num_frames, patches, dim).transpose(1, 2).reshape(b * patches, num_frames, dim)
        delta = self.fc(self.attn(self.norm(seq)))
        delta = delta.view(b, patches, num_frames, dim).transpose(1, 2).reshape(n, patches, dim)
        return torch.cat([x[:, :1], x[:, 1:] + delta], dim=1)


def add_divided_attention(backbone: VideoBackbone, layers: list[int], num_frames: int) -> None:
    """Put a temporal attention layer before the spatial attention of each block in ``layers``.

    The first of them also carries the learned temporal embedding (``num_frames`` x D), which TimeSformer
    adds to the input tokens: with temporal attention in every block that is before block 0, as in
    TimeSformer; with it only in the last block (partial fine-tuning), just before that block.
    """
    for rank, i in enumerate(sorted(layers)):
        embedding = TemporalEmbedding(backbone.width, num_frames) if rank == 0 else None
        temporal = TemporalAttention(backbone.width, backbone.num_heads, embedding)
        temporal.init_from_spatial(backbone.blocks[i].attention_weights())
        add_hook(backbone, i, "before_attention", temporal)
