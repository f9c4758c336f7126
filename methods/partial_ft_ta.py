"""Partial fine-tuning with TimeSformer temporal attention (SA+TA): the last block, given a temporal
attention layer before its spatial attention (divided space-time attention, Bertasius et al., ICML
2021), trains with the head; the blocks before it stay frozen and frame-wise.

The learned temporal embedding that TimeSformer adds to its input tokens is added just before that
temporal layer, so no gradient has to flow through the frozen blocks. Zero ``temporal_fc`` and a zero
embedding make the model start as the frozen image model. Weight decay: none on the temporal embedding
(TimeSformer's model declares ``time_embed`` in ``no_weight_decay()``).

Parameters, ViT-B/16: last block 7,087,872 + temporal layer 2,954,496 + temporal embedding 6,144
+ head 307,600 = 10,356,112 = 10.36M (paper: 10.36M).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, from_context, register_method
from peft_bench.method_api.temporal import add_divided_attention

from .partial_ft import last_blocks


@dataclass
class PartialFTTAConfig:
    trainable_blocks: int = 1  # how many of the last blocks train (each gets a temporal layer)
    num_frames: int | None = from_context("num_frames", "length of the learned temporal embedding (None: the run's)")

    def __post_init__(self):
        if self.trainable_blocks < 1:
            raise ValueError(f"trainable_blocks must be at least 1, got {self.trainable_blocks}")


@register_method(
    "partial_ft_ta", config=PartialFTTAConfig, group="Partial fine-tuning", architecture="SA+TA", models_time=True
)
def build(backbone: VideoBackbone, context: RunContext, cfg: PartialFTTAConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    layers = last_blocks(backbone, cfg.trainable_blocks)
    for i in layers:
        backbone.blocks[i].requires_grad_(True)  # before wrapping: only the original block unfreezes
    add_divided_attention(backbone, layers, cfg.num_frames)
    return VideoClassifier(backbone, context)
