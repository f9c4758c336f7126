"""One object describes a run completely: :class:`RunConfig`.

It is resolved once, before any work: the dataset's training recipe, the method's preset for that
dataset and the user's overrides are merged, every name is checked against the registries, and every
value against its type. The resolved config is what the run saves, logs to mlflow and hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .dataclass_io import ConfigError, from_dict, merge, to_dict


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
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be at least 1 and lr positive")
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.batch_size % self.micro_batch_size):
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (epoch ends only) or a number of steps, got {self.checkpoint_every}")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout must lie in [0, 1), got {self.head_dropout}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be 0 (no clipping) or positive, got {self.grad_clip_norm}")
        from .precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


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
        if self.augmented_copies < 1:
            raise ValueError(f"augmented_copies must be at least 1, got {self.augmented_copies}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be float32 or float16, got {self.cache_dtype}")


# The released ST-Adapter code's optimisation (linziyi96/st-adapter at b914b38: scripts/train_*.sh and main.py:
# --blr 1e-3 per 256 clips at 64 clips x 3 GPUs (K400) or x 4 (SSv2), AdamW with weight decay 0.01, warm-up
# from lr 0, cosine to 0, no clipping, fp16 autocast with a gradient scaler over fp16 frozen weights), and
# cheap settings for the embedded default. The data side is benchmarks/recipes/<dataset>.yaml.
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "k400": dict(epochs=12, warmup_epochs=2, batch_size=192, lr=7.5e-4, precision="fp16"),
    "ssv2": dict(epochs=50, warmup_epochs=2, batch_size=256, lr=1e-3, precision="fp16"),
    # One loader worker: decoding then overlaps the step on a 2-core laptop.
    # Pre-trained weights that a method trains move 10x slower: at the new layers' rate they are wrecked.
    # Appearance saturates (97-99% top-1 for every method after 4 epochs), so two suffice.
    # No head dropout on tiny's 96-wide features: at the paper's 0.5, temporal_ft lost 7.5 points of
    # motion top-1 (34.4 against 41.9, seed 0) within the 12 epochs.
    "synthetic-appearance": dict(epochs=2, warmup_epochs=0.5, batch_size=16, lr=2e-3, backbone_lr_scale=0.1,
                                 head_dropout=0.0, num_workers=1),
    "synthetic-motion": dict(epochs=12, warmup_epochs=1, batch_size=16, lr=2e-3, backbone_lr_scale=0.1,
                             head_dropout=0.0, num_workers=1),
}

# Which of a method's presets (the released K400 / SSv2 configurations) a dataset uses.
METHOD_PRESET_FOR_DATASET = {"k400": "k400", "ssv2": "ssv2", "synthetic-appearance": "k400", "synthetic-motion": "ssv2"}


@dataclass
class RunConfig:
    method: str = "st_adapter"
    backbone: str = "tiny"
    dataset: str = "synthetic-motion"
    pretrained: str = "auto"  # "auto" (local caches), a weights file, or "none" for random weights
    data_root: str | None = None  # where the videos are (synthetic datasets: generated under the cache)
    annotations: str | None = None  # where the annotation files are (default: data_root)
    num_frames: int = 8
    decoder: str = "auto"  # "auto", "pyav" or "decord": the frames are the same, only the speed differs
    preset: str | None = None  # the method preset; default from the dataset
    method_args: dict[str, Any] = field(default_factory=dict)  # resolved: the method's full config
    recipe: dict[str, Any] = field(default_factory=dict)  # resolved: the dataset's data recipe, with any changes
    train: TrainConfig = field(default_factory=TrainConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    experiment: str = "peft-bench"
    tracking_uri: str | None = None  # default: SQLite under results_dir, or MLFLOW_TRACKING_URI
    results_dir: str = "results"
    output_dir: str = "runs"  # checkpoints and per-run files

    def digest(self) -> str:
        """Hash of everything that changes a result (not where outputs go)."""
        data = to_dict(self)
        for key in ("experiment", "tracking_uri", "results_dir", "output_dir", "device", "decoder"):
            data.pop(key)
        data["train"].pop("num_workers")
        data["train"].pop("checkpoint_every")  # where a run saves, not what it computes
        # Only speed settings that were changed are hashed: configs from before they existed keep their digest.
        defaults = to_dict(SpeedConfig())
        changed = {k: v for k, v in data.pop("speed").items() if v != defaults[k]}
        if changed:
            data["speed"] = changed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def run_name(self) -> str:
        return f"{self.method}-{self.backbone}-{self.dataset}-s{self.seed}"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment / f"{self.run_name()}-{self.digest()}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(to_dict(self), sort_keys=False)


def resolve_config(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Build a complete, checked RunConfig from a saved config (``base``) and overrides.

    Unknown method, backbone or dataset names and malformed values raise ConfigError here, before any
    work, with what is available.
    """
    from .backbones import available_backbones
    from .data import DATASETS
    from .registry import available_methods, get_method

    data = merge(base or {}, overrides or {})
    if isinstance(data.get("method"), dict):  # `--set method.width=256` lands here
        data["method_args"] = merge(data.get("method_args", {}), data.pop("method"))
    dataset = data.get("dataset", RunConfig.dataset)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; available: {', '.join(sorted(DATASETS))}")
    data["train"] = merge(TRAINING_DEFAULTS.get(dataset, {}), data.get("train", {}))
    data["recipe"] = _resolved_recipe(dataset, data.get("recipe") or {})
    cfg = from_dict(RunConfig, data)
    if cfg.method not in available_methods():
        raise ConfigError(f"unknown method '{cfg.method}'; available: {', '.join(available_methods())}")
    if cfg.backbone not in available_backbones():
        raise ConfigError(f"unknown backbone '{cfg.backbone}'; available: {', '.join(available_backbones())}")
    from .data.decode import BACKENDS

    if cfg.decoder not in BACKENDS:
        raise ConfigError(f"unknown decoder '{cfg.decoder}'; available: {', '.join(BACKENDS)}")
    if cfg.num_frames < 1:
        raise ConfigError(f"num_frames must be at least 1, got {cfg.num_frames}")
    spec = get_method(cfg.method)
    preset = cfg.preset or METHOD_PRESET_FOR_DATASET.get(cfg.dataset)
    if cfg.preset is not None and cfg.preset not in spec.presets:
        raise ConfigError(f"method '{cfg.method}' has no preset '{cfg.preset}'; it has: {', '.join(spec.presets) or 'none'}")
    # The dataset's preset, then the backbone's (how the method scales to it), then the user's values.
    method_cfg = spec.make_config([preset, cfg.backbone], cfg.method_args)
    return replace(cfg, preset=preset if preset in spec.presets else None, method_args=to_dict(method_cfg))


def _resolved_recipe(dataset: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The dataset's recipe (benchmarks/recipes/) with ``--set recipe.KEY=VALUE`` changes, as plain data: the
    run saves and hashes the sampling and augmentation it used, not only the recipe's name."""
    from .data import DATASETS
    from .data.recipes import load_recipe, recipe_settings, with_settings

    if not isinstance(changes, dict):
        raise ConfigError(f"recipe: expected a mapping of recipe keys, got {changes!r}")
    try:
        return recipe_settings(with_settings(load_recipe(DATASETS[dataset].recipe), changes))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def load_config(path: str | Path) -> RunConfig:
    """A saved run config (config.yaml of a run folder)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return resolve_config(base=data)
