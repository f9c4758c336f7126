"""The method registry: every module in ``methods/`` (installed as ``peft_bench.methods``) registers itself;
plugins add more.

A method is one file with a config dataclass (defaults follow the paper) and a ``build`` function::

    @register_method("my_method", config=MyConfig, group="Adapter", architecture="SA", models_time=False)
    def build(backbone: VideoBackbone, num_classes: int, cfg: MyConfig) -> VideoClassifier:
        ...

``build`` receives a backbone whose parameters are all frozen; whatever the method adds is trainable
by default, and a method that trains backbone weights (full or partial fine-tuning) unfreezes them
itself. Methods are found without a central list: every module of the ``peft_bench.methods`` package, every
``peft_bench.methods`` entry point of installed packages, and any file given with ``--plugin``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .dataclass_io import ConfigError, from_dict, to_dict

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "peft_bench.methods"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[..., Any]
    config_class: type
    group: str  # the paper's row group, e.g. "Full fine-tuning"
    architecture: str  # "SA", "SA+TA" or "SA+TS"
    models_time: bool  # as declared; `peft-bench methods --check` measures it
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""  # the module it came from

    def make_config(self, preset: str | list[str] | None = None, overrides: dict[str, Any] | None = None):
        """The config: class defaults, then each named preset the method has (in order), then overrides.

        Presets are named after datasets (the released K400 / SSv2 configurations) or after backbones
        (how a method scales to one, e.g. a bottleneck width for the narrow `tiny`).
        """
        values: dict[str, Any] = {}
        for name in [preset] if isinstance(preset, str) else (preset or []):
            values.update(self.presets.get(name, {}))
        values.update(overrides or {})
        try:
            return from_dict(self.config_class, values, prefix="method.")
        except ConfigError as err:
            raise ConfigError(f"method '{self.name}': {err}") from None

    def default_config_dict(self, preset: str | None = None) -> dict[str, Any]:
        return to_dict(self.make_config(preset))


_METHODS: dict[str, MethodSpec] = {}
_discovered = False


def register_method(name: str, *, config: type, group: str, architecture: str, models_time: bool,
                    presets: dict[str, dict[str, Any]] | None = None):
    """Decorator for a method's ``build(backbone, num_classes, cfg)`` function."""

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        previous = _METHODS.get(name)
        if previous is not None and previous.source != build.__module__:
            raise ValueError(f"method '{name}' is registered twice: by {previous.source} and by {build.__module__}")
        _METHODS[name] = MethodSpec(name, build, config, group, architecture, models_time, dict(presets or {}),
                                    build.__module__)
        return build

    return decorate


def discover() -> None:
    """Import every module of ``peft_bench.methods`` and every entry-point plugin (once)."""
    global _discovered
    if _discovered:
        return
    builtin = _builtin_methods_package()
    for module in pkgutil.iter_modules(builtin.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{builtin.__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # a broken third-party plugin must not hide the built-in methods
            log.warning("could not load method plugin %s (%s): %s", entry.name, entry.value, err)
    _discovered = True


def _builtin_methods_package():
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
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def available_methods() -> list[str]:
    discover()
    return list(_METHODS)


def get_method(name: str) -> MethodSpec:
    discover()
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
