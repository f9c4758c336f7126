"""Video datasets of the benchmark behind one entry point, `build_dataset`.

Real datasets (Kinetics-400, Something-Something v2, list files) and the embedded synthetic ones go through
the same annotation readers, decoders and augmentation recipes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from peft_bench.data.annotations import (
    AnnotationError,
    Annotations,
    VideoSample,
    read_kinetics,
    read_kinetics_class_names,
    read_list_file,
    read_ssv2,
)
from peft_bench.data.dataset import DataError, VideoClipDataset
from peft_bench.data.decode import VideoDecodeError, count_frames, read_frames
from peft_bench.data.recipes import load_recipe, with_settings
from peft_bench.data.synthetic import SSV2_VIDEO_FOLDER, default_cache_dir, ensure_synthetic
from peft_bench.data.transforms import Recipe, test_views, train_transform

__all__ = [
    "DATASETS",
    "AnnotationError",
    "Annotations",
    "DataError",
    "DatasetSpec",
    "Recipe",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoSample",
    "build_dataset",
    "count_frames",
    "load_recipe",
    "read_frames",
    "test_views",
    "train_transform",
]

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int | None  # None: taken from the annotations (generic list files)
    recipe: str  # name of a recipe in benchmarks/recipes
    layout: str  # "kinetics", "ssv2", "list", "synthetic-motion" or "synthetic-appearance"


DATASETS: dict[str, DatasetSpec] = {
    "k400": DatasetSpec("k400", 400, "k400", "kinetics"),
    "ssv2": DatasetSpec("ssv2", 174, "ssv2", "ssv2"),
    "synthetic-motion": DatasetSpec("synthetic-motion", 10, "synthetic-motion", "synthetic-motion"),
    "synthetic-appearance": DatasetSpec("synthetic-appearance", 8, "synthetic-appearance", "synthetic-appearance"),
    "list": DatasetSpec("list", None, "k400", "list"),
}


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
    max_failure_fraction: float = 0.05,
    recipe: Mapping[str, Any] | None = None,
) -> VideoClipDataset:
    """The `split` ("train" or "val") of dataset `name`, ready for a DataLoader.

    Real datasets: `root` holds the videos and `annotations` (default: `root`) the published annotation
    files. Synthetic datasets are generated once under `cache_dir` (default `$PEFT_BENCH_CACHE/data`, else
    ~/.cache/peft_bench/data) and read back like real ones; `root` is ignored for them. `num_frames` overrides
    the recipe's frame count and `recipe` changes its other fields (a run's `recipe` settings);
    `max_failure_fraction` bounds the undecodable and missing videos tolerated.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    spec = DATASETS[name]
    chosen = with_settings(load_recipe(spec.recipe), recipe or {})
    if num_frames is not None:
        chosen = dataclasses.replace(chosen, num_frames=num_frames)
    read = _ANNOTATION_LOADERS[spec.layout]
    if spec.layout.startswith("synthetic-"):
        annotations_found = read(split, Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        annotations_found = read(split, _required_root(name, spec.layout, root), Path(annotations or root))
    if spec.num_classes is not None and annotations_found.num_classes != spec.num_classes:
        raise DataError(
            f"{name} should have {spec.num_classes} classes, but its {split} annotations give "
            f"{annotations_found.num_classes}"
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
        keep_decoded=spec.layout.startswith("synthetic"),  # a few MB of tiny videos: decode each once
    )


_LAYOUT_HINTS = {
    "kinetics": "train.csv and validate.csv (or val.csv) with videos {youtube_id}_{start:06d}_{end:06d}.mp4 "
    "under the video root, flat or in per-label folders",
    "ssv2": "labels.json, train.json and validation.json, with videos {id}.webm under "
    f"root/{SSV2_VIDEO_FOLDER}/ or directly under root",
    "list": "train.txt and val.txt with lines 'relative/path label_index'",
}


def _required_root(name: str, layout: str, root: Path | None) -> Path:
    if root is None:
        raise FileNotFoundError(f"dataset {name!r} needs a root folder; expected layout: {_LAYOUT_HINTS[layout]}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} of dataset {name!r} does not exist")
    return root


def _first_existing(folder: Path, names: Sequence[str], layout: str) -> Path:
    for file_name in names:
        if (folder / file_name).is_file():
            return folder / file_name
    raise FileNotFoundError(
        f"annotation file {folder / names[0]} not found"
        + (f" (also tried {', '.join(names[1:])})" if len(names) > 1 else "")
        + f"; expected layout: {_LAYOUT_HINTS[layout]}"
    )


def _split_video_root(root: Path, split: str) -> Path:
    """Many Kinetics copies keep each split in its own folder (train/, val/ or validate/); else use root."""
    for folder in ("train",) if split == "train" else ("val", "validate", "validation"):
        if (root / folder).is_dir():
            return root / folder
    return root


def _kinetics_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    names = ["train.csv"] if split == "train" else ["validate.csv", "val.csv"]
    csv_path = _first_existing(annotation_folder, names, "kinetics")
    class_names = None
    if split == "val":
        # Class indices must agree with training: take them from the training file when it is there.
        train_csv = annotation_folder / "train.csv"
        if train_csv.is_file():
            class_names = read_kinetics_class_names(train_csv)
    return read_kinetics(csv_path, _split_video_root(root, split), class_names)


def _ssv2_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    labels = _first_existing(annotation_folder, ["labels.json"], "ssv2")
    split_file = _first_existing(annotation_folder, ["train.json" if split == "train" else "validation.json"], "ssv2")
    video_root = root / SSV2_VIDEO_FOLDER if (root / SSV2_VIDEO_FOLDER).is_dir() else root
    return read_ssv2(labels, split_file, video_root)


def _list_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    if annotation_folder.is_file():  # a single list file given directly
        return read_list_file(annotation_folder, root)
    names = ["train.txt", "trainlist.txt"] if split == "train" else ["val.txt", "vallist.txt", "test.txt"]
    return read_list_file(_first_existing(annotation_folder, names, "list"), root)


# The synthetic datasets are fixed: training seeds vary the run, not the data (and the cache is shared).
SYNTHETIC_DATA_SEED = 0


def _synthetic_reader(name: str, layout_reader):
    def read(split: str, cache_dir: Path) -> Annotations:
        folder = ensure_synthetic(name, cache_dir, seed=SYNTHETIC_DATA_SEED)
        return layout_reader(split, folder, folder)

    return read


_ANNOTATION_LOADERS = {
    "kinetics": _kinetics_annotations,
    "ssv2": _ssv2_annotations,
    "list": _list_annotations,
    "synthetic-motion": _synthetic_reader("synthetic-motion", _ssv2_annotations),
    "synthetic-appearance": _synthetic_reader("synthetic-appearance", _kinetics_annotations),
}
