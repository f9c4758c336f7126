"""The one interface every image backbone presents to the methods.

A backbone is an image ViT applied frame by frame to clips of shape (B, T, C, H, W). Methods never see
which library built it: they see

* ``embed(frames)``: patch embedding, [CLS] token, position embedding and pre-norm -> (B*T, L, D);
* ``blocks``: a ``ModuleList`` of :class:`FrameBlock`, each called as ``block(x, num_frames)``;
* ``final_norm``: the norm applied to pooled features (CLIP's ``ln_post``, timm's ``norm``);
* ``width``, ``num_heads``, ``num_tokens``, ``input_size``, ``mean``, ``std``.

A method wraps or replaces entries of ``blocks``, adds tokens, or adds layers after the backbone.
Blocks receive ``num_frames`` so that a wrapper can fold (B*T, L, D) back into (B, T, L, D) for
temporal modelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, D) -> (N, heads, L, D / heads)."""
    n, length, dim = x.shape
    return x.view(n, length, num_heads, dim // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(N, heads, L, d) -> (N, L, heads * d)."""
    n, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


class FrameBlock(nn.Module):
    """A pre-norm transformer block: ``x + attention(x)``, then ``x + mlp(x)``.

    Subclasses adapt one library's block by providing ``norm1``, ``project_qkv``, ``project_out``
    and ``mlp``. Attention always runs through ``scaled_dot_product_attention``, whatever library
    built the weights, so that every backbone takes the fast kernels and the FLOP counter sees one op.
    """

    num_heads: int

    def norm1(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised tokens (N, L, D) -> q, k, v each (N, heads, L, d)."""
        raise NotImplementedError

    def project_out(self, attended: Tensor) -> Tensor:
        """Attended values (N, heads, L, d) -> the branch output (N, L, D), layer scale included."""
        raise NotImplementedError

    def mlp(self, x: Tensor) -> Tensor:
        """The whole MLP branch (norm, MLP, layer scale), without the residual add."""
        raise NotImplementedError

    def attention_weights(self) -> dict[str, Tensor | None]:
        """The attention branch's weights, library-neutral: ``norm_weight``, ``norm_bias``, ``qkv_weight``
        (3D x D, q then k then v), ``qkv_bias``, ``proj_weight``, ``proj_bias``. For layers that start
        from them (TimeSformer initialises its temporal attention from the spatial one)."""
        raise NotImplementedError

    def attention(self, x: Tensor) -> Tensor:
        """The whole attention branch, without the residual add."""
        q, k, v = self.project_qkv(self.norm1(x))
        return self.project_out(F.scaled_dot_product_attention(q, k, v))

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        x = x + self.attention(x)
        return x + self.mlp(x)


@dataclass(frozen=True)
class BackboneInfo:
    """What a run records about the backbone it used."""

    name: str
    pretrained: str  # a weights file, a cache entry, or "none" for random initialisation
    width: int
    depth: int
    num_heads: int
    patch_size: int
    input_size: int


class VideoBackbone(nn.Module):
    """A frame-wise image ViT. Subclasses fill in the embedding, ``blocks`` and ``final_norm``."""

    blocks: nn.ModuleList
    final_norm: nn.Module
    width: int
    num_heads: int
    patch_size: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    info: BackboneInfo
    # Recompute each block's activations during backward instead of keeping them (SpeedConfig).
    checkpoint_blocks: bool = False

    @property
    def num_tokens(self) -> int:
        """[CLS] plus one token per patch at the native input size."""
        return 1 + (self.input_size // self.patch_size) ** 2

    def embed(self, frames: Tensor) -> Tensor:
        """(N, C, H, W) -> tokens (N, L, D) ready for the first block."""
        raise NotImplementedError

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> final tokens (B, T, L, D), before the final norm.

        L may exceed ``num_tokens`` in the middle of the network when a method adds tokens; blocks
        that add tokens remove them again before returning.
        """
        b, t = video.shape[:2]
        x = self.embed(video.flatten(0, 1))
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, t, use_reentrant=False)
            else:
                x = block(x, t)
        return x.view(b, t, *x.shape[1:])
