"""Vision Transformers built by timm (ImageNet-21K ViT-B/16 in the paper's benchmark)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import Tensor, nn

from peft_bench.backbones.base import BackboneInfo, FrameBlock, FrameBlocks, QKTap, VideoBackbone, merge_heads, rgb

IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer  # timm takes seconds to import: see the factory


class TimmAttention(Protocol):
    """timm's ``Attention`` as :class:`TimmBlock` reads it."""

    num_heads: int
    qkv: nn.Linear
    q_norm: nn.Module
    k_norm: nn.Module
    proj: nn.Linear


class _TimmMlp(Protocol):
    """timm's ``Mlp`` as :class:`TimmBlock` reads it."""

    fc1: nn.Linear
    fc2: nn.Linear

    def __call__(self, x: Tensor) -> Tensor: ...


class TimmBlockParts(Protocol):
    """timm's ``Block`` as :class:`TimmBlock` reads it. timm builds its attention and MLP from layer classes
    passed in as arguments, so its own types say only ``nn.Module`` for them."""

    norm1: nn.LayerNorm
    attn: TimmAttention
    ls1: nn.Module
    drop_path1: nn.Module
    norm2: nn.LayerNorm
    mlp: _TimmMlp
    ls2: nn.Module
    drop_path2: nn.Module


class TimmBlock(FrameBlock):
    """timm's ``Block``: ``norm1 -> attn -> ls1 -> drop_path1``, ``norm2 -> mlp -> ls2 -> drop_path2``.

    timm's ``Attention`` already holds ``qkv`` and ``proj`` as ``nn.Linear`` modules; they are called as
    modules here, so wrapping them (peft's LoRA) takes effect.
    """

    block: TimmBlockParts

    def __init__(self, block: nn.Module):
        super().__init__()
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError("peft-bench does not support timm attention with an output gate")
        self.block = cast(TimmBlockParts, block)
        self.num_heads = self.block.attn.num_heads
        self.qk_tap = QKTap()

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.norm1(x)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.block.attn
        n, length, dim = x.shape
        qkv = attn.qkv(x).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.qk_tap(attn.q_norm(q), attn.k_norm(k))
        return q, k, v

    def project_out(self, attended: Tensor) -> Tensor:
        attn = self.block.attn
        return attn.proj(getattr(attn, "norm", nn.Identity())(merge_heads(attended)))

    def scale_attention(self, x: Tensor) -> Tensor:
        return self.block.drop_path1(self.block.ls1(x))

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.norm2(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def scale_mlp(self, x: Tensor) -> Tensor:
        return self.block.drop_path2(self.block.ls2(x))

    def linear_layers(self) -> dict[str, nn.Linear]:
        b = self.block
        return {"qkv": b.attn.qkv, "proj": b.attn.proj, "fc1": b.mlp.fc1, "fc2": b.mlp.fc2}

    def attention_weights(self) -> dict[str, Tensor | None]:
        b = self.block
        return {
            "norm_weight": b.norm1.weight,
            "norm_bias": b.norm1.bias,
            "qkv_weight": b.attn.qkv.weight,
            "qkv_bias": b.attn.qkv.bias,
            "proj_weight": b.attn.proj.weight,
            "proj_bias": b.attn.proj.bias,
        }


class TimmViTBackbone(VideoBackbone):
    """Wraps a timm ``VisionTransformer`` with a class token (``global_pool='token'``)."""

    def __init__(
        self,
        vit: VisionTransformer,
        info: BackboneInfo,
        mean: Sequence[float] = IMAGENET_INCEPTION_MEAN,
        std: Sequence[float] = IMAGENET_INCEPTION_STD,
    ):
        super().__init__()
        cls_token, pos_embed = getattr(vit, "cls_token", None), getattr(vit, "pos_embed", None)
        if cls_token is None or pos_embed is None or getattr(vit, "no_embed_class", False):
            raise ValueError("peft-bench needs a timm ViT with a class token inside its position embedding")
        self.patch_embed: nn.Module = vit.patch_embed
        self.cls_token: nn.Parameter = cls_token
        self.pos_embed: nn.Parameter = pos_embed
        self.norm_pre = vit.norm_pre
        self.blocks = FrameBlocks(TimmBlock(b) for b in vit.blocks)
        self.final_norm = vit.norm
        self.width = vit.embed_dim
        self.num_heads = self.blocks[0].num_heads
        self.patch_size = vit.patch_embed.patch_size[0]
        self.input_size = info.input_size
        self.mean, self.std = rgb(mean), rgb(std)
        self.info = info

    def embed_patches(self, frames: Tensor) -> Tensor:
        x = self.patch_embed(frames)  # (N, patches, D)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def pre_norm(self, x: Tensor) -> Tensor:
        return self.norm_pre(x)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}  # timm's VisionTransformer.no_weight_decay (no dist/reg tokens here)
