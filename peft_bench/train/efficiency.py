"""Run-time options that change how much a step costs, not what it computes (SpeedConfig).

The frozen backbone needs no autograd when nothing inside it trains (``VideoClassifier.backbone_tokens``);
the helpers here apply the optional ones: frozen weights in bf16, activation checkpointing, torch.compile.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from torch import nn

from peft_bench.precision import hold_frozen_in

log = logging.getLogger(__name__)


def hold_frozen_in_bf16(model: nn.Module) -> int:
    """Cast every frozen parameter to bf16 in place (see precision.hold_frozen_in); returns the count cast."""
    return hold_frozen_in(model, torch.bfloat16)


def enable_activation_checkpointing(model: nn.Module) -> bool:
    """Turn on block-wise recomputation in the model's backbone; False when the model has none."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "checkpoint_blocks"):
        return False
    backbone.checkpoint_blocks = True
    return True


def apply_speed_options(model: nn.Module, speed, device: torch.device) -> tuple[nn.Module, list[str]]:
    """Apply ``speed`` (a SpeedConfig) to ``model`` in place; returns the module to run steps with and what
    was applied. With ``compile`` that module is a compiled wrapper sharing the model's parameters: state
    dicts, checkpoints and the FLOP counter keep using ``model`` itself and its names."""
    applied = []
    if speed.frozen_bf16:
        if device.type == "cuda":
            applied.append(f"{hold_frozen_in_bf16(model)} frozen tensors in bf16")
        else:  # CPU steps run in fp32: bf16 weights would only add casts
            log.warning("speed.frozen_bf16 applies on GPU only; frozen weights stay fp32 on %s", device)
    if speed.activation_checkpointing and enable_activation_checkpointing(model):
        applied.append("activation checkpointing")
    if speed.compile:
        applied.append("torch.compile")
        return cast(nn.Module, torch.compile(model)), applied  # torch.compile of a Module returns a Module
    return model, applied
