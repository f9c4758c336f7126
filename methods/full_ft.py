"""Full fine-tuning (SA): every weight of the frame-wise image ViT trains, with a new linear head.

The cross-modality table's first row: the image model is applied to each frame, the per-frame [CLS]
tokens are averaged over time and classified. Nothing models time (frames are averaged).
Parameters: the whole backbone plus the head. ViT-B/16 (CLIP, without its text projection):
85,799,424 + 400-class head 307,600 = 86,107,024 = 86.11M (paper: 86.11M).
Weight decay: none on the position embedding and the class token, which the backbone declares in
``no_weight_decay()`` as timm's ViT (``pos_embed``, ``cls_token``) and open_clip's
(``positional_embedding``, ``class_embedding``) do; none on biases and norms.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, register_method


@dataclass
class FullFTConfig:
    """No options: the row trains everything, and the head (with its dropout) is the run's (``train.head_dropout``)."""


@register_method("full_ft", config=FullFTConfig, group="Full fine-tuning", architecture="SA", models_time=False)
def build(backbone: VideoBackbone, context: RunContext, cfg: FullFTConfig) -> VideoClassifier:
    backbone.requires_grad_(True)  # the runner hands us a frozen backbone; this row trains all of it
    return VideoClassifier(backbone, context)
