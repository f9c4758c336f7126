"""Partial fine-tuning (SA): only the last block of the frame-wise image ViT trains, with a new head.

Frames are encoded independently and their [CLS] tokens averaged, so nothing models time. The final
norm stays frozen (the row trains "the last block and the head").
Parameters, ViT-B/16: one block 7,087,872 + 400-class head 307,600 = 7,395,472 = 7.40M (paper: 7.40M).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, register_method


@dataclass
class PartialFTConfig:
    trainable_blocks: int = 1  # how many of the last blocks train

    def __post_init__(self):
        if self.trainable_blocks < 1:
            raise ValueError(f"trainable_blocks must be at least 1, got {self.trainable_blocks}")


def last_blocks(backbone: VideoBackbone, count: int) -> list[int]:
    depth = len(backbone.blocks)
    if count > depth:
        raise ValueError(f"cannot train the last {count} blocks of a {depth}-block backbone")
    return list(range(depth - count, depth))


@register_method(
    "partial_ft", config=PartialFTConfig, group="Partial fine-tuning", architecture="SA", models_time=False
)
def build(backbone: VideoBackbone, context: RunContext, cfg: PartialFTConfig) -> VideoClassifier:
    for i in last_blocks(backbone, cfg.trainable_blocks):
        backbone.blocks[i].requires_grad_(True)
    return VideoClassifier(backbone, context)
