"""Readers for the published annotation layouts (Kinetics CSV, Something-Something v2 JSON, plain lists).

Where the annotations live and where the videos live are two separate arguments. Missing video files are
not an error here: the dataset counts them when it is built.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from peft_bench.errors import UserError

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


class AnnotationError(UserError):
    """A malformed annotation file or an unknown label; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line


@dataclass
class VideoSample:
    path: Path
    label: int


@dataclass
class Annotations:
    samples: list[VideoSample]
    class_names: list[str]
    source_num_classes: int | None = None  # set by select_classes: how many classes the files define

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def select_classes(annotations: Annotations, classes: list[str], where: str) -> Annotations:
    """Only the samples of ``classes`` (a subset of the annotations' classes, Mini-Kinetics style), labelled
    by their place in ``classes``. ``where`` names the annotations in the error for a class they lack."""
    index_of = {name: index for index, name in enumerate(annotations.class_names)}
    unknown = [name for name in classes if name not in index_of]
    if unknown:
        shown = ", ".join(repr(name) for name in annotations.class_names[:5])
        raise AnnotationError(
            where,
            None,
            f"dataset.classes names {unknown[0]!r}, not one of its {annotations.num_classes} classes ({shown}, ...)",
        )
    new_label = {index_of[name]: label for label, name in enumerate(classes)}
    samples = [VideoSample(s.path, new_label[s.label]) for s in annotations.samples if s.label in new_label]
    return Annotations(samples, list(classes), annotations.num_classes)


class DirectoryListing:
    """Answers "does this file exist?" from one listing per folder (fast on network file systems)."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = path.parent
        if folder not in self._names:
            try:
                self._names[folder] = frozenset(os.listdir(folder))
            except OSError:  # missing or unreadable folder
                self._names[folder] = frozenset()
        return path.name in self._names[folder]


# --------------------------------------------------------------------------------------------- Kinetics


def kinetics_file_name(youtube_id: str, time_start: int, time_end: int) -> str:
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"


def read_kinetics(csv_path: str | Path, video_root: str | Path, class_names: list[str] | None = None) -> Annotations:
    """Kinetics CSV (`label,youtube_id,time_start,time_end,split`), videos flat or in per-label folders.

    Class names default to the sorted unique labels of this file; pass the training classes when reading a
    validation file so that indices agree.
    """
    csv_path, video_root = Path(csv_path), Path(video_root)
    rows = list(_kinetics_rows(csv_path))
    if class_names is None:
        class_names = sorted({label for _, label, _ in rows})
    index_of = {name: index for index, name in enumerate(class_names)}
    listing = DirectoryListing()
    samples = []
    for line, label, file_name in rows:
        if label not in index_of:
            raise AnnotationError(csv_path, line, f"unknown label {label!r} (not among the {len(class_names)} classes)")
        samples.append(VideoSample(_kinetics_video_path(video_root, label, file_name, listing), index_of[label]))
    return Annotations(samples, list(class_names))


def read_kinetics_class_names(csv_path: str | Path) -> list[str]:
    """The sorted unique labels of a Kinetics CSV (the class list a training file defines)."""
    return sorted({label for _, label, _ in _kinetics_rows(Path(csv_path))})


def _kinetics_rows(csv_path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, label, video file name) per row."""
    with _open_text(csv_path) as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise AnnotationError(csv_path, 1, f"malformed CSV ({error})") from error
        if header is None:
            raise AnnotationError(csv_path, 1, "empty file, expected a header " + ",".join(KINETICS_COLUMNS))
        header = [name.strip() for name in header]
        missing = [name for name in KINETICS_COLUMNS if name not in header]
        if missing:
            raise AnnotationError(
                csv_path, 1, f"header lacks {missing}; expected label,youtube_id,time_start,time_end,split"
            )
        column = {name: header.index(name) for name in KINETICS_COLUMNS}
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as error:
                raise AnnotationError(csv_path, reader.line_num, f"malformed CSV ({error})") from error
            if not row or all(not cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise AnnotationError(csv_path, line, f"expected {len(header)} fields, found {len(row)}")
            label = row[column["label"]].strip()
            youtube_id = row[column["youtube_id"]].strip()
            if not label or not youtube_id:
                raise AnnotationError(csv_path, line, "empty label or youtube_id")
            start = _whole_seconds(csv_path, line, "time_start", row[column["time_start"]])
            end = _whole_seconds(csv_path, line, "time_end", row[column["time_end"]])
            yield line, label, kinetics_file_name(youtube_id, start, end)


def _whole_seconds(path: Path, line: int, name: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(path, line, f"{name} is not a number: {text!r}") from None
    if value < 0 or value != int(value):
        raise AnnotationError(path, line, f"{name} must be a whole, non-negative number of seconds: {text!r}")
    return int(value)


def _kinetics_video_path(video_root: Path, label: str, file_name: str, listing: DirectoryListing) -> Path:
    """First existing of: flat, `{label}/`, `{label with underscores}/`; the flat path if none exists."""
    candidates = [
        video_root / file_name,
        video_root / label / file_name,
        video_root / label.replace(" ", "_") / file_name,
    ]
    for candidate in candidates:
        if listing.exists(candidate):
            return candidate
    return candidates[0]


# ------------------------------------------------------------------------------------------------- SSv2


def ssv2_label_of_template(template: str) -> str:
    """The official convention: the label is the template with the brackets removed."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(labels_json: str | Path, split_json: str | Path, video_root: str | Path) -> Annotations:
    """SSv2: `labels.json` maps label -> index string; the split file lists {id, label, template, placeholders}."""
    labels_json, split_json, video_root = Path(labels_json), Path(split_json), Path(video_root)
    class_names = _ssv2_class_names(labels_json)
    index_of = {name: index for index, name in enumerate(class_names)}
    samples = []
    for line, entry in _json_array_entries(split_json):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise AnnotationError(split_json, line, "each entry needs at least 'id' and 'template'")
        label = ssv2_label_of_template(str(entry["template"]))
        if label not in index_of:
            raise AnnotationError(split_json, line, f"unknown label {label!r} (not in {labels_json.name})")
        samples.append(VideoSample(video_root / f"{entry['id']}.webm", index_of[label]))
    return Annotations(samples, class_names)


def _ssv2_class_names(labels_json: Path) -> list[str]:
    mapping = _load_json(labels_json)
    if not isinstance(mapping, dict):
        raise AnnotationError(labels_json, 1, "expected an object mapping label -> index")
    by_index: dict[int, str] = {}
    for name, index_text in mapping.items():
        try:
            index = int(index_text)
        except (TypeError, ValueError):
            line = _line_of_key(labels_json, name)
            raise AnnotationError(labels_json, line, f"index of {name!r} is not an integer: {index_text!r}") from None
        if index in by_index:
            raise AnnotationError(labels_json, _line_of_key(labels_json, name), f"index {index} used twice")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise AnnotationError(labels_json, None, f"label indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[index] for index in range(len(by_index))]


def _line_of_key(path: Path, key: str) -> int | None:
    needle = json.dumps(key)
    for number, text in enumerate(_read_text(path).splitlines(), start=1):
        if needle in text:
            return number
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise AnnotationError(path, None, f"not UTF-8 text ({error})") from error


def _load_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise AnnotationError(path, error.lineno, f"malformed JSON ({error.msg}, column {error.colno})") from error


def _json_array_entries(path: Path) -> Iterator[tuple[int, object]]:
    """(line number where the entry starts, entry) for each element of a top-level JSON array."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    position = _skip_whitespace(text, 0)
    line, counted_to = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    def fail(offset: int, problem: str) -> AnnotationError:
        return AnnotationError(path, line_at(offset), problem)

    if position >= len(text) or text[position] != "[":
        raise fail(position, "malformed JSON (expected a list of entries)")
    position = _skip_whitespace(text, position + 1)
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            entry, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise AnnotationError(path, error.lineno, f"malformed JSON ({error.msg}, column {error.colno})") from error
        yield line_at(position), entry
        position = _skip_whitespace(text, end)
        if position < len(text) and text[position] == "]":
            if _skip_whitespace(text, position + 1) != len(text):
                raise fail(position + 1, "malformed JSON (extra data after the list)")
            return
        if position >= len(text) or text[position] != ",":
            raise fail(min(position, len(text)), "malformed JSON (expected ',' or ']' after an entry)")
        position = _skip_whitespace(text, position + 1)


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


# ------------------------------------------------------------------------------------------- list files


def read_list_file(
    path: str | Path, video_root: str | Path, num_classes: int | None = None, classes_from: str = ""
) -> Annotations:
    """Lines `relative/path label_index` (blank lines and `#` comments skipped); class names are the indices.

    ``num_classes`` (from the training list, named by ``classes_from``) makes a label outside it an error:
    a validation list must not bring classes the model was never given.
    """
    path, video_root = Path(path), Path(video_root)
    samples = []
    for line, raw in enumerate(_read_text(path).splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=1)  # paths may contain spaces; the label is the last field
        if len(parts) != 2:
            raise AnnotationError(path, line, f"expected 'relative/path label_index', got {text!r}")
        relative, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise AnnotationError(path, line, f"label is not an integer: {label_text!r}") from None
        if label < 0:
            raise AnnotationError(path, line, f"label must be non-negative, got {label}")
        if num_classes is not None and label >= num_classes:
            raise AnnotationError(
                path,
                line,
                f"label {label} is outside the {num_classes} classes of the training list {classes_from}".rstrip(),
            )
        samples.append(VideoSample(video_root / relative, label))
    if num_classes is None:
        num_classes = max((sample.label for sample in samples), default=-1) + 1
    return Annotations(samples, [str(index) for index in range(num_classes)])


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} does not exist") from None
