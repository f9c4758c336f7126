"""ZeroI2V (Li and Wang, ECCV 2024, "ZeroI2V: Zero-Cost Adaptation of Pre-trained Transformers from
Image to Video"): the frozen image ViT becomes a video model at no inference cost. Two parts:

* **Spatial-temporal dual-headed attention (STDHA).** A few heads of each block's frozen attention take
  their keys and values from a neighbouring frame instead of their own: head ``i`` of frame ``t`` attends
  to the tokens of frame ``t + head_offsets[i]``, the other heads stay spatial. No weight is added and
  no FLOP: the block's own q/k/v, reindexed (the ``attend`` stage of a :class:`WrappedBlock`).
* **Linear adapters, merged after training.** Four activation-free bottleneck adapters per block,
  ``x + s * up(dropout(down(x)))``: after ``ln_1`` (into the q/k/v projection), after the attention's
  output projection, after ``ln_2`` (into ``fc1``) and after ``fc2`` (the sites ``after_norm1``,
  ``after_attention``, ``after_norm2``, ``after_mlp`` of ``peft_bench.method_api.layers``). Each is one affine map,
  so the registry's ``merge`` (``peft_bench.method_api.layers.merge_modules``) folds it into the linear layer beside
  it (``LinearAdapter.merge_into``): the merged model has the image model's parameters and GFLOPs exactly.

What trains: the adapters, the final norm (``ln_post``, as in the released code; it stays in the merged
model with new values, no new parameter) and the head. Weight decay: none on 1-D tensors (the runner's
rule; the released optimizer exempts the norms, the adapters' weights decay there too).

Facts from the released code, leexinhao/ZeroI2V at ce04d8b (``mmaction/models/backbones/vit_zero_clip.py``,
``mmaction/models/common/stdha.py``, ``tools/weight_reparam.py``, the configs in
``configs/recognition/vit_zero_clip/``; the K400 checkpoint named in ``weight_reparam.py`` is
``vit_zero_base_clip_k400_8x16x1_div12``):

* STDHA shifts k and v by channel groups of ``D / shift_div`` after the in-projection. K400:
  ``shift_div=12`` on ViT-B/16 moves 64 channels = head 0 to the previous frame and head 1 to the next
  (``out[t] = k[t-1]``, ``out[t] = k[t+1]``), hence ``head_offsets=(-1, 1)``. SSv2 (``sthv2_u16``) adds
  ``long_shift_div=12, long_shift_right=True``: heads 2 and 3 read frames ``t-2`` and ``t+2``
  (preset ``ssv2``; on ``tiny``'s 4 heads that is every head, and the embedded default's
  synthetic-motion uses it, as it uses every method's SSv2 preset). A head whose source frame lies
  outside the clip keeps its own frame (the released shift copies the unshifted tensor first). Offsets
  are whole heads here; the released shift is by channels, the same whenever ``D / shift_div`` is the
  head width.
* Adapters (``num_tadapter=2``: T_Adapter_in, S_Adapter, MLP_Adapter, MLP_Adapter_out), width
  ``0.25 D`` = 192, ``adapter_scale`` 0.5 (K400) / 1 (SSv2), dropout 0.1 (K400) / 0 (SSv2); ``down``
  truncated-normal std 0.02, zero biases, ``up`` zero (``LinearAdapter``'s own init).
* Pooling: ``ln_post`` on each frame's [CLS], then the I3D head's average over frames
  (``peft_bench.method_api.model.NormedClsMean``; this project's default averages first and normalises after).

Difference from the released code: its backbone also trains a temporal embedding (8 x 768 = 6,144
parameters, zero-initialised, added before ``ln_pre``), which no merge can remove (its eval model
``vit_zero_clip_eval.py`` keeps it; the README rounds its 0.006M to "0 New Param (M)"). It is off by
default here so that the merged model is the image model to the parameter, as the paper's title
claims; ``temporal_embedding=True`` restores it (it then survives the merge, 6,144 parameters).

Parameters, CLIP ViT-B/16 (D = 768), K400 (400 classes): one adapter D 192 + 192 + 192 D + D =
295,872; 12 blocks x 4 = 14,201,856 + ln_post 1,536 + head 307,600 = 14,510,992 = 14.51M trained
(with the released temporal embedding: 14,517,136). The authors give no trained count (README: "New
Param (M) 0", i.e. after merging; ``followups_clip_vitb16.csv``), so there is nothing to compare
within 2%. After merging: the image model plus the head, 0 new parameters.

GFLOPs, CLIP ViT-B/16, 8 frames at 224 px (``peft-bench account --methods zeroi2v,linear_probe --backbone
clip_vitb16 --dataset k400``: fvcore plus this project's handlers, 1 multiply-add = 1 FLOP): before merging
162.97 per view, 488.90 at 8x1x3 (the adapters: 12 x 4 x 2 x 768 x 192 multiply-adds per token); merged,
the frozen image model's 140.66 per view, 421.97 at 8x1x3, against the authors' 422 (the STDHA
reindexing is free; the released pooling's seven extra [CLS] norms add 27 kFLOPs per view).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from peft_bench.backbones import FrameBlock, VideoBackbone
from peft_bench.method_api.layers import (
    LinearAdapter,
    WrappedBlock,
    hook_blocks,
    merge_modules,
    resolve_layers,
)
from peft_bench.method_api.model import NormedClsMean, VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, from_context, register_method
from peft_bench.method_api.temporal import TemporalEmbedding

ADAPTER_SITES = ("after_norm1", "after_attention", "after_norm2", "after_mlp")  # each beside a linear layer


@dataclass
class ZeroI2VConfig:
    # Head i of frame t attends to frame t + head_offsets[i]; heads past the tuple stay spatial.
    head_offsets: tuple[int, ...] = (-1, 1)
    ratio: float = 0.25  # adapter bottleneck width as a fraction of the backbone's width (released mlp_ratio)
    scale: float = 0.5  # s in x + s * up(down(x)) (released adapter_scale, K400)
    dropout: float = 0.1  # between down and up, in training (released dropout_rate, K400)
    sites: tuple[str, ...] = ADAPTER_SITES  # where adapters go; all four = the released num_tadapter=2
    layers: tuple[int, ...] | None = None  # blocks that get STDHA and adapters (None = all)
    temporal_embedding: bool = False  # the released code's learned per-frame embedding (survives merging)
    num_frames: int | None = from_context("num_frames", "length of the temporal embedding (None: the run's)")

    def __post_init__(self):
        bad = set(self.sites) - set(ADAPTER_SITES)
        if bad:
            raise ValueError(
                f"adapter sites must be drawn from {', '.join(ADAPTER_SITES)} (the ones that "
                f"merge into a linear layer), got {self.sites}"
            )
        if self.ratio <= 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


def source_frames(num_frames: int, offsets: tuple[int, ...], num_heads: int) -> Tensor:
    """(T, heads) index: the frame whose keys and values head h of frame t reads; a head with no offset,
    or whose source would fall outside the clip, reads its own frame (the released shift's edge rule)."""
    frames = torch.arange(num_frames)[:, None].expand(num_frames, num_heads)
    shift = torch.zeros(num_heads, dtype=torch.long)
    shift[: len(offsets)] = torch.tensor(offsets, dtype=torch.long)
    source = frames + shift
    return torch.where((source >= 0) & (source < num_frames), source, frames)


class DualHeadAttentionBlock(WrappedBlock):
    """STDHA: the block's own attention, with some heads' keys and values taken from other frames."""

    def __init__(self, block: FrameBlock, head_offsets: tuple[int, ...]):
        super().__init__(block)
        if len(head_offsets) > block.num_heads:
            raise ValueError(f"{len(head_offsets)} head offsets for a block of {block.num_heads} heads")
        self.head_offsets = tuple(head_offsets)

    def shift(self, x: Tensor, num_frames: int) -> Tensor:
        """(B*T, heads, L, d) -> the same with each head's frame replaced by its source frame."""
        n, heads, length, dim = x.shape
        source = source_frames(num_frames, self.head_offsets, heads).to(x.device)
        # Flat (frame, head) index into (B, T*heads, ...): one index_select, free in the FLOP count.
        flat = (source * heads + torch.arange(heads, device=x.device)).reshape(-1)
        grouped = x.reshape(n // num_frames, num_frames * heads, length, dim)
        return grouped.index_select(1, flat).reshape(n, heads, length, dim)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, num_frames: int) -> Tensor:
        return self.inner.attend(q, self.shift(k, num_frames), self.shift(v, num_frames), num_frames)


@register_method(
    "zeroi2v",
    config=ZeroI2VConfig,
    group=LATER_METHODS,
    architecture="SA",
    models_time=True,
    presets={"ssv2": {"head_offsets": (-1, 1, -2, 2), "scale": 1.0, "dropout": 0.0}},
    merge=merge_modules,  # the adapters fold into qkv, proj, fc1, fc2; STDHA stays, it has no weights
)
def build(backbone: VideoBackbone, context: RunContext, cfg: ZeroI2VConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    layers = resolve_layers(cfg.layers, len(backbone.blocks))
    for i in layers:  # STDHA innermost: the adapters' HookedBlock wraps it and calls its attend
        backbone.blocks[i] = DualHeadAttentionBlock(backbone.blocks[i], cfg.head_offsets)
    width = max(1, round(backbone.width * cfg.ratio))
    hook_blocks(
        backbone, tuple(layers), cfg.sites, lambda: LinearAdapter(backbone.width, width, cfg.scale, cfg.dropout)
    )
    if cfg.temporal_embedding:
        if backbone.before_pre_norm is not None:
            raise ValueError("the backbone already has a module before its pre-norm")
        backbone.before_pre_norm = TemporalEmbedding(backbone.width, cfg.num_frames)
    backbone.final_norm.requires_grad_(True)  # ln_post trains in the released code
    return VideoClassifier(backbone, context, pool=NormedClsMean())
