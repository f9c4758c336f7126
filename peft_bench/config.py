"""One object describes a run completely: :class:`RunConfig`.

It is resolved once, before any work: the dataset's training recipe, the method's preset for that
dataset and the user's overrides are merged, every name is checked against the registries, and every
value against its type. The resolved config is what the run saves, logs to mlflow and hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from peft_bench.data.specs import DatasetSpec, available_datasets, get_dataset
from peft_bench.dataclass_io import ConfigError, from_dict, merge, to_dict
from peft_bench.errors import UserError
from peft_bench.method_api.registry import RunContext, available_methods, get_method

# The backbones, the recipes, the decoders and the precisions import torch: they are imported where a config is
# resolved or checked, so that the tracker and the tables can import this module (for its digest) without it.

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 12
    warmup_epochs: float = 2.0
    batch_size: int = 192  # the global batch of one optimizer step, as the paper states it
    micro_batch_size: int = 0  # clips per forward pass (0 = the whole batch); gradients accumulate
    lr: float = 7.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01  # never on biases, norms or other 1-D parameters
    backbone_lr_scale: float = 1.0  # lr factor for pre-trained weights a method trains (full/partial fine-tuning)
    label_smoothing: float = 0.0
    warmup_from_zero: bool = True  # the first step at lr 0, as released; false: at lr / warm-up steps
    grad_clip_norm: float = 0.0  # clip the gradient norm to this; 0: never (as released)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), bf16, fp16 (the released) or fp32: precision.py
    head_dropout: float = 0.5  # before the new linear head, the same for every method (the released ST-Adapter code's)
    eval_every: int = 0  # epochs between validations during training; 0 = only the final evaluation
    num_workers: int = 8
    max_failure_fraction: float = 0.05  # of videos that may fail to decode before the run stops
    val_subset: int = 0  # evaluate on the first N validation videos only (0 = all)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0 = at epoch ends only)

    def __post_init__(self):
        require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        require(
            math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            "warmup_epochs",
            "a finite number in [0, epochs]",
            self.warmup_epochs,
        )
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(self.micro_batch_size >= 0, "micro_batch_size", "0 (the whole batch) or more", self.micro_batch_size)
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise UserError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        require(math.isfinite(self.lr) and self.lr > 0, "lr", "a positive finite number", self.lr)
        for name in ("min_lr", "weight_decay", "backbone_lr_scale"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, name, "a non-negative finite number", value)
        require(0 <= self.label_smoothing < 1, "label_smoothing", "lie in [0, 1)", self.label_smoothing, verb="")
        require(0 <= self.head_dropout < 1, "head_dropout", "lie in [0, 1)", self.head_dropout, verb="")
        require(self.eval_every >= 0, "eval_every", "0 or more", self.eval_every)
        require(self.num_workers >= 0, "num_workers", "0 or more", self.num_workers)
        require(
            0 <= self.max_failure_fraction <= 1,
            "max_failure_fraction",
            "lie in [0, 1]",
            self.max_failure_fraction,
            verb="",
        )
        require(self.val_subset >= 0, "val_subset", "0 (all) or a positive number of videos", self.val_subset)
        require(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            "0 (epoch ends only) or a number of steps",
            self.checkpoint_every,
        )
        require(
            math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0,
            "grad_clip_norm",
            "0 (no clipping) or a positive finite number",
            self.grad_clip_norm,
        )
        # heavy (torch): see the note at the imports
        from peft_bench.precision import PRECISIONS

        require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)


def require(ok: bool, name: str, expected: str, value: Any, verb: str = "be") -> None:
    """``lr must be a positive finite number, got inf``: the field, what it must be, and what it was.
    (``dataclass_io`` puts the section in front: ``train.lr ...``.)"""
    if not ok:
        raise UserError(f"{name} must {verb + ' ' if verb else ''}{expected}, got {value!r}")


@dataclass
class SpeedConfig:
    """How a run spends compute; none of it is on by default, so results do not move unless asked.

    ``feature_cache`` trains methods whose trainable parts all sit after a frozen backbone (linear probe,
    attentional pooling) from stored backbone features: each training clip is augmented
    ``augmented_copies`` times (copy k = the augmentation epoch k would draw) and epoch e reads copy
    e mod k; evaluation views are stored once. ``augmented_copies`` = epochs reproduces uncached training.
    """

    feature_cache: bool = False
    augmented_copies: int = 1
    cache_dtype: str = "float32"  # "float16" halves the cache; float32 keeps cached training exact
    frozen_bf16: bool = False  # hold frozen weights in bf16 (GPU, where the step autocasts to bf16 anyway)
    activation_checkpointing: bool = False  # recompute each backbone block in backward instead of keeping it
    compile: bool = False  # torch.compile the model's forward

    def __post_init__(self):
        require(self.augmented_copies >= 1, "augmented_copies", "at least 1", self.augmented_copies)
        require(self.cache_dtype in ("float32", "float16"), "cache_dtype", "float32 or float16", self.cache_dtype)


@dataclass
class DataConfig:
    """How videos are read. Every decoder returns the same frames, so none of this enters the digest."""

    decoder: str = "auto"  # "auto", "pyav", "torchcodec" or "decord" (peft_bench/data/decode.py)
    decode_device: str = "cpu"  # "cuda": torchcodec decodes on the GPU, in the training process


@dataclass
class RunConfig:
    method: str = "st_adapter"
    backbone: str = "tiny"
    dataset: str = "synthetic-motion"
    pretrained: str = "auto"  # "auto" (local caches), a weights file, or "none" for random weights
    data_root: str | None = None  # where the videos are (synthetic datasets: generated under the cache)
    annotations: str | None = None  # where the annotation files are (default: data_root)
    num_frames: int = 8
    preset: str | None = None  # the method preset; default from the dataset
    # A subset of the dataset's classes to train and evaluate on (Mini-Kinetics style), as `dataset.classes`:
    # a list of names, or a file with one per line (read into the names when the config is resolved).
    classes: list[str] | None = None
    method_args: dict[str, Any] = field(default_factory=dict)  # resolved: the method's full config
    recipe: dict[str, Any] = field(default_factory=dict)  # resolved: the dataset's data recipe, with any changes
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    experiment: str = "peft-bench"
    tracking_uri: str | None = None  # default: SQLite under results_dir, or MLFLOW_TRACKING_URI
    results_dir: str = "results"
    output_dir: str = "runs"  # checkpoints and per-run files

    def __post_init__(self):
        require(self.num_frames >= 1, "num_frames", "at least 1", self.num_frames)
        require(self.seed >= 0, "seed", "0 or more", self.seed)
        if self.classes is not None:
            require(len(self.classes) >= 2, "classes", "at least two class names", self.classes)
            repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
            require(not repeated, "classes", "names without repeats", repeated)

    def digest(self) -> str:
        """The config digest of everything that changes a result (not where outputs go)."""
        data = to_dict(self)
        for key in ("experiment", "tracking_uri", "results_dir", "output_dir", "device", "data"):
            data.pop(key)
        if data["classes"] is None:  # all classes: digests from before the setting existed stay valid
            data.pop("classes")
        data["train"].pop("num_workers")
        data["train"].pop("checkpoint_every")  # where a run saves, not what it computes
        # Only speed settings that were changed are hashed: configs from before they existed keep their digest.
        defaults = to_dict(SpeedConfig())
        changed = {k: v for k, v in data.pop("speed").items() if v != defaults[k]}
        if changed:
            data["speed"] = changed
        return config_digest(data)

    def dataset_label(self) -> str:
        """The dataset as tables show it: with a class subset, its size too, so that a Mini-Kinetics-style run
        never shares a column (or the paper's figure) with the whole dataset's."""
        return self.dataset if self.classes is None else f"{self.dataset}[{len(self.classes)} classes]"

    def run_name(self) -> str:
        return f"{self.method}-{self.backbone}-{self.dataset}-s{self.seed}"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment / f"{self.run_name()}-{self.digest()}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(to_dict(self), sort_keys=False)


def config_digest(config: Mapping[str, Any], *, compact: bool = False) -> str:
    """The one config digest: the first 12 hex digits of the sha256 of ``config`` as JSON with sorted keys.

    It names a run (``RunConfig.digest``: its folder, the ``config_digest`` param a sweep skips finished runs
    by), tags it in the tracking store and its result record (``config_hash``, of the config as logged), and
    tells a table's cells apart (``recipe_hash``, of the logged config without the seed). ``compact`` leaves
    out the spaces after separators, as the ``config_hash`` tag was always written: both spellings stay,
    because finished runs carry their values and resuming and skipping compare them.
    """
    return hashlib.sha256(canonical_json(config, compact=compact).encode("utf-8")).hexdigest()[:12]


def canonical_json(config: Mapping[str, Any], *, compact: bool = True) -> str:
    """``config`` as JSON with sorted keys: what a digest hashes and what a run's logged config.json holds."""
    separators = (",", ":") if compact else (", ", ": ")
    # default=str: a logged config may hold Paths or other simple objects; their text is what identifies them.
    return json.dumps(config, sort_keys=True, separators=separators, default=str)


def resolve_config(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Build a complete, checked RunConfig from a saved config (``base``) and overrides.

    Unknown method, backbone or dataset names and malformed values raise ConfigError here, before any
    work, with what is available.
    """
    # heavy (torch): see the note at the imports
    from peft_bench.backbones import available_backbones

    data = merge(_moved_decoder_key(base or {}), dataset_options(_moved_decoder_key(overrides or {})))
    if isinstance(data.get("method"), dict):  # `--set method.width=256` lands here
        data["method_args"] = merge(data.get("method_args", {}), data.pop("method"))
    dataset = data.get("dataset", RunConfig.dataset)
    if dataset not in available_datasets():
        raise ConfigError(f"unknown dataset '{dataset}'; available: {', '.join(sorted(available_datasets()))}")
    dataset_spec = get_dataset(dataset)
    if not isinstance(data.get("train", {}), dict):
        raise ConfigError(f"train: expected a mapping, got {data['train']!r}")
    data["train"] = merge(dict(dataset_spec.training), data.get("train", {}))
    if isinstance(data.get("classes"), (str, Path)):
        data["classes"] = read_class_names(data["classes"])
    if data.get("method", RunConfig.method) in dataset_spec.feature_cache_methods:
        data["speed"] = merge({"feature_cache": True}, data.get("speed", {}))
    data["recipe"] = _resolved_recipe(dataset_spec, data.get("recipe") or {})
    cfg = from_dict(RunConfig, data)
    if cfg.method not in available_methods():
        raise ConfigError(f"unknown method '{cfg.method}'; available: {', '.join(available_methods())}")
    if cfg.backbone not in available_backbones():
        raise ConfigError(f"unknown backbone '{cfg.backbone}'; available: {', '.join(available_backbones())}")
    _check_data_config(cfg)
    spec = get_method(cfg.method)
    preset = cfg.preset or dataset_spec.method_preset
    if cfg.preset is not None and cfg.preset not in spec.presets:
        raise ConfigError(
            f"method '{cfg.method}' has no preset '{cfg.preset}'; it has: {', '.join(spec.presets) or 'none'}"
        )
    # The dataset's preset, then the backbone's (how the method scales to it), then the user's values;
    # fields the method leaves to the run (None, e.g. num_frames) take the run's values, once, here.
    context = RunContext(num_frames=cfg.num_frames, dataset=cfg.dataset, head_dropout=cfg.train.head_dropout)
    presets = [name for name in (preset, cfg.backbone) if name is not None]  # as make_config skips None
    method_cfg = spec.make_config(presets, cfg.method_args, context)
    return replace(cfg, preset=preset if preset in spec.presets else None, method_args=to_dict(method_cfg))


def _moved_decoder_key(data: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before the `data` section had a top-level `decoder`: read it as `data.decoder`."""
    if "decoder" not in data:
        return data
    data = dict(data)
    decoder = data.pop("decoder")
    section = dict(data.get("data") or {})
    if section.setdefault("decoder", decoder) != decoder:
        raise ConfigError(
            f"decoder '{decoder}' and data.decoder '{section['decoder']}' disagree; the key is data.decoder now"
        )
    log.warning("config key 'decoder' is now data.decoder; read decoder=%s as data.decoder=%s", decoder, decoder)
    return {**data, "data": section}


def _check_data_config(cfg: RunConfig) -> None:
    # heavy (av, numpy): see the note at the imports
    from peft_bench.data.decode import BACKENDS, DECODE_DEVICES

    if cfg.data.decoder not in BACKENDS:
        raise ConfigError(f"unknown decoder '{cfg.data.decoder}'; available: {', '.join(BACKENDS)}")
    if cfg.data.decode_device not in DECODE_DEVICES:
        raise ConfigError(
            f"unknown data.decode_device '{cfg.data.decode_device}'; available: {', '.join(DECODE_DEVICES)}"
        )
    if cfg.data.decode_device == "cuda":
        if cfg.data.decoder not in ("auto", "torchcodec"):
            raise ConfigError(
                f"data.decode_device=cuda needs data.decoder=torchcodec (or auto), not '{cfg.data.decoder}'"
            )
        if cfg.train.num_workers:
            # CUDA cannot start in DataLoader workers forked from a process that already uses it.
            raise ConfigError("data.decode_device=cuda decodes in the training process: set train.num_workers=0")


def dataset_options(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"dataset": {"classes": X}}`` (from ``--set dataset.classes=X``) -> ``{"classes": X}``: the dataset's
    options, beside its name, which stays ``dataset``."""
    options = overrides.get("dataset")
    if not isinstance(options, dict):
        return overrides
    unknown = sorted(set(options) - {"classes"})
    if unknown:
        raise ConfigError(
            f"unknown key dataset.{unknown[0]}; valid keys: dataset.classes (the dataset's name is "
            "--dataset, or dataset=NAME)"
        )
    out = {k: v for k, v in overrides.items() if k != "dataset"}
    out["classes"] = options["classes"]
    return out


def read_class_names(value: str | Path) -> list[str]:
    """``dataset.classes`` given as text: a file with one class name per line (blank lines and ``#`` comments
    skipped), or names separated by commas."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
        return [name for name in names if name and not name.startswith("#")]
    if "/" in text or text.endswith(".txt"):
        raise ConfigError(
            f"dataset.classes: no file {text} (give a file with one class per line, or a list: "
            "'dataset.classes=[a, b]')"
        )
    return [name.strip() for name in text.split(",") if name.strip()]


def _resolved_recipe(dataset: DatasetSpec, changes: dict[str, Any]) -> dict[str, Any]:
    """The dataset's recipe (peft_bench/data/recipes/) with ``--set recipe.KEY=VALUE`` changes, as plain data:
    the run saves and hashes the sampling and augmentation it used, not only the recipe's name."""
    # heavy (torch): see the imports
    from peft_bench.data.recipes import load_recipe, recipe_settings, with_settings

    if not isinstance(changes, dict):
        raise ConfigError(f"recipe: expected a mapping of recipe keys, got {changes!r}")
    try:
        return recipe_settings(with_settings(load_recipe(dataset.recipe), changes))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def tracked_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as mlflow and the result record hold it: ``classes`` absent when all classes are used, as in
    runs from before the setting existed (their recipe is the same, and so is their config hash)."""
    data = to_dict(cfg)
    if data.get("classes") is None:
        data.pop("classes", None)
    return data


def load_config(path: str | Path) -> RunConfig:
    """A saved run config (config.yaml of a run folder)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return resolve_config(base=data)
