"""The numeric precision of a run's forward and backward passes (``train.precision``).

* ``auto``: bf16 autocast on GPU, fp32 on CPU (peft-bench's default).
* ``bf16``: bf16 autocast; weights stay fp32 (unless ``speed.frozen_bf16``).
* ``fp16``: the released ST-Adapter code's (linziyi96/st-adapter at b914b38): frozen weights held in fp16
  (``models_adapter.py``), fp16 autocast and a gradient scaler (``main.py``). On CPU this runs, but PyTorch's
  fp16 convolutions there are slow (an ST-Adapter step on ``tiny`` took 42x its fp32 time here).
* ``fp32``: no autocast.

Trainable weights stay fp32 in every mode, so the optimizer updates full-precision weights.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` made concrete for `device`: bf16 on GPU, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler that is on for fp16 only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


def hold_frozen_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen fp32 parameter to `dtype` in place (trainable ones stay fp32 for the optimizer).

    Under autocast in that dtype the matmuls read it anyway, so this halves the frozen weights' memory and
    the per-step casts; norms still compute in fp32 (autocast casts their inputs up). Returns the count cast.
    """
    cast = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
            cast += 1
    return cast
