"""BitFit (Ben Zaken et al., ACL 2022): only the bias terms of the frozen frame-wise image ViT train,
with the head; a later generic PEFT baseline (V-PETL Bench runs it on video).

Every bias of the backbone trains: the attention's q/k/v and output projections, both MLP layers and
every LayerNorm's bias (the pre-norm and the final norm's included). The weights keep their pre-trained
values, so the model starts as the frozen backbone. Frames are averaged before the head: nothing models
time. Biases are 1-D, so none of them decays.

Parameters, ViT-B/16 (D = 768): per block ln_1 D + qkv 3D + proj D + ln_2 D + fc1 4D + fc2 D = 11D
= 8,448; 12 x 8,448 = 101,376 + ln_pre D + ln_post D = 102,912 (CLIP's patch embedding has no bias)
+ head 307,600 = 410,512 = 0.41M. No authors' figure to compare with: BitFit was published for
language models.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, register_method


@dataclass
class BitFitConfig:
    """No options: every bias of the backbone trains, with the run's head."""


@register_method("bitfit", config=BitFitConfig, group=LATER_METHODS, architecture="SA", models_time=False)
def build(backbone: VideoBackbone, context: RunContext, cfg: BitFitConfig) -> VideoClassifier:
    for name, parameter in backbone.named_parameters():
        if name.rpartition(".")[2] == "bias":
            parameter.requires_grad_(True)
    return VideoClassifier(backbone, context)
