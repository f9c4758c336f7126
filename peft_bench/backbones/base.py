"""The one interface every image backbone presents to the methods.

A backbone is an image ViT applied frame by frame to clips of shape (B, T, C, H, W). Methods never see
which library built it: they see

* ``embed(frames, num_frames)``: patch embedding, [CLS] token, position embedding, then (through
  ``before_pre_norm``, a method's hook, None by default) the pre-norm -> (B*T, L, D);
* ``blocks``: a ``ModuleList`` of :class:`FrameBlock`, each called as ``block(x, num_frames)``;
* ``final_norm``: the norm applied to pooled features (CLIP's ``ln_post``, timm's ``norm``);
* ``forward_intermediates(video, indices, qk=...)``: the final tokens plus chosen blocks' outputs
  (and their attention queries and keys), as one :class:`Features`;
* ``width``, ``num_heads``, ``num_tokens``, ``input_size``, ``mean``, ``std``, ``no_weight_decay()``.

A method wraps or replaces entries of ``blocks``, adds tokens, or adds layers after the backbone.
Blocks receive ``num_frames`` so that a wrapper can fold (B*T, L, D) back into (B, T, L, D) for
temporal modelling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from peft_bench.errors import UserError


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, D) -> (N, heads, L, D / heads)."""
    n, length, dim = x.shape
    return x.view(n, length, num_heads, dim // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(N, heads, L, d) -> (N, L, heads * d)."""
    n, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


class QKTap(nn.Module):
    """The point a block's attention queries and keys pass through, unchanged. It computes nothing;
    :meth:`VideoBackbone.forward_intermediates` puts a forward hook on it to read them (EVL's decoder
    reads the last blocks' q and k)."""

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return q, k


class FrameBlock(nn.Module, ABC):
    """A pre-norm transformer block, ``x + attention(x)`` then ``x + mlp(x)``, as named stages:

    ``norm1 -> project_qkv -> attend -> project_out -> scale_attention`` (+ residual), then
    ``norm2 -> feed_forward -> scale_mlp`` (+ residual).

    Subclasses adapt one library's block by providing the stages; the block's linear layers are
    ``nn.Linear`` modules called as modules and named alike on every backbone (:meth:`linear_layers`:
    ``qkv``, ``proj``, ``fc1``, ``fc2``), so that tools which wrap ``nn.Linear`` (Hugging Face peft's
    LoRA) and methods that fold weights into them (merging) work on any backbone. ``attend`` runs
    ``scaled_dot_product_attention``, whatever library built the weights, so that every backbone takes
    the fast kernels and the FLOP counter sees one op; a method changes how tokens attend by overriding it.

    A subclass must implement the abstract stages (``norm1``, ``project_qkv``, ``project_out``, ``norm2``,
    ``feed_forward``) and ``linear_layers``/``attention_weights``, and set ``num_heads``.
    """

    num_heads: int

    # -- the stages a backbone provides ------------------------------------------------------------

    @abstractmethod
    def norm1(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @abstractmethod
    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised tokens (N, L, D) -> q, k, v each (N, heads, L, d); q and k pass ``qk_tap``."""
        raise NotImplementedError

    @abstractmethod
    def project_out(self, attended: Tensor) -> Tensor:
        """Attended values (N, heads, L, d) -> the output projection's result (N, L, D), before layer scale."""
        raise NotImplementedError

    def scale_attention(self, x: Tensor) -> Tensor:
        """Layer scale and drop path of the attention branch (identity in CLIP and the paper's ViTs)."""
        return x

    @abstractmethod
    def norm2(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @abstractmethod
    def feed_forward(self, x: Tensor) -> Tensor:
        """Normalised tokens -> the MLP's output (fc1, activation, fc2), before layer scale."""
        raise NotImplementedError

    def scale_mlp(self, x: Tensor) -> Tensor:
        return x

    @abstractmethod
    def linear_layers(self) -> dict[str, nn.Linear]:
        """The block's own linear layers: ``qkv`` (fused, q then k then v), ``proj``, ``fc1``, ``fc2``."""
        raise NotImplementedError

    @abstractmethod
    def attention_weights(self) -> dict[str, Tensor | None]:
        """The attention branch's weights, library-neutral: ``norm_weight``, ``norm_bias``, ``qkv_weight``
        (3D x D, q then k then v), ``qkv_bias``, ``proj_weight``, ``proj_bias``. For layers that start
        from them (TimeSformer initialises its temporal attention from the spatial one)."""
        raise NotImplementedError

    # -- composed from the stages --------------------------------------------------------------------

    def attend(self, q: Tensor, k: Tensor, v: Tensor, num_frames: int) -> Tensor:
        """q, k, v (N, heads, L, d) -> attended values (N, heads, L, d). Frames attend on their own here;
        a wrapper that lets them see each other (X-ViT's space-time mixing) overrides this."""
        return F.scaled_dot_product_attention(q, k, v)

    def attention(self, x: Tensor, num_frames: int) -> Tensor:
        """The whole attention branch, without the residual add."""
        q, k, v = self.project_qkv(self.norm1(x))
        return self.scale_attention(self.project_out(self.attend(q, k, v, num_frames)))

    def mlp(self, x: Tensor, num_frames: int) -> Tensor:
        """The whole MLP branch (norm, MLP, layer scale), without the residual add."""
        return self.scale_mlp(self.feed_forward(self.norm2(x)))

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        x = x + self.attention(x, num_frames)
        return x + self.mlp(x, num_frames)

    def base_block(self) -> FrameBlock:
        """The backbone's own block under any wrappers (``WrappedBlock.inner`` chains end here)."""
        return self


def rgb(values: Sequence[float]) -> tuple[float, float, float]:
    """A backbone's per-channel mean or std as an (R, G, B) triple."""
    red, green, blue = values
    return red, green, blue


def linear_over(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    """An ``nn.Linear`` holding these very parameters (no copy): the weights stay where they were loaded."""
    out_features, in_features = weight.shape
    with torch.device("meta"):  # nothing allocated: the parameters are replaced just below
        linear = nn.Linear(in_features, out_features, bias=bias is not None)
    linear.weight = weight
    if bias is not None:
        linear.bias = bias
    return linear


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


@dataclass
class Features:
    """What the part of a model after the backbone reads: the final tokens and what it asked for.

    ``tokens``: the last block's output (B, T, L, D), before ``final_norm``. ``intermediates``: block
    index -> that block's output (B, T, L, D). ``qk``: block index -> (q, k), each (B, T, heads, L, d),
    after the projection and before attention's scaling. ``video``: the input clip (B, T', C, H, W),
    when the head asked for it (a side network that reads frames itself). ``num_frames``: T.
    """

    tokens: Tensor
    final_norm: nn.Module
    intermediates: dict[int, Tensor] = field(default_factory=dict)
    qk: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    video: Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.tokens.shape[1]


def take_indices(indices: int | Sequence[int] | None, depth: int) -> list[int]:
    """Block indices as timm's ``forward_intermediates`` reads them: None = every block, an int n = the
    last n, a sequence = those blocks (negative values count from the end). Sorted, each once."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 <= indices <= depth:
            raise UserError(f"cannot take the last {indices} blocks of a {depth}-block backbone")
        return list(range(depth - indices, depth))
    resolved = set()
    for i in indices:
        if not -depth <= i < depth:
            raise UserError(f"block index {i} is outside a backbone of {depth} blocks")
        resolved.add(i % depth)
    return sorted(resolved)


class FrameBlocks(nn.ModuleList):
    """A backbone's blocks: an ``nn.ModuleList`` whose every entry is a :class:`FrameBlock` (a method's
    wrappers included), typed as such so that ``backbone.blocks[i]`` offers the block's stages. Nothing
    is checked at run time: ``ModuleList``'s own types say only ``Module``, hence the casts."""

    @overload
    def __getitem__(self, idx: slice) -> FrameBlocks: ...

    @overload
    def __getitem__(self, idx: int) -> FrameBlock: ...

    def __getitem__(self, idx: int | slice) -> FrameBlock | FrameBlocks:
        return cast("FrameBlock | FrameBlocks", super().__getitem__(idx))

    def __iter__(self) -> Iterator[FrameBlock]:
        return cast("Iterator[FrameBlock]", super().__iter__())


class VideoBackbone(nn.Module, ABC):
    """A frame-wise image ViT. Subclasses implement ``embed_patches`` and ``pre_norm`` and set ``blocks``,
    ``final_norm``, ``width``, ``num_heads``, ``patch_size``, ``input_size``, ``mean``, ``std`` and ``info``;
    they may override ``no_weight_decay()``."""

    blocks: FrameBlocks
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

    def __init__(self) -> None:
        super().__init__()
        # A method's module run as ``hook(tokens, num_frames)`` between the position embedding and the
        # pre-norm (where AIM and ZeroI2V add their temporal embedding); None: nothing runs there. Set
        # here, not as a class attribute, so that a module assigned later is found as a submodule.
        self.before_pre_norm: nn.Module | None = None

    @property
    def num_tokens(self) -> int:
        """[CLS] plus one token per patch at the native input size."""
        return 1 + (self.input_size // self.patch_size) ** 2

    @abstractmethod
    def embed_patches(self, frames: Tensor) -> Tensor:
        """(N, C, H, W) -> patch tokens with [CLS] and the position embedding (N, L, D), before the pre-norm."""
        raise NotImplementedError

    @abstractmethod
    def pre_norm(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, frames: Tensor, num_frames: int = 1) -> Tensor:
        """(N, C, H, W) -> tokens (N, L, D) ready for the first block (N = clips x ``num_frames``)."""
        x = self.embed_patches(frames)
        if self.before_pre_norm is not None:
            x = self.before_pre_norm(x, num_frames)
        return self.pre_norm(x)

    def no_weight_decay(self) -> set[str]:
        """Names (relative to the backbone) that never get weight decay when they train: the position
        embedding and class token, as timm's and open_clip's ViTs declare them."""
        return set()

    def run_block(self, index: int, x: Tensor, num_frames: int) -> Tensor:
        block = self.blocks[index]
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(block, x, num_frames, use_reentrant=False)
        return block(x, num_frames)

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, C, H, W) -> final tokens (B, T, L, D), before the final norm.

        L may exceed ``num_tokens`` in the middle of the network when a method adds tokens; blocks
        that add tokens remove them again before returning.
        """
        b, t = video.shape[:2]
        x = self.embed(video.flatten(0, 1), t)
        for i in range(len(self.blocks)):
            x = self.run_block(i, x, t)
        return x.view(b, t, *x.shape[1:])

    def forward_intermediates(
        self, video: Tensor, indices: int | Sequence[int] | None = None, qk: bool = False
    ) -> Features:
        """The final tokens and the outputs of the blocks in ``indices`` (timm's convention, see
        :func:`take_indices`), with each of those blocks' attention q and k when ``qk`` is set.

        q and k are read where the backbone's own block computes them (its ``qk_tap``); a block whose
        wrapper bypasses its attention projection has none to give, and that is an error.
        """
        b, t = video.shape[:2]
        wanted = take_indices(indices, len(self.blocks))
        recorded: dict[int, tuple[Tensor, Tensor]] = {}
        handles = [self._record_qk(i, recorded) for i in wanted] if qk else []
        try:
            x = self.embed(video.flatten(0, 1), t)
            intermediates = {}
            for i in range(len(self.blocks)):
                x = self.run_block(i, x, t)
                if i in wanted:
                    intermediates[i] = x.view(b, t, *x.shape[1:])
        finally:
            for handle in handles:
                handle.remove()
        if qk and set(recorded) != set(wanted):
            missing = sorted(set(wanted) - set(recorded))
            raise RuntimeError(f"blocks {missing} computed no attention q/k through their qk_tap")
        fold = {i: (q.view(b, t, *q.shape[1:]), k.view(b, t, *k.shape[1:])) for i, (q, k) in recorded.items()}
        return Features(x.view(b, t, *x.shape[1:]), self.final_norm, intermediates, fold)

    def _record_qk(self, index: int, into: dict[int, tuple[Tensor, Tensor]]) -> RemovableHandle:
        tap = getattr(self.blocks[index].base_block(), "qk_tap", None)
        if tap is None:
            raise RuntimeError(
                f"block {index} ({type(self.blocks[index]).__name__}) has no qk_tap to read q and k from"
            )

        def keep(module: nn.Module, inputs: tuple[Tensor, Tensor], outputs: tuple[Tensor, Tensor]) -> None:
            into[index] = outputs

        return tap.register_forward_hook(keep)
