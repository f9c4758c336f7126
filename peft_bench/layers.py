"""Building blocks that several methods share."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .backbones.base import FrameBlock


class WrappedBlock(FrameBlock):
    """A block around another block: its parts are the inner block's, so wrappers can be stacked and a
    wrapper overrides only what it changes (usually ``forward``)."""

    def __init__(self, block: FrameBlock):
        super().__init__()
        self.inner = block
        self.num_heads = block.num_heads

    def norm1(self, x: Tensor) -> Tensor:
        return self.inner.norm1(x)

    def project_qkv(self, x: Tensor):
        return self.inner.project_qkv(x)

    def project_out(self, attended: Tensor) -> Tensor:
        return self.inner.project_out(attended)

    def mlp(self, x: Tensor) -> Tensor:
        return self.inner.mlp(x)

    def attention(self, x: Tensor) -> Tensor:
        return self.inner.attention(x)

    def attention_weights(self):
        return self.inner.attention_weights()

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        return self.inner(x, num_frames)


class HookedBlock(WrappedBlock):
    """A backbone block with modules run on the residual stream before its attention and/or its MLP.

    Each hook is called as ``hook(x, num_frames)`` and returns the new residual stream, so it can be an
    adapter (``x + f(x)``), a temporal attention layer, or anything else that keeps the shape. This is
    where ST-Adapter, Adapter and TimeSformer-style temporal attention plug into any backbone.
    """

    def __init__(self, block: FrameBlock, before_attention: nn.Module | None = None, before_mlp: nn.Module | None = None):
        super().__init__(block)
        self.before_attention = before_attention
        self.before_mlp = before_mlp

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        if self.before_attention is not None:
            x = self.before_attention(x, num_frames)
        x = x + self.inner.attention(x)
        if self.before_mlp is not None:
            x = self.before_mlp(x, num_frames)
        return x + self.inner.mlp(x)


def hook_blocks(backbone, layers: tuple[int, ...] | None, positions: tuple[str, ...],
                make_hook: Callable[[], nn.Module]) -> None:
    """Give each chosen block a fresh ``make_hook()`` before its attention and/or MLP (``positions``)."""
    for i in resolve_layers(layers, len(backbone.blocks)):
        backbone.blocks[i] = HookedBlock(
            backbone.blocks[i],
            before_attention=make_hook() if "attention" in positions else None,
            before_mlp=make_hook() if "mlp" in positions else None,
        )


def resolve_layers(layers: tuple[int, ...] | None, depth: int) -> list[int]:
    """Block indices from a config (None = every block; negative indices count from the end)."""
    if layers is None:
        return list(range(depth))
    resolved = sorted({i % depth for i in layers if -depth <= i < depth})
    if len(resolved) != len(set(layers)):
        raise ValueError(f"layers {layers} do not fit a backbone of {depth} blocks")
    return resolved
