"""The run context a method is built for (its own module: the registry and the model both read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry imports this module, and loads without torch
    from peft_bench.backbones.base import BackboneInfo


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run it is built for.

    ``num_classes`` and ``head_dropout`` size the shared head; ``num_frames`` is the clip length the run
    samples (what ``from_context("num_frames")`` fields take); ``dataset`` and ``class_names`` name the
    data; ``backbone`` and ``input_size`` are filled from the backbone by ``MethodSpec.create``. Fields
    a caller cannot know yet (the classes, while a config is being resolved) are None.
    """

    num_classes: int | None = None
    num_frames: int = 8
    dataset: str | None = None
    class_names: tuple[str, ...] | None = None
    head_dropout: float = 0.5
    backbone: BackboneInfo | None = None
    input_size: int | None = None
