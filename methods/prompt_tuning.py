"""Prompt tuning (SA): VPT-deep (Jia et al., ECCV 2022) on the frozen frame-wise image ViT.

Every block gets its own learnable prompt tokens, inserted after the [CLS] token of every frame; the
block's outputs at the prompt positions are dropped and the next block inserts its own (the "deep"
variant). Prompts are shared by all frames and carry no frame position, and the per-frame [CLS] tokens
are averaged over time: nothing models time. Prompts start uniform in +-sqrt(6 / (3 p^2 + D)) for
patch size p, as VPT initialises them.

Parameters: depth x prompts x D + head. ViT-B/16 with VPT's common length of 100 prompts:
12 x 100 x 768 = 921,600 + head 307,600 = 1,229,200 = 1.23M. The paper prints 1.18M, 4.2% less:
(1.18M - 0.31M) / (12 x 768) = 94.6, i.e. its figure implies 95 prompts per block (12 x 95 x 768
+ 307,600 = 1,183,120 = 1.18M), a length outside VPT's usual grid {1, 5, 10, 50, 100, 200}; set
``num_prompts=95`` to reproduce that count.

Weight decay: none on the prompts. They are learned tokens, which this project never decays (timm's
rule for class and position tokens, ``no_weight_decay()``). VPT's own optimizer is different: it
decays them (KMnP/vpt at 7f3942e, src/solver/optimizer.py, exempts only biases and LayerNorms) and
sweeps the decay down to 0 per task, while this benchmark runs every row at ST-Adapter's fixed 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from peft_bench.backbones import FrameBlock, VideoBackbone
from peft_bench.method_api.layers import WrappedBlock, resolve_layers
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, register_method


@dataclass
class PromptTuningConfig:
    num_prompts: int = 100  # prompt tokens per block
    layers: tuple[int, ...] | None = None  # blocks that get prompts (None = all: VPT-deep; (0,): VPT-shallow)

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {self.num_prompts}")


class PromptedBlock(WrappedBlock):
    """A block that runs on [CLS], its own prompts and the patches, and returns [CLS] and the patches."""

    def __init__(self, block: FrameBlock, num_prompts: int, dim: int, init_range: float):
        super().__init__(block)
        self.prompts = nn.Parameter(torch.empty(num_prompts, dim).uniform_(-init_range, init_range))

    def no_weight_decay(self) -> set[str]:
        return {"prompts"}

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        prompts = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.inner(torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1), num_frames)
        # Drop the prompt outputs: the next block inserts its own (and the backbone's L is restored).
        return torch.cat([x[:, :1], x[:, 1 + self.prompts.shape[0] :]], dim=1)


@register_method(
    "prompt_tuning",
    config=PromptTuningConfig,
    group="Prompt tuning",
    architecture="SA",
    models_time=False,
    presets={"tiny": {"num_prompts": 8}},
)  # half of tiny's 16 patches, as 100 is of 196
def build(backbone: VideoBackbone, context: RunContext, cfg: PromptTuningConfig) -> VideoClassifier:
    init_range = math.sqrt(6.0 / (3 * backbone.patch_size**2 + backbone.width))
    for i in resolve_layers(cfg.layers, len(backbone.blocks)):
        backbone.blocks[i] = PromptedBlock(backbone.blocks[i], cfg.num_prompts, backbone.width, init_range)
    return VideoClassifier(backbone, context)
