"""CLIP vision towers built by open_clip (ViT-B/16, ViT-L/14, and the small `tiny` of the same shape).

Features are taken before CLIP's projection, as the released ST-Adapter code does: the projection is
dropped and ``final_norm`` is ``ln_post``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BackboneInfo, FrameBlock, VideoBackbone, merge_heads, split_heads

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipBlock(FrameBlock):
    """open_clip's ``ResidualAttentionBlock``, with its attention run through SDPA.

    The block's own ``nn.MultiheadAttention`` keeps its parameters (so checkpoints load unchanged);
    only the arithmetic is done here, on the same weights.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.num_heads = block.attn.num_heads

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.ln_1(x)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.block.attn
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def project_out(self, attended: Tensor) -> Tensor:
        return self.block.ls_1(self.block.attn.out_proj(merge_heads(attended)))

    def mlp(self, x: Tensor) -> Tensor:
        return self.block.ls_2(self.block.mlp(self.block.ln_2(x)))

    def attention_weights(self) -> dict[str, Tensor | None]:
        b = self.block
        return {"norm_weight": b.ln_1.weight, "norm_bias": b.ln_1.bias, "qkv_weight": b.attn.in_proj_weight,
                "qkv_bias": b.attn.in_proj_bias, "proj_weight": b.attn.out_proj.weight, "proj_bias": b.attn.out_proj.bias}


class ClipBackbone(VideoBackbone):
    """Wraps an open_clip ``VisionTransformer``; takes its modules, leaves the projection behind."""

    def __init__(self, visual: nn.Module, info: BackboneInfo, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = nn.ModuleList(ClipBlock(b) for b in visual.transformer.resblocks)
        self.final_norm = visual.ln_post
        self.width = self.class_embedding.shape[0]
        self.num_heads = self.blocks[0].num_heads
        self.patch_size = self.conv1.kernel_size[0]
        self.input_size = info.input_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.info = info

    def embed(self, frames: Tensor) -> Tensor:
        x = self.conv1(frames).flatten(2).transpose(1, 2)  # (N, patches, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)
