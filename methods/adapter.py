"""Adapter (SA): bottleneck adapters (Houlsby et al., ICML 2019) in the frozen frame-wise image ViT.

Each adapter is ``x + W_up(GELU(W_down x))`` on every token of every frame, on the residual stream
before a block's MLP (the same place and width as ST-Adapter's K400 configuration, so this row is
ST-Adapter without its temporal convolution). Frames never meet and the per-frame [CLS] tokens are
averaged: nothing models time. ``W_up`` starts at zero, so the model starts as the frozen backbone.

Parameters: per adapter D r + r + r D + D. ViT-B/16, width 384, 12 adapters: 12 x 590,976 = 7,091,712
+ head 307,600 = 7,399,312 = 7.40M. The paper prints 6.77M, 8.5% less: with 12 adapters its figure
implies width 350 (12 x 538,718 + 307,600 = 6,772,216 = 6.77M), and with 24 (two per block) a width
near 175 that matches no integer exactly; neither is a width in common use, and the table's ST-Adapter
figure (7.20M) does not match its released configuration (7.42M) either. ``width=350`` reproduces 6.77M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.layers import hook_blocks
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, register_method
from peft_bench.method_api.temporal import init_vit_linear

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class AdapterConfig:
    width: int = 384  # bottleneck channels r
    positions: tuple[str, ...] = ("mlp",)  # "attention" and/or "mlp": before which sub-block of each layer
    layers: tuple[int, ...] | None = None  # which blocks get adapters (None = all)
    activation: Literal["gelu", "relu"] = "gelu"

    def __post_init__(self):
        bad = set(self.positions) - {"attention", "mlp"}
        if bad or not self.positions:
            raise ValueError(f"positions must be drawn from 'attention' and 'mlp', got {self.positions}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")


class Adapter(nn.Module):
    def __init__(self, dim: int, width: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(width, dim)
        init_vit_linear(self)
        nn.init.zeros_(self.up.weight)  # the adapted model starts as the frozen one
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        return x + self.up(self.act(self.down(x)))  # token-wise: num_frames is not used


# The released width 384 on every backbone, `tiny` too: it is ST-Adapter's, and the two rows compare at one
# width (on tiny a D/2 = 48 bottleneck cost ST-Adapter 34 points of motion top-1; st_adapter.py).
@register_method("adapter", config=AdapterConfig, group="Adapter", architecture="SA", models_time=False)
def build(backbone: VideoBackbone, context: RunContext, cfg: AdapterConfig) -> VideoClassifier:
    def adapter() -> Adapter:
        return Adapter(backbone.width, cfg.width, cfg.activation)

    hook_blocks(backbone, cfg.layers, cfg.positions, adapter)
    return VideoClassifier(backbone, context)
