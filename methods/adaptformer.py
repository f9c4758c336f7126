"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck adapter in parallel with each block's
MLP of the frozen frame-wise image ViT; a later generic PEFT baseline (V-PETL Bench runs it on video).

The block computes ``x + mlp(norm2(x)) + s * up(ReLU(down(x)))``: the adapter reads the residual stream
that enters the MLP branch and its output is added beside the MLP's, scaled by s = 0.1 (the ``beside_mlp``
site of ``peft_bench.method_api.layers.HookedBlock``). As in the released video code (ShoufaChen/AdaptFormer at
its main branch, main_video.py: parallel, no adapter LayerNorm, "lora" init, scalar 0.1, bottleneck 64):
``down`` keeps PyTorch's default Kaiming-uniform weights, ``up`` and both biases start at zero, so the
model starts as the frozen backbone. The paper's equation puts a LayerNorm before the adapter; the
released video configuration has none. Frames never meet and the per-frame [CLS] tokens are averaged:
nothing models time.

Parameters, ViT-B/16 (D = 768), width 64, 12 adapters: D r + r + r D + D = 99,136 each, 1,189,632
+ head 307,600 = 1,497,232 = 1.50M. No authors' figure for CLIP ViT-B/16 to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.layers import hook_blocks
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, register_method


@dataclass
class AdaptFormerConfig:
    width: int = 64  # bottleneck channels
    scale: float = 0.1  # s: the adapter's output is scaled before it joins the MLP's
    layers: tuple[int, ...] | None = None  # which blocks get an adapter (None = all)

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")


class AdaptMLP(nn.Module):
    """``s * up(ReLU(down(x)))``: the parallel branch's contribution (no residual of its own)."""

    def __init__(self, dim: int, width: int, scale: float):
        super().__init__()
        self.down = nn.Linear(dim, width)  # PyTorch's default Kaiming-uniform weights, as the released "lora" init
        self.act = nn.ReLU()
        self.up = nn.Linear(width, dim)
        self.scale = scale
        for zeroed in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zeroed)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        return self.scale * self.up(self.act(self.down(x)))  # token-wise: num_frames is not used


@register_method("adaptformer", config=AdaptFormerConfig, group=LATER_METHODS, architecture="SA", models_time=False)
def build(backbone: VideoBackbone, context: RunContext, cfg: AdaptFormerConfig) -> VideoClassifier:
    hook_blocks(backbone, cfg.layers, "beside_mlp", lambda: AdaptMLP(backbone.width, cfg.width, cfg.scale))
    return VideoClassifier(backbone, context)
