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
    select_classes,
)
from peft_bench.data.dataset import DataError, VideoClipDataset
from peft_bench.data.decode import VideoDecodeError, check_decoder, count_frames, read_frames
from peft_bench.data.recipes import load_recipe, with_settings
from peft_bench.data.synthetic import SSV2_VIDEO_FOLDER, default_cache_dir, ensure_synthetic
from peft_bench.data.transforms import Recipe, test_views, train_transform
from peft_bench.errors import UserError

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
    "prepare_dataset",
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
    decode_device: str = "cpu",
    max_failure_fraction: float = 0.05,
    classes: Sequence[str] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> VideoClipDataset:
    """The `split` ("train" or "val") of dataset `name`, ready for a DataLoader.

    Real datasets: `root` holds the videos and `annotations` the published annotation files (default: `root`,
    or where the release keeps them under it: K400's `annotations/`, SSv2's `labels/`). Synthetic datasets are generated once under `cache_dir` (default `$PEFT_BENCH_CACHE/data`, else
    ~/.cache/peft_bench/data) and read back like real ones; `root` is ignored for them. `num_frames` overrides
    the recipe's frame count and `recipe` changes its other fields (a run's `recipe` settings);
    `max_failure_fraction` bounds the undecodable and missing videos tolerated.
    A decoder that cannot run here (`decoder`, `decode_device`) stops it before any video is read.
    `classes` keeps only those classes (names as the annotations give them), e.g. Mini-Kinetics' 200 of K400.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {SPLITS}")
    spec = DATASETS[name]
    check_decoder(decoder, decode_device)
    chosen = with_settings(load_recipe(spec.recipe), recipe or {})
    if num_frames is not None:
        chosen = dataclasses.replace(chosen, num_frames=num_frames)
    read = _ANNOTATION_LOADERS[spec.layout]
    if spec.layout.startswith("synthetic-"):
        annotations_found = read(split, Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        root = _required_root(name, spec.layout, root)
        annotations_found = read(split, root, annotation_folder(spec.layout, root, annotations))
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
        keep_decoded=spec.layout.startswith("synthetic"),  # a few MB of tiny videos: decode each once
    )


_LAYOUT_HINTS = {
    "kinetics": "train.csv and validate.csv (or val.csv) with videos {youtube_id}_{start:06d}_{end:06d}.mp4 "
    "under the video root, flat or in per-label folders",
    "ssv2": "labels.json, train.json and validation.json, with videos {id}.webm under "
    f"root/{SSV2_VIDEO_FOLDER}/ or directly under root",
    "list": "train.txt and val.txt with lines 'relative/path label_index'",
}
# Each split's annotation file (the first that exists), per layout.
SPLIT_FILES = {
    "kinetics": {"train": ("train.csv",), "val": ("validate.csv", "val.csv")},
    "ssv2": {"train": ("train.json",), "val": ("validation.json",)},
    "list": {"train": ("train.txt", "trainlist.txt"), "val": ("val.txt", "vallist.txt", "test.txt")},
}
CLASS_FILES = {"ssv2": "labels.json"}  # Kinetics' classes are the training file's labels; list files' are indices
# Where the published releases keep their annotation files beside the videos: the Kinetics-400 release
# (CVDF) in annotations/ next to train/ val/ test/, Something-Something v2 in labels/.
PUBLISHED_ANNOTATION_FOLDERS = {"kinetics": "annotations", "ssv2": "labels"}


@dataclass(frozen=True)
class SplitFiles:
    """The annotation files one split is read from."""

    split_file: Path
    class_file: Path | None = None  # SSv2's labels.json; Kinetics' train.csv when reading val

    @property
    def paths(self) -> list[Path]:
        return [path for path in (self.class_file, self.split_file) if path is not None]


def annotation_folder(layout: str, root: Path, annotations: Path | None = None) -> Path:
    """`annotations` when given; else `root` or the layout's published folder under it (K400's annotations/,
    SSv2's labels/), whichever holds the layout's annotation files. Neither: one error naming both."""
    if annotations is not None:
        return Path(annotations).expanduser()
    places = [root] + ([root / PUBLISHED_ANNOTATION_FOLDERS[layout]] if layout in PUBLISHED_ANNOTATION_FOLDERS else [])
    names = [name for names in SPLIT_FILES[layout].values() for name in names] + (
        [CLASS_FILES[layout]] if layout in CLASS_FILES else [])
    for place in places:
        if any((place / name).is_file() for name in names):
            return place
    raise FileNotFoundError(
        f"no annotation files ({', '.join(names)}) in {' or '.join(str(place) for place in places)}; give "
        f"their folder with --annotations. Expected layout: {_LAYOUT_HINTS[layout]}"
    )


def split_files(layout: str, split: str, folder: Path) -> SplitFiles:
    """The files `split` of a `layout` dataset is read from in `folder` (a missing one: FileNotFoundError)."""
    split_file = _first_existing(folder, SPLIT_FILES[layout][split], layout)
    if layout in CLASS_FILES:
        return SplitFiles(split_file, _first_existing(folder, [CLASS_FILES[layout]], layout))
    train_csv = folder / SPLIT_FILES["kinetics"]["train"][0]
    if layout == "kinetics" and split == "val" and train_csv.is_file():
        return SplitFiles(split_file, train_csv)  # class indices must agree with training
    return SplitFiles(split_file)


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


def _ssv2_video_root(root: Path) -> Path:
    return root / SSV2_VIDEO_FOLDER if (root / SSV2_VIDEO_FOLDER).is_dir() else root


def _kinetics_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    files = split_files("kinetics", split, annotation_folder)
    class_names = read_kinetics_class_names(files.class_file) if files.class_file else None
    return read_kinetics(files.split_file, _split_video_root(root, split), class_names)


def _ssv2_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    files = split_files("ssv2", split, annotation_folder)
    return read_ssv2(files.class_file, files.split_file, _ssv2_video_root(root))


def _list_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    if annotation_folder.is_file():  # a single list file given directly
        return read_list_file(annotation_folder, root)
    split_file = split_files("list", split, annotation_folder).split_file
    if split == "train":
        return read_list_file(split_file, root)
    train_file = next((annotation_folder / n for n in SPLIT_FILES["list"]["train"] if (annotation_folder / n).is_file()),
                      None)
    if train_file is None:  # no training list beside it: its own labels define the classes
        return read_list_file(split_file, root)
    # Class indices must agree with training: a label the training list never reaches is an error.
    return read_list_file(split_file, root, read_list_file(train_file, root).num_classes, str(train_file))


# The synthetic datasets are fixed: training seeds vary the run, not the data (and the cache is shared).
SYNTHETIC_DATA_SEED = 0


def _synthetic_reader(name: str, layout_reader):
    def read(split: str, cache_dir: Path) -> Annotations:
        folder = ensure_synthetic(name, cache_dir, seed=SYNTHETIC_DATA_SEED)
        return layout_reader(split, folder, folder)

    return read


def prepare_dataset(name: str, cache_dir: Path | None = None) -> None:
    """Generate a synthetic dataset now, with every core, so that runs started together find it made (two
    runs generating it at once would each do all the work); real datasets need nothing."""
    spec = DATASETS.get(name)
    if spec is not None and spec.layout.startswith("synthetic-"):
        ensure_synthetic(name, Path(cache_dir) if cache_dir else default_cache_dir(), seed=SYNTHETIC_DATA_SEED)


_ANNOTATION_LOADERS = {
    "kinetics": _kinetics_annotations,
    "ssv2": _ssv2_annotations,
    "list": _list_annotations,
    "synthetic-motion": _synthetic_reader("synthetic-motion", _ssv2_annotations),
    "synthetic-appearance": _synthetic_reader("synthetic-appearance", _kinetics_annotations),
}
