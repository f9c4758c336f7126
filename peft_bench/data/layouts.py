"""The annotation layouts a dataset's files may have, and one reader per layout.

* ``kinetics``: ``train.csv`` and ``validate.csv`` (or ``val.csv``) as the Kinetics-400 release (CVDF) has them,
  in ``annotations/`` beside the videos or given with ``--annotations``;
* ``ssv2``: Something-Something v2's ``labels.json``, ``train.json`` and ``validation.json`` (release: ``labels/``);
* ``list``: list files of ``relative/path label_index`` lines.

A reader takes (split, video root, annotation folder) and gives the split's ``Annotations``; a dataset's spec
names its layout (``specs.py``), and a synthetic dataset is written in the layout of the real one it stands in
for, so it is read by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from peft_bench.data.annotations import (
    Annotations,
    read_kinetics,
    read_kinetics_class_names,
    read_list_file,
    read_ssv2,
)
from peft_bench.data.specs import Layout
from peft_bench.data.synthetic import SSV2_VIDEO_FOLDER

SPLITS = ("train", "val")

LAYOUT_HINTS: dict[Layout, str] = {
    "kinetics": "train.csv and validate.csv (or val.csv) with videos {youtube_id}_{start:06d}_{end:06d}.mp4 "
    "under the video root, flat or in per-label folders",
    "ssv2": "labels.json, train.json and validation.json, with videos {id}.webm under "
    f"root/{SSV2_VIDEO_FOLDER}/ or directly under root",
    "list": "train.txt and val.txt with lines 'relative/path label_index'",
}
# Each split's annotation file (the first that exists), per layout.
SPLIT_FILES: dict[Layout, dict[str, tuple[str, ...]]] = {
    "kinetics": {"train": ("train.csv",), "val": ("validate.csv", "val.csv")},
    "ssv2": {"train": ("train.json",), "val": ("validation.json",)},
    "list": {"train": ("train.txt", "trainlist.txt"), "val": ("val.txt", "vallist.txt", "test.txt")},
}
CLASS_FILES: dict[Layout, str] = {
    "ssv2": "labels.json"
}  # Kinetics' classes are the training file's labels; list files' are indices
# Where the published releases keep their annotation files beside the videos: the Kinetics-400 release
# (CVDF) in annotations/ next to train/ val/ test/, Something-Something v2 in labels/.
PUBLISHED_ANNOTATION_FOLDERS: dict[Layout, str] = {"kinetics": "annotations", "ssv2": "labels"}


@dataclass(frozen=True)
class SplitFiles:
    """The annotation files one split is read from."""

    split_file: Path
    class_file: Path | None = None  # SSv2's labels.json; Kinetics' train.csv when reading val

    @property
    def paths(self) -> list[Path]:
        return [path for path in (self.class_file, self.split_file) if path is not None]


def annotation_folder(layout: Layout, root: Path, annotations: Path | None = None) -> Path:
    """`annotations` when given; else `root` or the layout's published folder under it (K400's annotations/,
    SSv2's labels/), whichever holds the layout's annotation files. Neither: one error naming both."""
    if annotations is not None:
        return Path(annotations).expanduser()
    places = [root] + ([root / PUBLISHED_ANNOTATION_FOLDERS[layout]] if layout in PUBLISHED_ANNOTATION_FOLDERS else [])
    names = [name for names in SPLIT_FILES[layout].values() for name in names] + (
        [CLASS_FILES[layout]] if layout in CLASS_FILES else []
    )
    for place in places:
        if any((place / name).is_file() for name in names):
            return place
    raise FileNotFoundError(
        f"no annotation files ({', '.join(names)}) in {' or '.join(str(place) for place in places)}; give "
        f"their folder with --annotations. Expected layout: {LAYOUT_HINTS[layout]}"
    )


def split_files(layout: Layout, split: str, folder: Path) -> SplitFiles:
    """The files `split` of a `layout` dataset is read from in `folder` (a missing one: FileNotFoundError)."""
    split_file = _first_existing(folder, SPLIT_FILES[layout][split], layout)
    if layout in CLASS_FILES:
        return SplitFiles(split_file, _first_existing(folder, [CLASS_FILES[layout]], layout))
    train_csv = folder / SPLIT_FILES["kinetics"]["train"][0]
    if layout == "kinetics" and split == "val" and train_csv.is_file():
        return SplitFiles(split_file, train_csv)  # class indices must agree with training
    return SplitFiles(split_file)


def required_root(name: str, layout: Layout, root: Path | None) -> Path:
    if root is None:
        raise FileNotFoundError(f"dataset {name!r} needs a root folder; expected layout: {LAYOUT_HINTS[layout]}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} of dataset {name!r} does not exist")
    return root


def _first_existing(folder: Path, names: Sequence[str], layout: Layout) -> Path:
    for file_name in names:
        if (folder / file_name).is_file():
            return folder / file_name
    raise FileNotFoundError(
        f"annotation file {folder / names[0]} not found"
        + (f" (also tried {', '.join(names[1:])})" if len(names) > 1 else "")
        + f"; expected layout: {LAYOUT_HINTS[layout]}"
    )


def split_video_root(root: Path, split: str) -> Path:
    """Many Kinetics copies keep each split in its own folder (train/, val/ or validate/); else use root."""
    for folder in ("train",) if split == "train" else ("val", "validate", "validation"):
        if (root / folder).is_dir():
            return root / folder
    return root


def ssv2_video_root(root: Path) -> Path:
    return root / SSV2_VIDEO_FOLDER if (root / SSV2_VIDEO_FOLDER).is_dir() else root


def kinetics_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    files = split_files("kinetics", split, annotation_folder)
    class_names = read_kinetics_class_names(files.class_file) if files.class_file else None
    return read_kinetics(files.split_file, split_video_root(root, split), class_names)


def ssv2_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    files = split_files("ssv2", split, annotation_folder)
    assert files.class_file is not None  # SSv2 has a class file (CLASS_FILES): split_files found it or raised
    return read_ssv2(files.class_file, files.split_file, ssv2_video_root(root))


def list_annotations(split: str, root: Path, annotation_folder: Path) -> Annotations:
    if annotation_folder.is_file():  # a single list file given directly
        return read_list_file(annotation_folder, root)
    split_file = split_files("list", split, annotation_folder).split_file
    if split == "train":
        return read_list_file(split_file, root)
    train_file = next(
        (annotation_folder / n for n in SPLIT_FILES["list"]["train"] if (annotation_folder / n).is_file()), None
    )
    if train_file is None:  # no training list beside it: its own labels define the classes
        return read_list_file(split_file, root)
    # Class indices must agree with training: a label the training list never reaches is an error.
    return read_list_file(split_file, root, read_list_file(train_file, root).num_classes, str(train_file))


# Each layout's reader: (split, video root, annotation folder) -> the split's annotations.
READERS: dict[str, Callable[[str, Path, Path], Annotations]] = {
    "kinetics": kinetics_annotations,
    "ssv2": ssv2_annotations,
    "list": list_annotations,
}
