"""What a dataset is, in one place: a :class:`DatasetSpec` per dataset, registered by name.

A spec says how many classes the dataset has, how its annotation files are laid out (``layouts.py`` reads each
layout), which data recipe samples and augments it (``peft_bench/data/recipes/<recipe>.yaml``), how a run on it
trains by default (``train.*``, the method preset, the feature cache), which real dataset a synthetic one stands
in for, and how the tables name it (the paper's column, other spellings of its name). The config, the dataset
builder, ``peft-bench data``, the accounting and the tables all read it from here, so adding a dataset is one
``register_dataset`` call:

    register_dataset(DatasetSpec("ucf101", num_classes=101, layout="list", recipe="k400", label="UCF-101",
                                 method_preset="k400", training=dict(epochs=30, batch_size=64, lr=1e-3)))

This module imports nothing heavy (no torch, no numpy): the command line and the tables read it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal, get_args

from peft_bench.errors import UserError

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # Python 3.10 has it only here
    from importlib.abc import Traversable

# The annotation layouts `layouts.py` can read: the Kinetics CSVs, SSv2's JSON files, and list files of
# "relative/path label_index" lines.
Layout = Literal["kinetics", "ssv2", "list"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int | None  # None: as many as the annotations give (list files)
    layout: Layout  # how its annotation files are laid out: one of LAYOUTS
    recipe: str  # its sampling and augmentation: peft_bench/data/recipes/<recipe>.yaml
    label: str  # as a table's title names it
    method_preset: str | None = None  # which of a method's presets (the released K400 / SSv2 configurations)
    # Its `train.*` defaults, before the user's: TrainConfig's fields (config.py, a floor above, checks them).
    training: Mapping[str, Any] = field(default_factory=dict)
    feature_cache_methods: tuple[str, ...] = ()  # trained from the frozen-feature cache unless turned off
    synthetic: bool = False  # generated under the cache (data/synthetic.py), not read from a data root
    stands_in_for: str | None = None  # the real dataset whose layout, recipe and preset a synthetic one copies
    paper_column: str | None = None  # the ST-Adapter paper's column it is reported under ("k400", "ssv2")
    aliases: tuple[str, ...] = ()  # other spellings of its name that runs in a tracking store may carry

    def __post_init__(self) -> None:
        if not self.name or not self.label or not self.recipe:
            raise ValueError(f"dataset spec {self.name!r}: name, label and recipe must not be empty")
        if self.layout not in LAYOUTS:
            raise ValueError(f"dataset {self.name!r}: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes must be at least 2, got {self.num_classes}")

    def names(self) -> tuple[str, ...]:
        """Its name and aliases, lower case: what a table matches a run's dataset against."""
        return tuple(name.lower() for name in (self.name, *self.aliases))


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the datasets a run, ``peft-bench data`` and the tables know. A name (or alias) that is
    already taken, or a stand-in for a dataset that is not registered, is an error."""
    taken = {name for known in _DATASETS.values() for name in known.names()}
    clash = sorted(set(spec.names()) & taken)
    if clash:
        raise ValueError(f"dataset {spec.name!r}: the name {clash[0]!r} is already registered")
    if spec.stands_in_for is not None and spec.stands_in_for not in _DATASETS:
        raise ValueError(f"dataset {spec.name!r} stands in for {spec.stands_in_for!r}, which is not registered")
    _DATASETS[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Forget a registered dataset (a plugin's, or a test's throwaway one)."""
    _DATASETS.pop(name, None)


def available_datasets() -> list[str]:
    """The registered datasets' names, in the order they were registered."""
    return list(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    if name not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(_DATASETS)}")
    return _DATASETS[name]


def find_dataset(name: object) -> DatasetSpec | None:
    """The dataset a tracked run's dataset name means (its name or an alias, any case); None if none."""
    wanted = str(name).lower()
    return next((spec for spec in _DATASETS.values() if wanted in spec.names()), None)


def paper_dataset(name: object) -> str | None:
    """The paper's column ("k400", "ssv2") that runs on dataset ``name`` are reported under; None for others."""
    spec = find_dataset(name)
    return spec.paper_column if spec is not None else None


def paper_datasets() -> list[DatasetSpec]:
    """The datasets the paper reports, in its column order (registration order)."""
    return [spec for spec in _DATASETS.values() if spec.paper_column is not None]


def embedded_datasets() -> list[str]:
    """The synthetic stand-ins of the paper's datasets, in the paper's column order: the embedded default."""
    return [spec.name for real in paper_datasets() for spec in _DATASETS.values() if spec.stands_in_for == real.name]


def recipe_file(name: str) -> Traversable:
    """The packaged recipe ``name`` (``peft_bench/data/recipes/<name>.yaml``), found without importing the
    recipe loader, which imports torch."""
    return files("peft_bench.data") / "recipes" / f"{name}.yaml"


# -- the benchmark's datasets ----------------------------------------------------------------------------------

# The released ST-Adapter code's optimisation (linziyi96/st-adapter at b914b38: scripts/train_*.sh and main.py:
# --blr 1e-3 per 256 clips at 64 clips x 3 GPUs (K400) or x 4 (SSv2), AdamW with weight decay 0.01, warm-up
# from lr 0, cosine to 0, no clipping, fp16 autocast with a gradient scaler over fp16 frozen weights). The data
# side is each dataset's recipe.
register_dataset(
    DatasetSpec(
        "k400",
        400,
        "kinetics",
        "k400",
        "Kinetics-400",
        method_preset="k400",
        training={"epochs": 12, "warmup_epochs": 2, "batch_size": 192, "lr": 7.5e-4, "precision": "fp16"},
        paper_column="k400",
        aliases=("kinetics400", "kinetics-400", "kinetics_400"),
    )
)
register_dataset(
    DatasetSpec(
        "ssv2",
        174,
        "ssv2",
        "ssv2",
        "Something-Something v2",
        method_preset="ssv2",
        training={"epochs": 50, "warmup_epochs": 2, "batch_size": 256, "lr": 1e-3, "precision": "fp16"},
        paper_column="ssv2",
        aliases=("something-something-v2", "sthsthv2", "sth-sth-v2"),
    )
)

# The stand-ins' cheap optimisation, for the embedded default.
# No loader worker: the runs of a command go side by side on the cores (run_all.py), and in the run's
# own process each video is decoded once for all the runs it takes part in (data/dataset.py, DECODED);
# eight runs of two epochs took 41-46 s of CPU against 57-60 s with one worker (two repeats each).
# Pre-trained weights that a method trains move 10x slower: at the new layers' rate they are wrecked.
# No head dropout on tiny's 96-wide features: at the paper's 0.5, temporal_ft lost 7.5 points of
# motion top-1 (34.4 against 41.9, seed 0) within the 12 epochs.
# The stand-ins keep the optimisation they were tuned with, not the released one: with warm-up from lr 0
# and no clipping, temporal_ft's motion top-1 fell from 41.9 to 36.9 (seed 0), below the 20-point margin
# over the order-blind methods that the embedded default exists to show.
_STAND_IN_TRAINING = {
    "batch_size": 16,
    "lr": 2e-3,
    "backbone_lr_scale": 0.1,
    "head_dropout": 0.0,
    "num_workers": 0,
    "warmup_from_zero": False,
    "grad_clip_norm": 1000.0,
}
# Methods trained from the frozen-feature cache by default: where it was measured to keep top-1
# (results/feature_cache.md, three seeds). The linear probe on both synthetic datasets and attentional
# pooling on appearance kept it within a point; attentional pooling on motion lost 5.6 points (12 epochs
# over one fixed draw of segments and crops), so it trains on clips there. `--set speed.feature_cache=false`
# turns it off.
register_dataset(
    DatasetSpec(
        # Appearance saturates (97-99% top-1 for every method after 4 epochs), so two epochs suffice.
        "synthetic-appearance",
        8,
        "kinetics",
        "synthetic-appearance",
        "synthetic appearance (K400 stand-in)",
        method_preset="k400",
        training=dict(epochs=2, warmup_epochs=0.5, **_STAND_IN_TRAINING),
        feature_cache_methods=("linear_probe", "attentional_pooling"),
        synthetic=True,
        stands_in_for="k400",
    )
)
register_dataset(
    DatasetSpec(
        "synthetic-motion",
        10,
        "ssv2",
        "synthetic-motion",
        "synthetic motion (SSv2 stand-in)",
        method_preset="ssv2",
        training=dict(epochs=12, warmup_epochs=1, **_STAND_IN_TRAINING),
        feature_cache_methods=("linear_probe",),
        synthetic=True,
        stands_in_for="ssv2",
    )
)
# Any video collection as list files: the K400 recipe, and no preset or training defaults of its own.
register_dataset(DatasetSpec("list", None, "list", "k400", "list files"))
