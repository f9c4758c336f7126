"""Full fine-tuning with TimeSformer divided space-time attention (SA+TA) (Bertasius et al., ICML 2021).

Before each block's spatial attention, a temporal attention layer (norm, attention across the frames
at each spatial position, proj, zero-initialised ``temporal_fc``, residual) lets tokens see the same
place in the other frames; a learned temporal embedding is added to the input tokens. Everything
trains. Zero ``temporal_fc`` and a zero temporal embedding make the model start as the image model
(TimeSformer zeroes ``temporal_fc`` in all blocks but the first; we zero all of them).

As in TimeSformer, each temporal layer's norm, qkv and proj start as copies of its block's spatial
attention (``TemporalAttention.init_from_spatial``); only ``temporal_fc`` starts at zero.

Weight decay: none on the position embedding and class token (as timm's and open_clip's ViTs declare
them in ``no_weight_decay()``) nor on the temporal embedding (TimeSformer's model declares ``time_embed``).

Parameters, ViT-B/16 (D=768): backbone 85,799,424 + 12 temporal layers x 2,954,496 (5D^2 + 7D)
+ temporal embedding 8 x 768 = 6,144 + head 307,600 = 121,567,120 = 121.57M (paper: 121.57M).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.layers import resolve_layers
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, from_context, register_method
from peft_bench.method_api.temporal import add_divided_attention


@dataclass
class FullFTTAConfig:
    num_frames: int | None = from_context("num_frames", "length of the learned temporal embedding (None: the run's)")
    layers: tuple[int, ...] | None = None  # blocks that get temporal attention (None = all)


@register_method("full_ft_ta", config=FullFTTAConfig, group="Full fine-tuning", architecture="SA+TA", models_time=True)
def build(backbone: VideoBackbone, context: RunContext, cfg: FullFTTAConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    backbone.requires_grad_(True)
    add_divided_attention(backbone, resolve_layers(cfg.layers, len(backbone.blocks)), cfg.num_frames)
    return VideoClassifier(backbone, context)
