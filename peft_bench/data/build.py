"""A dataset's split ready for a DataLoader: `build_dataset`, which wires a dataset's spec (specs.py), its
annotation layout (layouts.py), its recipe (recipes/) and a decoder together; and `prepare_dataset`, which
makes a synthetic dataset before the runs that share it start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_bench.data.annotations import Annotations, select_classes
from peft_bench.data.dataset import DataError, VideoClipDataset
from peft_bench.data.decode import check_decoder
from peft_bench.data.layouts import READERS, SPLITS, annotation_folder, required_root
from peft_bench.data.recipes import load_recipe, with_settings
from peft_bench.data.specs import DatasetSpec, available_datasets, get_dataset
from peft_bench.data.synthetic import default_cache_dir, ensure_synthetic
from peft_bench.errors import UserError

# The synthetic datasets are fixed: training seeds vary the run, not the data (and the cache is shared).
SYNTHETIC_DATA_SEED = 0


def build_dataset(
    name: str,
    split: str,
    *,
    root: Path | None,
    annotations: Path | None = None,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_frames: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    decoder: str = "auto",
    decode_device: str = "cpu",
    max_failure_fraction: float = 0.05,
    classes: Sequence[str] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> VideoClipDataset:
    """The `split` ("train" or "val") of dataset `name`, ready for a DataLoader.

    Real datasets: `root` holds the videos and `annotations` the published annotation files (default: `root`,
    or where the release keeps them under it: K400's `annotations/`, SSv2's `labels/`). Synthetic datasets are
    generated once under `cache_dir` (default `$PEFT_BENCH_CACHE/data`, else ~/.cache/peft_bench/data) and read
    back like real ones; `root` is ignored for them. `num_frames` overrides
    the recipe's frame count and `recipe` changes its other fields (a run's `recipe` settings);
    `max_failure_fraction` bounds the undecodable and missing videos tolerated.
    A decoder that cannot run here (`decoder`, `decode_device`) stops it before any video is read.
    `classes` keeps only those classes (names as the annotations give them), e.g. Mini-Kinetics' 200 of K400.
    """
    spec = get_dataset(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {SPLITS}")
    check_decoder(decoder, decode_device)
    chosen = with_settings(load_recipe(spec.recipe), recipe or {})
    if num_frames is not None:
        chosen = dataclasses.replace(chosen, num_frames=num_frames)
    annotations_found = read_annotations(spec, split, root, annotations, cache_dir)
    if classes is not None:
        annotations_found = select_classes(annotations_found, list(classes), f"the {split} annotations of {name}")
    elif spec.num_classes is not None and annotations_found.num_classes != spec.num_classes:
        raise DataError(
            f"{name} should have {spec.num_classes} classes, but its {split} annotations give "
            f"{annotations_found.num_classes}; to train on a subset of its classes (Mini-Kinetics style), "
            "name them: --set dataset.classes=FILE (one class per line) or --set 'dataset.classes=[a, b]'"
        )
    return VideoClipDataset(
        annotations_found,
        chosen,
        train=split == "train",
        input_size=input_size,
        mean=mean,
        std=std,
        seed=seed,
        max_failure_fraction=max_failure_fraction,
        decoder=decoder,
        decode_device=decode_device,
        keep_decoded=spec.synthetic,  # a few MB of tiny videos: decode each once
    )


def read_annotations(
    spec: DatasetSpec, split: str, root: Path | None, annotations: Path | None, cache_dir: Path | None
) -> Annotations:
    """The annotations of `split`: a synthetic dataset's from its folder under the cache (made if missing),
    a real one's from `annotations` (or the published place under `root`) with its videos under `root`."""
    read = READERS[spec.layout]
    if spec.synthetic:
        folder = ensure_synthetic(
            spec.name, Path(cache_dir) if cache_dir else default_cache_dir(), seed=SYNTHETIC_DATA_SEED
        )
        return read(split, folder, folder)
    root = required_root(spec.name, spec.layout, root)
    return read(split, root, annotation_folder(spec.layout, root, annotations))


def prepare_dataset(name: str, cache_dir: Path | None = None) -> None:
    """Generate a synthetic dataset now, with every core, so that runs started together find it made (two
    runs generating it at once would each do all the work); real datasets need nothing."""
    if name in available_datasets() and get_dataset(name).synthetic:
        ensure_synthetic(name, Path(cache_dir) if cache_dir else default_cache_dir(), seed=SYNTHETIC_DATA_SEED)
