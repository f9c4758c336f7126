"""Temporal fine-tuning (SA+TA): TimeSformer temporal attention layers (Bertasius et al., ICML 2021)
are added before every block's spatial attention and trained with the head; every spatial layer of
the image model stays frozen.

It starts as the frozen image model (zero ``temporal_fc``, zero temporal embedding).
Weight decay: none on the temporal embedding (TimeSformer's model lists its ``time_embed`` in
``no_weight_decay()``); the temporal layers' weight matrices decay, their biases and norms do not.
Parameters, ViT-B/16: 12 temporal layers x 2,954,496 + temporal embedding 8 x 768 = 6,144
+ head 307,600 = 35,767,696 = 35.77M (paper: 35.8M).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.layers import resolve_layers
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, from_context, register_method
from peft_bench.method_api.temporal import add_divided_attention


@dataclass
class TemporalFTConfig:
    num_frames: int | None = from_context("num_frames", "length of the learned temporal embedding (None: the run's)")
    layers: tuple[int, ...] | None = None  # blocks that get temporal attention (None = all)


@register_method(
    "temporal_ft", config=TemporalFTConfig, group="Temporal fine-tuning", architecture="SA+TA", models_time=True
)
def build(backbone: VideoBackbone, context: RunContext, cfg: TemporalFTConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    add_divided_attention(backbone, resolve_layers(cfg.layers, len(backbone.blocks)), cfg.num_frames)
    return VideoClassifier(backbone, context)
