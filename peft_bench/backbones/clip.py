"""CLIP vision towers built by open_clip (ViT-B/16, ViT-L/14, and the small `tiny` of the same shape).

Features are taken before CLIP's projection, as the released ST-Adapter code does: the projection is
dropped and ``final_norm`` is ``ln_post``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from peft_bench.backbones.base import (
    BackboneInfo,
    FrameBlock,
    FrameBlocks,
    QKTap,
    VideoBackbone,
    linear_over,
    merge_heads,
    rgb,
    split_heads,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

if TYPE_CHECKING:
    # open_clip ships no type information: to the type checker these are Any, to a reader the classes taken.
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer


class ClipAttention(nn.Module):
    """CLIP's attention projections as two ``nn.Linear`` modules, ``qkv`` and ``proj`` (timm's names).

    open_clip keeps the fused q/k/v projection as bare ``in_proj_weight``/``in_proj_bias`` applied
    with ``F.linear`` (in ``nn.MultiheadAttention`` and in its own ``Attention``), so a tool that wraps
    ``nn.Linear`` modules (peft's LoRA) cannot reach it. Here ``qkv`` holds those very parameters and
    ``proj`` is the tower's ``out_proj`` module: the same weights, loaded from the same checkpoint keys
    before the swap, and the same ``aten::linear`` ops (same outputs, same FLOPs).
    """

    def __init__(self, attn: nn.MultiheadAttention):
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv = linear_over(attn.in_proj_weight, attn.in_proj_bias)
        self.proj: nn.Linear = attn.out_proj


class _ClipMlp(Protocol):
    """open_clip's MLP as :class:`ClipBlock` reads it (an ``nn.Sequential``: ``c_fc``, activation, ``c_proj``)."""

    c_fc: nn.Linear
    c_proj: nn.Linear

    def __call__(self, x: Tensor) -> Tensor: ...


class _ClipResidualBlock(Protocol):
    """open_clip's ``ResidualAttentionBlock`` as :class:`ClipBlock` holds it, its attention swapped."""

    ln_1: nn.LayerNorm
    attn: ClipAttention
    ls_1: nn.Module
    ln_2: nn.LayerNorm
    mlp: _ClipMlp
    ls_2: nn.Module


class ClipBlock(FrameBlock):
    """open_clip's ``ResidualAttentionBlock``, its attention swapped for :class:`ClipAttention` and run
    through SDPA. The block is taken over: open_clip's own forward of it no longer applies."""

    block: _ClipResidualBlock

    def __init__(self, block: ResidualAttentionBlock):
        super().__init__()
        block.attn = ClipAttention(block.attn)
        self.block = block
        self.num_heads = block.attn.num_heads
        self.qk_tap = QKTap()

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.ln_1(x)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (split_heads(t, self.num_heads) for t in self.block.attn.qkv(x).chunk(3, dim=-1))
        q, k = self.qk_tap(q, k)
        return q, k, v

    def project_out(self, attended: Tensor) -> Tensor:
        return self.block.attn.proj(merge_heads(attended))

    def scale_attention(self, x: Tensor) -> Tensor:
        return self.block.ls_1(x)

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.ln_2(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def scale_mlp(self, x: Tensor) -> Tensor:
        return self.block.ls_2(x)

    def linear_layers(self) -> dict[str, nn.Linear]:
        b = self.block
        return {"qkv": b.attn.qkv, "proj": b.attn.proj, "fc1": b.mlp.c_fc, "fc2": b.mlp.c_proj}

    def attention_weights(self) -> dict[str, Tensor | None]:
        b = self.block
        return {
            "norm_weight": b.ln_1.weight,
            "norm_bias": b.ln_1.bias,
            "qkv_weight": b.attn.qkv.weight,
            "qkv_bias": b.attn.qkv.bias,
            "proj_weight": b.attn.proj.weight,
            "proj_bias": b.attn.proj.bias,
        }


class ClipBackbone(VideoBackbone):
    """Wraps an open_clip ``VisionTransformer``; takes its modules, leaves the projection behind."""

    def __init__(
        self,
        visual: VisionTransformer,
        info: BackboneInfo,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        super().__init__()
        self.conv1: nn.Conv2d = visual.conv1
        self.class_embedding: nn.Parameter = visual.class_embedding
        self.positional_embedding: nn.Parameter = visual.positional_embedding
        self.ln_pre: nn.Module = visual.ln_pre
        self.blocks = FrameBlocks(ClipBlock(b) for b in visual.transformer.resblocks)
        self.final_norm = visual.ln_post
        self.width = self.class_embedding.shape[0]
        self.num_heads = self.blocks[0].num_heads
        self.patch_size = self.conv1.kernel_size[0]
        self.input_size = info.input_size
        self.mean, self.std = rgb(mean), rgb(std)
        self.info = info

    def embed_patches(self, frames: Tensor) -> Tensor:
        x = self.conv1(frames).flatten(2).transpose(1, 2)  # (N, patches, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    def pre_norm(self, x: Tensor) -> Tensor:
        return self.ln_pre(x)

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding", "class_embedding"}  # open_clip's VisionTransformer.no_weight_decay
