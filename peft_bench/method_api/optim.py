"""The optimizer's view of a model: which parameters decay, in which groups, at which learning rate.

Each module names what must not decay (``no_weight_decay()``, timm's name: :class:`DeclaresNoWeightDecay`)
and may declare optimizer groups (``param_groups()`` returning :class:`ParamGroup` objects:
:class:`DeclaresParamGroups`), both collected with the module's path as open_clip does, so a wrapper nested
deep in the backbone keeps its declaration. :func:`make_optimizer` is the AdamW every run
trains with (the runner's, and the registry-wide checks'); it reads only the three settings of
:class:`OptimizerSettings`, which a run's ``TrainConfig`` has.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

log = logging.getLogger(__name__)


class OptimizerSettings(Protocol):
    """What the optimizer reads of a run's training settings (``config.TrainConfig`` has these fields).
    Read-only: a frozen dataclass (:class:`AdamWSettings`) provides them too."""

    @property
    def lr(self) -> float: ...

    @property
    def weight_decay(self) -> float: ...

    @property
    def backbone_lr_scale(self) -> float: ...


@dataclass(frozen=True)
class AdamWSettings:
    """:class:`OptimizerSettings` as a value of its own, for an optimizer made outside a run."""

    lr: float
    weight_decay: float
    backbone_lr_scale: float = 1.0


def make_optimizer(
    model: nn.Module, settings: OptimizerSettings, pretrained: set[int] | frozenset[int] = frozenset()
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only, in the groups :func:`optimizer_param_groups` makes:
    no weight decay on biases, norms and other 1-D tensors, nor on what the model's modules declare in
    ``no_weight_decay()``; the backbone's own weights (``pretrained``, their ids) at ``lr *
    backbone_lr_scale``; a method's declared ``param_groups()`` with their multipliers. The groups are logged.
    """
    groups = optimizer_param_groups(model, settings.lr, settings.weight_decay, settings.backbone_lr_scale, pretrained)
    log_param_groups(groups, no_weight_decay_patterns(model))
    return torch.optim.AdamW(groups, lr=settings.lr)


@dataclass(frozen=True)
class ParamGroup:
    """A method's optimizer group: the trainable parameters matching ``patterns`` (fnmatch, relative to
    the module that declares it) learn at ``lr * lr_mult`` with ``weight_decay * decay_mult``."""

    name: str
    patterns: tuple[str, ...]
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@runtime_checkable
class DeclaresNoWeightDecay(Protocol):
    """A module whose ``no_weight_decay()`` names parameters (or fnmatch patterns), relative to itself,
    that never get weight decay (timm's hook; a backbone's position embedding, a method's temporal one)."""

    def no_weight_decay(self) -> Iterable[str]: ...


@runtime_checkable
class DeclaresParamGroups(Protocol):
    """A module whose ``param_groups()`` puts some of its parameters in optimizer groups of their own."""

    def param_groups(self) -> Iterable[ParamGroup]: ...


def _with_prefix(path: str) -> str:
    """A submodule's path as the prefix of its declared names (open_clip's collect_no_weight_decay): a
    declaration nested at ``backbone.blocks.3.inner`` is not lost, and its names stay relative to it."""
    return f"{path}." if path else ""


def no_weight_decay_patterns(model: nn.Module) -> set[str]:
    """Every ``no_weight_decay()`` name or fnmatch pattern in ``model``, prefixed with its module's path."""
    return {
        _with_prefix(path) + name
        for path, module in model.named_modules()
        if isinstance(module, DeclaresNoWeightDecay)
        for name in module.no_weight_decay()
    }


def declared_param_groups(model: nn.Module) -> list[ParamGroup]:
    return [
        ParamGroup(group.name, tuple(_with_prefix(path) + p for p in group.patterns), group.lr_mult, group.decay_mult)
        for path, module in model.named_modules()
        if isinstance(module, DeclaresParamGroups)
        for group in module.param_groups()
    ]


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def optimizer_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_scale: float = 1.0,
    pretrained: set[int] | frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters of ``model``, each named (and logged).

    Weight decay goes to tensors of 2 or more dimensions (not biases, norms or other 1-D tensors) that no
    module exempts with ``no_weight_decay()``; the ndim rule beats name matching (open_clip's reasoning:
    it does not depend on how a library names its norms). Parameters in ``pretrained`` (ids of the
    backbone's own weights) learn at ``lr * backbone_lr_scale``: what a method adds starts from scratch,
    what it fine-tunes should not be pushed as hard. A method's ``param_groups()`` multiply both.
    """
    exempt = no_weight_decay_patterns(model)
    declared = declared_param_groups(model)
    buckets: dict[tuple[str, bool, bool], list[nn.Parameter]] = {}
    multipliers = {"": (1.0, 1.0), **{g.name: (g.lr_mult, g.decay_mult) for g in declared}}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = next((g.name for g in declared if matches(name, g.patterns)), "")
        decays = p.ndim > 1 and not matches(name, exempt) and multipliers[group][1] > 0
        buckets.setdefault((group, decays, id(p) in pretrained), []).append(p)
    if not buckets:
        raise ValueError("the method left no trainable parameters")
    groups: list[dict[str, Any]] = []
    for (group, decays, is_pretrained), params in sorted(buckets.items()):
        lr_mult, decay_mult = multipliers[group]
        label = " ".join(
            part
            for part in (
                group or "default",
                "pretrained" if is_pretrained else "new",
                "decay" if decays else "no-decay",
            )
        )
        groups.append(
            {
                "params": params,
                "name": label,
                "lr": lr * lr_mult * (backbone_lr_scale if is_pretrained else 1.0),
                "weight_decay": weight_decay * decay_mult if decays else 0.0,
            }
        )
    return groups


def log_param_groups(groups: list[dict[str, Any]], exempt: set[str]) -> None:
    for group in groups:
        log.info(
            "optimizer group %-28s %4d tensors %12s parameters  lr %.3g  weight decay %.3g",
            group["name"],
            len(group["params"]),
            f"{sum(p.numel() for p in group['params']):,}",
            group["lr"],
            group["weight_decay"],
        )
    if exempt:
        log.info("no weight decay by declaration: %s", ", ".join(sorted(exempt)))
