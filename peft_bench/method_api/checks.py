"""Checks of what each registered method claims, measured on randomly initialised backbones.

* :func:`parameter_parity`: every method's trainable and total parameters beside the paper's figure
  (or, for later methods, their authors').
* :func:`measures_time`: whether a method's output depends on the order of the frames.
* :func:`frozen_after_step`: whether anything outside a method's trainable set moves in a training step.
* :func:`params_without_gradient`: trainable parameters that get no finite gradient in a training step.
* :func:`starts_as_backbone`: how far a method's initial features are from the frozen backbone's.
* :func:`merge_difference`: for methods that fold into the backbone, merged against unmerged logits.

All use random weights (``pretrained="none"``): they test architectures, never results.
"""

from __future__ import annotations

import copy
import csv
import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_bench.backbones import NO_WEIGHTS, VideoBackbone, create_backbone
from peft_bench.method_api.model import VideoClassifier, count_parameters
from peft_bench.method_api.optim import AdamWSettings, make_optimizer
from peft_bench.method_api.registry import RunContext, available_methods, get_method
from peft_bench.reference import reference_text

# The paper's table as published and the later methods' authors' figures (package data; read here
# without pulling in pandas and mlflow).
PAPER_TABLE_FILE = "paper_cross_modality.csv"
FOLLOWUPS_FILE = "followups_clip_vitb16.csv"

NOISE_STD = 0.02  # perturbation of trainable parameters in measures_time (ViT's init scale)
NUM_CLASSES = 10  # head size for the forward checks
# The run's optimizer with decay on: the step check asks which tensors move, not how far, so any positive values do.
STEP_SETTINGS = AdamWSettings(lr=7.5e-4, weight_decay=0.01)


def paper_params_m() -> dict[str, float]:
    """The paper's fine-tuned parameter figure (M) per method name; reported by others, not measured."""
    rows = csv.DictReader(io.StringIO(reference_text(PAPER_TABLE_FILE)))
    return {row["method"]: float(row["params_m"]) for row in rows if row.get("params_m")}


def authors_params_m() -> dict[str, float]:
    """Later methods' trainable parameters (M) as their authors report them; reported, not measured."""
    rows = csv.DictReader(io.StringIO(reference_text(FOLLOWUPS_FILE)))
    return {row["method"]: float(row["params_m"]) for row in rows if row.get("params_m")}


def build_method(
    method_name: str,
    backbone: VideoBackbone,
    num_classes: int,
    method_args: dict[str, Any] | None = None,
    num_frames: int = 8,
) -> VideoClassifier:
    """The method with its default configuration (or ``method_args``) on ``backbone``, built as the runner
    builds it (``MethodSpec.create``: backbone frozen, config resolved against the context)."""
    context = RunContext(num_classes=num_classes, num_frames=num_frames)
    return get_method(method_name).create(backbone, context, dict(method_args) if method_args else None)


def parameter_parity(backbone_name: str, num_classes: int) -> list[dict]:
    """One row per registered method: declared group/architecture/models_time, counts, the paper's figure.

    Models are built on the meta device (shapes only, no memory, no initialisation), so that counting
    ViT-B/16 for every method takes seconds; a method that cannot be built there is built for real.
    """
    paper, authors = paper_params_m(), authors_params_m()
    rows = []
    for name in available_methods():
        spec = get_method(name)
        try:
            with torch.device("meta"):
                model = build_method(name, create_backbone(backbone_name, NO_WEIGHTS), num_classes)
        except (NotImplementedError, RuntimeError):  # a plugin that needs real tensors while building
            model = build_method(name, create_backbone(backbone_name, NO_WEIGHTS), num_classes)
        counts = count_parameters(model)
        paper_m = paper.get(name)
        # A paper row is compared with the paper; a later method with its own authors' figure.
        reported, reported_by = (paper_m, "paper") if paper_m is not None else (authors.get(name), "authors")
        rows.append(
            {
                "method": name,
                "group": spec.group,
                "architecture": spec.architecture,
                "models_time": spec.models_time,
                "trainable": counts.trainable,
                "total": counts.total,
                "paper_m": paper_m,
                "reported_m": reported,
                "reported_by": reported_by if reported is not None else None,
                "diff_pct": None if reported is None else 100.0 * (counts.trainable / 1e6 - reported) / reported,
            }
        )
    return rows


def _random_clip(backbone: VideoBackbone, num_frames: int, batch: int = 2, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = backbone.input_size
    return torch.randn(batch, num_frames, 3, size, size, generator=gen)


def shuffled_order(num_frames: int) -> list[int]:
    """A fixed permutation that is not the identity, a reversal or a cyclic shift (for 4 frames or more)."""
    if num_frames < 2:
        raise ValueError("shuffling needs at least 2 frames")
    if num_frames < 4:
        return [1, 0, *range(2, num_frames)]
    # Odd positions first, then even ones: 4 frames -> [1, 3, 0, 2].
    return [*range(1, num_frames, 2), *range(0, num_frames, 2)]


def measures_time(
    method_name: str, method_args: dict | None = None, backbone_name: str = "tiny", num_frames: int = 4
) -> bool:
    """True when the method's output changes once the frames of a clip are shuffled, for its default config
    or ``method_args`` (a run's own config: ST-Adapter with a (1, 1, 1) kernel does not model time).

    Trainable parameters get small random noise first, so that zero-initialised layers (temporal
    attention's output, adapters' up-projections) are not trivially the identity. The comparison runs
    in double precision: rounding (a frame mean summed in another order) is then ~1e-16, far below a
    real but weak dependence on order such as attentional pooling's near-uniform attention at
    initialisation (~1e-6 of the output; within float32 rounding of it).
    """
    torch.manual_seed(0)
    model = build_method(method_name, create_backbone(backbone_name, NO_WEIGHTS), NUM_CLASSES, method_args)
    perturb_trainable(model)
    model.double().eval()
    clip = _random_clip(model.backbone, num_frames).double()
    with torch.no_grad():
        out = model(clip)
        shuffled = model(clip[:, shuffled_order(num_frames)])
    return not torch.allclose(out, shuffled, rtol=1e-9, atol=1e-12)


def perturb_trainable(model: nn.Module, seed: int = 1) -> None:
    """Small random noise on every trainable parameter, so that zero-initialised layers (temporal
    attention's output, adapters' up-projections, LoRA's B) are not trivially the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * NOISE_STD)


def params_without_gradient(method_name: str, backbone_name: str = "tiny") -> list[str]:
    """Names of trainable parameters whose gradient is missing or not finite after one training step's
    backward pass (an empty list is what a method must give): a parameter that trains but never gets a
    gradient (a wrapped layer the forward never calls) is counted and decayed for nothing."""
    torch.manual_seed(0)
    model = build_method(method_name, create_backbone(backbone_name, NO_WEIGHTS), NUM_CLASSES)
    model.train()
    clip = _random_clip(model.backbone, num_frames=2)
    labels = torch.arange(clip.shape[0]) % NUM_CLASSES
    F.cross_entropy(model(clip), labels).backward()
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]


def merge_difference(method_name: str, backbone_name: str = "tiny") -> tuple[float, VideoClassifier, VideoClassifier]:
    """(max abs logit difference, unmerged model, merged model) for a method that merges: trainable
    parameters perturbed (so that the additions are not the identity), then folded into the backbone
    by the method's ``merge``; both in double precision, in evaluation mode."""
    spec = get_method(method_name)
    if spec.merge is None:
        raise ValueError(f"method '{method_name}' does not declare that it can merge")
    torch.manual_seed(0)
    model = build_method(method_name, create_backbone(backbone_name, NO_WEIGHTS), NUM_CLASSES)
    perturb_trainable(model)
    model.double().eval()
    clip = _random_clip(model.backbone, num_frames=4).double()
    with torch.no_grad():
        unmerged_logits = model(clip)
        unmerged = copy.deepcopy(model)
        merged = spec.merge(model)
        merged_logits = merged(clip)
    return (merged_logits - unmerged_logits).abs().max().item(), unmerged, merged


def frozen_after_step(method_name: str, backbone_name: str = "tiny") -> list[str]:
    """Names of parameters outside the trainable set that changed, got a gradient or optimizer state
    in one AdamW step of the optimizer every run uses (an empty list is what a method must give)."""
    torch.manual_seed(0)
    model = build_method(method_name, create_backbone(backbone_name, NO_WEIGHTS), NUM_CLASSES)
    model.train()
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    before = {name: p.detach().clone() for name, p in frozen.items()}
    optimizer = make_optimizer(model, STEP_SETTINGS)
    clip = _random_clip(model.backbone, num_frames=2)
    labels = torch.arange(clip.shape[0]) % NUM_CLASSES
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(clip), labels).backward()
    optimizer.step()
    moved = []
    for name, p in frozen.items():
        if p.grad is not None or p in optimizer.state or not torch.equal(p.detach(), before[name]):
            moved.append(name)
    return moved


def starts_as_backbone(method_name: str, backbone_name: str = "tiny") -> float:
    """Max abs difference between the method's pooled features at initialisation and the linear probe's
    (the frozen backbone's) on the same weights and clip; 0 for methods built to start as the backbone."""
    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, NO_WEIGHTS)
    reference = build_method("linear_probe", copy.deepcopy(backbone), NUM_CLASSES).eval()
    model = build_method(method_name, copy.deepcopy(backbone), NUM_CLASSES).eval()
    clip = _random_clip(backbone, num_frames=4)
    with torch.no_grad():
        return (model.pooled_features(clip) - reference.pooled_features(clip)).abs().max().item()
