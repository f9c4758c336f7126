"""What a dataset is, in one place: every registered DatasetSpec is complete, and every place that needs a
dataset (config resolution, the recipe loader, the dataset builder, `peft-bench data`, the accounting, the
tables) reads it from the registry, so that a dataset registered once is known everywhere. And one config
digest: the run's digest, the tracker's tag and the table's recipe hash are the same function."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import fields

import pandas as pd
import pytest

from peft_bench.config import TrainConfig, config_digest, resolve_config
from peft_bench.data.build import build_dataset
from peft_bench.data.dataset import DataError
from peft_bench.data.layouts import READERS
from peft_bench.data.recipes import load_recipe
from peft_bench.data.specs import (
    DatasetSpec,
    available_datasets,
    embedded_datasets,
    find_dataset,
    get_dataset,
    register_dataset,
    unregister_dataset,
)
from peft_bench.dataclass_io import to_dict
from peft_bench.measure.accounting import dataset_setting
from peft_bench.method_api.registry import get_method
from peft_bench.reference import SYSTEM_TABLE_FILES
from peft_bench.report.gather import recipe_hash
from peft_bench.report.paper import (
    authors_column,
    on_dataset_of,
    paper_column,
    recipe_test_views,
)
from peft_bench.track.tracking import config_hash

TRAIN_FIELDS = {field.name for field in fields(TrainConfig)}


@pytest.mark.parametrize("name", available_datasets())
def test_every_registered_dataset_is_complete(name: str) -> None:
    spec = get_dataset(name)
    assert spec.layout in READERS  # a reader for its annotation files
    assert load_recipe(spec.recipe).sampling in ("dense", "segment")  # its recipe is packaged and valid
    assert set(spec.training) <= TRAIN_FIELDS, set(spec.training) - TRAIN_FIELDS
    assert spec.label
    if spec.synthetic:
        real = get_dataset(spec.stands_in_for)  # a stand-in names what it stands in for, and copies it
        assert (spec.layout, spec.method_preset) == (real.layout, real.method_preset)
        assert spec.num_classes is not None
    if spec.paper_column is not None:
        assert spec.paper_column in SYSTEM_TABLE_FILES  # the paper's system table for it is packaged
    for method in spec.feature_cache_methods:
        get_method(method)  # a typo here would turn the cache on for no method


def test_the_embedded_default_is_the_stand_ins_in_the_papers_column_order() -> None:
    assert embedded_datasets() == ["synthetic-appearance", "synthetic-motion"]
    assert [get_dataset(name).stands_in_for for name in embedded_datasets()] == ["k400", "ssv2"]


def test_a_name_or_alias_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetSpec("kinetics400", 400, "kinetics", "k400", "again"))
    with pytest.raises(ValueError, match="unknown layout"):
        DatasetSpec("x", 3, "hdf5", "k400", "x")
    with pytest.raises(ValueError, match="not registered"):
        register_dataset(DatasetSpec("fake-motion", 3, "ssv2", "ssv2", "x", synthetic=True, stands_in_for="nope"))
    assert "fake-motion" not in available_datasets()


@pytest.fixture
def ucf() -> DatasetSpec:
    """A dataset registered once, for one test: list files, the K400 recipe and preset, its own training."""
    spec = register_dataset(
        DatasetSpec(
            "ucf-test",
            3,
            "list",
            "k400",
            "UCF (test)",
            method_preset="k400",
            training={"epochs": 3, "warmup_epochs": 1, "batch_size": 4, "lr": 1e-3},
            feature_cache_methods=("linear_probe",),
            paper_column="k400",
            aliases=("UCF_Test_Alias",),
        )
    )
    yield spec
    unregister_dataset(spec.name)


def test_a_registered_dataset_is_accepted_by_the_config(ucf: DatasetSpec) -> None:
    cfg = resolve_config({"dataset": ucf.name, "method": "linear_probe"})
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (3, 4, 1e-3)  # its training defaults
    assert cfg.speed.feature_cache  # its feature-cache default
    k400 = load_recipe("k400")
    assert (cfg.recipe["sampling"], cfg.recipe["stride"]) == (k400.sampling, k400.stride)  # its recipe
    st_adapter = resolve_config({"dataset": ucf.name, "method": "st_adapter"})
    assert st_adapter.preset == "k400" and not st_adapter.speed.feature_cache  # its method preset
    assert dataset_setting(ucf.name) == (3, "k400")  # peft-bench account --dataset


def test_a_registered_dataset_is_read_by_its_layout(ucf: DatasetSpec, tmp_path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")  # a list file, as its layout says: 2 classes
    with pytest.raises(DataError, match="ucf-test should have 3 classes, but its train annotations give 2"):
        build_dataset(ucf.name, "train", root=tmp_path, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_registered_dataset_gets_its_labels_in_the_tables(ucf: DatasetSpec) -> None:
    assert find_dataset("ucf_test_alias") is ucf  # a store's spelling, any case
    assert paper_column("clip_vitb16", "UCF_Test_Alias") == "clip_k400"
    assert authors_column("clip_vitb16", "ucf-test") == "k400_top1"
    k400 = load_recipe("k400")
    assert recipe_test_views("ucf-test") == (k400.test_crops, k400.test_clips)  # its recipe's crops x clips
    runs = pd.DataFrame({"dataset": ["ucf-test", "ssv2", "synthetic-appearance"]})
    assert on_dataset_of(runs, "k400").tolist() == [True, False, False]


def test_the_paper_columns_of_the_benchmark_datasets() -> None:
    assert paper_column("in21k_vitb16", "Kinetics-400") == "in21k_k400"
    assert paper_column("clip_vitb16", "sth-sth-v2") == "clip_ssv2"
    assert paper_column("tiny", "synthetic-motion") is None and paper_column("clip_vitb16", "list") is None


# -- one config digest -----------------------------------------------------------------------------------------


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def test_the_run_digest_the_tracker_tag_and_the_recipe_hash_are_one_function() -> None:
    config = {"method": "st_adapter", "train": {"lr": 0.001, "epochs": 12}, "seed": 0}
    # The two spellings finished runs carry: the run's digest with JSON's default separators, the tag compact.
    assert config_digest(config) == sha12(json.dumps(config, sort_keys=True))
    assert (
        config_hash(config)
        == config_digest(config, compact=True)
        == sha12(json.dumps(config, sort_keys=True, separators=(",", ":")))
    )
    params = pd.Series(
        {"method": "st_adapter", "train.lr": "0.001", "seed": "0", "output_dir": "runs", "version.torch": "2.5"}
    )
    assert recipe_hash(params) == config_digest({"method": "st_adapter", "train.lr": "0.001"})
    cfg = resolve_config({})
    assert cfg.digest() == sha12(json.dumps(_digested(cfg), sort_keys=True))


def _digested(cfg) -> dict:
    """What RunConfig.digest hashes (all speed settings at their defaults, all classes), from its rules."""
    data = to_dict(cfg)
    for key in ("experiment", "tracking_uri", "results_dir", "output_dir", "device", "data", "speed"):
        data.pop(key)
    data.pop("classes")
    data["train"].pop("num_workers")
    data["train"].pop("checkpoint_every")
    return data


def test_the_registry_and_the_tables_name_datasets_without_importing_torch() -> None:
    script = (
        "import sys, peft_bench.data.specs, peft_bench.report.table, peft_bench.config; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
