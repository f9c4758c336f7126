"""Linear probe: a new linear head on the temporal mean of the frozen backbone's [CLS] features.

Nothing inside the backbone changes and nothing models time: frames are averaged before the head.
Parameters: the head alone, D * classes + classes (ViT-B/16, 400 classes: 307,600 = 0.31M).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, register_method


@dataclass
class LinearProbeConfig:
    """No options: the same head as every other row (its dropout is the run's, ``train.head_dropout``), so rows
    differ only in what the method adds."""


@register_method("linear_probe", config=LinearProbeConfig, group="Linear probe", architecture="SA", models_time=False)
def build(backbone: VideoBackbone, context: RunContext, cfg: LinearProbeConfig) -> VideoClassifier:
    return VideoClassifier(backbone, context)
