"""The method registry: every module in ``methods/`` (installed as ``peft_bench.methods``) registers itself;
plugins add more.

A method is one file with a config dataclass (defaults follow the paper) and a ``build`` function::

    @register_method("my_method", config=MyConfig, group="Adapter", architecture="SA", models_time=False)
    def build(backbone: VideoBackbone, context: RunContext, cfg: MyConfig) -> VideoClassifier: ...

``build`` receives a backbone whose parameters are all frozen, the run's :class:`RunContext` (classes,
frames, dataset, the run's head dropout) and the method's config, already resolved against that context:
a field declared with :func:`from_context` and left at None takes the run's value (peft's "None means
take it from the model"), and the resolved config is what a run records and hashes. Whatever the method
adds is trainable by default; a method that trains backbone weights (full or partial fine-tuning)
unfreezes them itself. ``MethodSpec.create`` is the one way to build a method: it freezes, resolves and
calls ``build``. Methods are found without a central list: every module of the ``peft_bench.methods`` package,
every ``peft_bench.methods`` entry point of installed packages, and any file given with ``--plugin``.

Methods published after the ST-Adapter paper register with ``group=LATER_METHODS``: the table and
Figure 1 put them after the paper's groups, labelled as later methods. A method whose additions fold
into the backbone's weights after training passes ``merge`` (a function model -> merged model).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeAlias, TypeVar

from peft_bench.dataclass_io import ConfigError, from_dict
from peft_bench.errors import UserError
from peft_bench.method_api.context import RunContext as RunContext  # re-exported: methods import it from here

if TYPE_CHECKING:
    # Types only: the registry, and the config that reads it, load without torch (tests/test_dataset_specs.py).
    from _typeshed import DataclassInstance

    from peft_bench.backbones.base import VideoBackbone
    from peft_bench.method_api.model import VideoClassifier

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "peft_bench.methods"
# The group of every method published after the ST-Adapter paper (AIM, EVL, DiST, ZeroI2V, the generic
# PEFT baselines): rows after the paper's groups, labelled as later methods.
LATER_METHODS = "Later methods"

# Where a method changes the image model (the paper's column): spatial adaptation only, with temporal
# attention added, or with the spatial attention made spatio-temporal.
Architecture = Literal["SA", "SA+TA", "SA+TS"]

# A method's config: a dataclass (its fields are what a run records and hashes).
ConfigT = TypeVar("ConfigT", bound="DataclassInstance")
ConfigT_contra = TypeVar("ConfigT_contra", bound="DataclassInstance", contravariant=True)


class BuildMethod(Protocol[ConfigT_contra]):
    """What a method registers: ``build(backbone, context, cfg) -> VideoClassifier``, called positionally.

    ``backbone`` arrives with every parameter frozen; ``context`` is the run's; ``cfg`` is an instance of
    the config class the method registered with, resolved against the context (no ``from_context`` field
    left at None)."""

    def __call__(self, backbone: VideoBackbone, context: RunContext, cfg: ConfigT_contra, /) -> VideoClassifier: ...

    def __hash__(self) -> int: ...  # a plain function is: the runner caches measurements by it


# A method's ``merge``: folds the trained additions into the backbone's weights, in place, and returns the
# model (the same classifier) for evaluation.
MergeMethod: TypeAlias = "Callable[[VideoClassifier], VideoClassifier]"


def from_context(key: str, help: str = "") -> Any:
    """A method-config field that defaults to the run's value of ``RunContext.<key>`` (None until resolved)."""
    if key not in {f.name for f in dataclasses.fields(RunContext)}:
        raise ValueError(f"RunContext has no field '{key}'")
    return field(default=None, metadata={"from_context": key, "help": help})


def resolve_from_context(cfg: ConfigT, context: RunContext) -> ConfigT:
    """``cfg`` with every ``from_context`` field that is None set to the context's value (checks re-run)."""
    updates: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        key = f.metadata.get("from_context")
        if key is not None and getattr(cfg, f.name) is None and getattr(context, key) is not None:
            updates[f.name] = getattr(context, key)
    return dataclasses.replace(cfg, **updates) if updates else cfg


@dataclass(frozen=True)
class MethodSpec(Generic[ConfigT]):
    """A registered method: its ``build`` function, its config class and what it declares about itself."""

    name: str
    build: BuildMethod[ConfigT]
    config_class: type[ConfigT]
    group: str  # the paper's row group, e.g. "Full fine-tuning"; LATER_METHODS for methods after it
    architecture: Architecture
    models_time: bool  # as declared; `peft-bench methods --check` measures it
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""  # the module it came from
    merge: MergeMethod | None = None  # folds the trained additions into the backbone's weights

    @property
    def later(self) -> bool:
        return self.group == LATER_METHODS

    @property
    def mergeable(self) -> bool:
        return self.merge is not None

    def make_config(
        self,
        preset: str | list[str] | None = None,
        overrides: dict[str, Any] | None = None,
        context: RunContext | None = None,
    ) -> ConfigT:
        """The config: class defaults, then each named preset the method has (in order), then overrides,
        then (with a context) the fields left to the run filled from it.

        Presets are named after datasets (the released K400 / SSv2 configurations) or after backbones
        (how a method scales to one, e.g. a bottleneck width for the narrow `tiny`).
        """
        values: dict[str, Any] = {}
        for name in [preset] if isinstance(preset, str) else (preset or []):
            values.update(self.presets.get(name, {}))
        values.update(overrides or {})
        try:
            cfg = from_dict(self.config_class, values, prefix="method.")
            return cfg if context is None else resolve_from_context(cfg, context)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"method '{self.name}': {err}") from None

    def create(
        self, backbone: VideoBackbone, context: RunContext, cfg: ConfigT | dict[str, Any] | None = None
    ) -> VideoClassifier:
        """The method on ``backbone`` for ``context``: the backbone frozen, ``cfg`` (a config, a dict of
        overrides, or None for the defaults) resolved against the context, then ``build``."""
        if context.num_classes is None:
            raise ValueError("building a method needs the run's number of classes (RunContext.num_classes)")
        context = dataclasses.replace(context, backbone=backbone.info, input_size=backbone.input_size)
        if cfg is None or isinstance(cfg, dict):
            cfg = self.make_config(None, cfg, context)
        else:
            cfg = resolve_from_context(cfg, context)
        backbone.requires_grad_(False)
        return self.build(backbone, context, cfg)


_METHODS: dict[str, MethodSpec[Any]] = {}


def register_method(
    name: str,
    *,
    config: type[ConfigT],
    group: str,
    architecture: Architecture,
    models_time: bool,
    presets: dict[str, dict[str, Any]] | None = None,
    merge: MergeMethod | None = None,
) -> Callable[[BuildMethod[ConfigT]], BuildMethod[ConfigT]]:
    """Decorator for a method's ``build(backbone, context, cfg)`` function (a :class:`BuildMethod` whose
    ``cfg`` is a ``config``)."""

    def decorate(build: BuildMethod[ConfigT]) -> BuildMethod[ConfigT]:
        previous = _METHODS.get(name)
        if previous is not None and previous.source != build.__module__:
            raise ValueError(f"method '{name}' is registered twice: by {previous.source} and by {build.__module__}")
        _METHODS[name] = MethodSpec(
            name, build, config, group, architecture, models_time, dict(presets or {}), build.__module__, merge
        )
        return build

    return decorate


@cache  # once per process; a call that raised is not cached and runs again
def discover() -> None:
    """Import every module of ``peft_bench.methods`` and every entry-point plugin (once)."""
    builtin = _builtin_methods_package()
    for module in pkgutil.iter_modules(builtin.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{builtin.__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001  a broken third-party plugin must not hide the built-in methods
            log.warning("could not load method plugin %s (%s): %s", entry.name, entry.value, err)


def _builtin_methods_package() -> ModuleType:
    """The repository's ``methods/`` folder, installed as ``peft_bench.methods`` (never a top-level
    ``methods``, which any folder of that name on the path would shadow)."""
    try:
        return importlib.import_module("peft_bench.methods")
    except ModuleNotFoundError as err:
        if err.name != "peft_bench.methods":
            raise
        raise ModuleNotFoundError(
            "peft_bench.methods is not installed: the built-in methods install with the package. From a clone, "
            "`pip install -e .` (the repository's methods/ folder becomes peft_bench.methods); putting the "
            "clone on PYTHONPATH alone is not enough"
        ) from None


def load_plugin(path: str | Path) -> None:
    """Import a user's method file; its ``@register_method`` calls add it to the registry."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"method plugin not found: {path}")
    module_name = f"peft_bench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import method plugin {path}: a plugin is a Python source file (.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def available_methods() -> list[str]:
    discover()
    return list(_METHODS)


def get_method(name: str) -> MethodSpec[Any]:
    discover()
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
