"""Building blocks that several methods share: wrapping a backbone block, hooking modules into it at
named sites, and folding activation-free additions back into the block's weights.

Sites of a :class:`HookedBlock` (each hook is called as ``hook(x, num_frames)`` and keeps the shape):

=================== ==========================================================================
``before_attention`` the residual stream, before the attention branch (ST-Adapter, Adapter, TimeSformer)
``after_norm1``      the attention branch's normalised input, before the q/k/v projection
``after_attention``  the attention branch after its output projection, before layer scale
``before_mlp``       the residual stream, before the MLP branch
``after_norm2``      the MLP branch's normalised input, before fc1
``after_mlp``        the MLP branch after fc2, before layer scale
``beside_attention`` parallel: its output is added to the attention branch (it reads the stream)
``beside_mlp``       parallel: its output is added to the MLP branch (AdaptFormer)
=================== ==========================================================================

A hook at ``after_norm1``, ``after_attention``, ``after_norm2`` or ``after_mlp`` sits between a norm
or a linear layer and the next linear layer, so an activation-free hook (:class:`LinearAdapter`) can be
folded into that layer's weights after training (``merge_into``); :meth:`HookedBlock.merged` does it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from peft_bench.backbones.base import FrameBlock, VideoBackbone, take_indices

SERIAL_SITES = ("before_attention", "after_norm1", "after_attention", "before_mlp", "after_norm2", "after_mlp")
PARALLEL_SITES = ("beside_attention", "beside_mlp")
SITES = SERIAL_SITES + PARALLEL_SITES
# The names method configs have used since the first adapters: "attention" / "mlp" = before that branch.
SITE_ALIASES = {"attention": "before_attention", "mlp": "before_mlp"}
Side = Literal["input", "output"]  # which side of a linear layer a hook sits on
# Where a hook at a site folds into: (the block's linear layer, which side of it the hook sits on).
MERGE_TARGETS: dict[str, tuple[str, Side]] = {
    "after_norm1": ("qkv", "input"),
    "after_attention": ("proj", "output"),
    "after_norm2": ("fc1", "input"),
    "after_mlp": ("fc2", "output"),
}

ModelT = TypeVar("ModelT", bound=nn.Module)


@runtime_checkable
class FoldsIntoLinear(Protocol):
    """A hook that can be folded into the linear layer beside it after training (:class:`LinearAdapter`)."""

    def merge_into(self, linear: nn.Linear, side: Side) -> None: ...


@runtime_checkable
class Mergeable(Protocol):
    """A module that :func:`merge_modules` replaces by ``merged()``, what it is once its additions are
    folded into the weights (:meth:`HookedBlock.merged`)."""

    def merged(self) -> nn.Module: ...


class WrappedBlock(FrameBlock):
    """A block around another block: its stages are the inner block's, so a wrapper overrides only what
    it changes (a stage such as ``attend``, or ``forward``). The branches (``attention``, ``mlp``) and
    ``forward`` are recomposed from the stages, so an overridden stage takes effect in them."""

    def __init__(self, block: FrameBlock):
        super().__init__()
        self.inner = block
        self.num_heads = block.num_heads

    def norm1(self, x: Tensor) -> Tensor:
        return self.inner.norm1(x)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.inner.project_qkv(x)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, num_frames: int) -> Tensor:
        return self.inner.attend(q, k, v, num_frames)

    def project_out(self, attended: Tensor) -> Tensor:
        return self.inner.project_out(attended)

    def scale_attention(self, x: Tensor) -> Tensor:
        return self.inner.scale_attention(x)

    def norm2(self, x: Tensor) -> Tensor:
        return self.inner.norm2(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.inner.feed_forward(x)

    def scale_mlp(self, x: Tensor) -> Tensor:
        return self.inner.scale_mlp(x)

    def linear_layers(self) -> dict[str, nn.Linear]:
        return self.inner.linear_layers()

    def attention_weights(self) -> dict[str, Tensor | None]:
        return self.inner.attention_weights()

    def base_block(self) -> FrameBlock:
        return self.inner.base_block()


class HookedBlock(WrappedBlock):
    """A backbone block with modules hooked in at named sites (see the module docstring).

    Its hooks live in its branches, so a HookedBlock should be the outermost wrapper of a block:
    :func:`hook_blocks` adds hooks to a block's existing HookedBlock instead of wrapping it again.
    Each hook is a module called as ``hook(x, num_frames)``, returning a tensor of ``x``'s shape.
    """

    before_attention: nn.Module | None
    after_norm1: nn.Module | None
    after_attention: nn.Module | None
    before_mlp: nn.Module | None
    after_norm2: nn.Module | None
    after_mlp: nn.Module | None
    beside_attention: nn.Module | None
    beside_mlp: nn.Module | None

    def __init__(self, block: FrameBlock, **hooks: nn.Module | None):
        super().__init__(block)
        unknown = set(hooks) - set(SITES)
        if unknown:
            raise ValueError(f"unknown hook sites {sorted(unknown)}; sites: {', '.join(SITES)}")
        for site in SITES:
            setattr(self, site, hooks.get(site))

    def add_hook(self, site: str, hook: nn.Module) -> None:
        site = SITE_ALIASES.get(site, site)
        if site not in SITES:
            raise ValueError(f"unknown hook site '{site}'; sites: {', '.join(SITES)}")
        if getattr(self, site) is not None:
            raise ValueError(f"this block already has a hook at '{site}'")
        setattr(self, site, hook)

    def hooks(self) -> dict[str, nn.Module]:
        return {site: getattr(self, site) for site in SITES if getattr(self, site) is not None}

    def _run(self, site: str, x: Tensor, num_frames: int) -> Tensor:
        hook = getattr(self, site)
        return x if hook is None else hook(x, num_frames)

    def attention(self, x: Tensor, num_frames: int) -> Tensor:
        h = self._run("after_norm1", self.norm1(x), num_frames)
        q, k, v = self.project_qkv(h)
        out = self._run("after_attention", self.project_out(self.attend(q, k, v, num_frames)), num_frames)
        out = self.scale_attention(out)
        return out if self.beside_attention is None else out + self.beside_attention(x, num_frames)

    def mlp(self, x: Tensor, num_frames: int) -> Tensor:
        out = self.feed_forward(self._run("after_norm2", self.norm2(x), num_frames))
        out = self.scale_mlp(self._run("after_mlp", out, num_frames))
        return out if self.beside_mlp is None else out + self.beside_mlp(x, num_frames)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        x = self._run("before_attention", x, num_frames)
        x = x + self.attention(x, num_frames)
        x = self._run("before_mlp", x, num_frames)
        return x + self.mlp(x, num_frames)

    def merged(self) -> FrameBlock:
        """Fold every hook at a mergeable site into the linear layer beside it and drop it; the inner
        block itself when no hook is left. Raises if a hook cannot be folded (it has no ``merge_into``)."""
        layers = self.linear_layers()
        for site, hook in self.hooks().items():
            if site not in MERGE_TARGETS or not isinstance(hook, FoldsIntoLinear):
                raise ValueError(f"the hook at '{site}' ({type(hook).__name__}) cannot be merged into the block")
            name, side = MERGE_TARGETS[site]
            hook.merge_into(layers[name], side)
            setattr(self, site, None)
        return self.inner


def hook_blocks(
    backbone: VideoBackbone,
    layers: tuple[int, ...] | None,
    positions: tuple[str, ...] | str,
    make_hook: Callable[[], nn.Module],
) -> None:
    """Give each chosen block a fresh ``make_hook()`` at each site in ``positions`` (see SITES; "attention"
    and "mlp" mean before those branches). A block already hooked gets the new hooks added."""
    positions = (positions,) if isinstance(positions, str) else positions
    for i in resolve_layers(layers, len(backbone.blocks)):
        for site in positions:
            add_hook(backbone, i, site, make_hook())


def add_hook(backbone: VideoBackbone, index: int, site: str, hook: nn.Module) -> None:
    """Put ``hook`` at ``site`` of block ``index``, wrapping the block in a HookedBlock unless it is one."""
    block = backbone.blocks[index]
    if not isinstance(block, HookedBlock):
        block = backbone.blocks[index] = HookedBlock(block)
    block.add_hook(site, hook)


def hook_sites(
    backbone: VideoBackbone, layers: tuple[int, ...] | None, makers: Mapping[str, Callable[[], nn.Module]]
) -> None:
    """:func:`hook_blocks` for several sites at once, each with its own kind of hook."""
    for site, make_hook in makers.items():
        hook_blocks(backbone, layers, site, make_hook)


def resolve_layers(layers: tuple[int, ...] | None, depth: int) -> list[int]:
    """Block indices from a config (None = every block; negative indices count from the end)."""
    if layers is None:
        return list(range(depth))
    try:
        resolved = take_indices(list(layers), depth)
    except ValueError:
        resolved = []
    if len(resolved) != len(layers):
        raise ValueError(f"layers {layers} do not fit a backbone of {depth} blocks")
    return resolved


def merge_modules(model: ModelT) -> ModelT:
    """Replace every submodule that offers ``merged()`` by what it returns (outermost first), so that
    the additions folded into the backbone's weights leave the architecture they came from."""
    for name, module in list(model.named_modules()):
        if name and isinstance(module, Mergeable):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            if getattr(parent, child) is module:  # not already replaced
                setattr(parent, child, module.merged())
    return model


class LinearAdapter(nn.Module):
    """An activation-free bottleneck adapter ``x + scale * up(dropout(down(x)))`` (ZeroI2V's linear
    adapter). Without an activation it is one affine map, so after training it folds into the linear
    layer beside it (:meth:`merge_into`) and leaves no parameter and no FLOP behind. ``up`` starts at
    zero: the adapted block starts as the frozen one."""

    def __init__(self, dim: int, width: int, scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(width, dim)
        self.scale = scale
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        return x + self.scale * self.up(self.dropout(self.down(x)))  # token-wise: num_frames is not used

    def affine(self) -> tuple[Tensor, Tensor]:
        """(M, c) with ``self(x) = M x + c`` in evaluation (dropout off)."""
        eye = torch.eye(self.up.out_features, dtype=self.up.weight.dtype, device=self.up.weight.device)
        matrix = eye + self.scale * self.up.weight @ self.down.weight
        return matrix, self.scale * (self.up.weight @ self.down.bias + self.up.bias)

    @torch.no_grad()
    def merge_into(self, linear: nn.Linear, side: Side) -> None:
        """Fold this adapter into ``linear``: on its input side ``linear(adapter(x))``, on its output
        side ``adapter(linear(x))``. The linear layer must have a bias (every ViT layer here does)."""
        if linear.bias is None:
            raise ValueError("cannot fold an adapter's offset into a linear layer without a bias")
        matrix, offset = self.affine()
        if side == "input":
            bias = linear.bias + linear.weight @ offset
            weight = linear.weight @ matrix
        else:
            bias = matrix @ linear.bias + offset
            weight = matrix @ linear.weight
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
