"""`peft-bench data check`: is every video the annotations list there, decodable and long enough?

Run before a long training job. Every annotation entry is looked at, and every video it points to is opened
in a worker process: its frames are counted and its first, middle and last frames decoded (the last one
catches truncated downloads whose header still claims every frame). Each entry lands in one category:

* `ok`
* `missing`: listed, but there is no file where the dataset would read it
* `unreadable`: the decoder's own message says why
* `too_short`: fewer frames than one training clip of the recipe spans (the sampler would repeat frames)
* `unlabelled`: a label outside the class list (e.g. a validation label that train.csv never uses); the
  message is the `AnnotationError` the dataset reader would have raised, and the scan goes on

A malformed annotation file is not a per-entry problem: `AnnotationError` (file and line) propagates.
The video paths and class lists are worked out as `build_dataset` does, so a clean check means the
dataset loads.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import multiprocessing
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from peft_bench.data.annotations import (
    AnnotationError,
    DirectoryListing,
    _json_array_entries,
    _kinetics_rows,
    _kinetics_video_path,
    _ssv2_class_names,
    read_kinetics_class_names,
    ssv2_label_of_template,
)
from peft_bench.data.decode import VideoDecodeError, check_decoder, read_clip

# The helpers below are the ones `build_dataset` and the readers use, so that the check resolves exactly
# the paths and class lists that training will (flat vs per-label folders, split folders, ...).
from peft_bench.data.layouts import (
    SPLITS,
    annotation_folder,
    list_annotations,
    split_files,
    split_video_root,
    ssv2_video_root,
)
from peft_bench.data.recipes import load_recipe
from peft_bench.data.specs import available_datasets, get_dataset
from peft_bench.data.synthetic import default_cache_dir, ensure_synthetic
from peft_bench.data.transforms import Recipe
from peft_bench.system import usable_cpu_count

log = logging.getLogger(__name__)

CATEGORIES = ("ok", "missing", "unreadable", "too_short", "unlabelled")
REPORT_COLUMNS = ("split", "category", "path", "label", "frames", "detail")


# ------------------------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ListedVideo:
    """One annotation entry: the path the dataset would read, and the label as the annotations write it."""

    split: str
    path: Path
    label: str
    unlabelled: str | None = None  # the reader's AnnotationError message when the label is not a class
    looked_in: str = ""  # where else the reader looked, for the message when the file is missing


@dataclass(frozen=True)
class ClipSpan:
    """How many frames one training clip of a recipe touches, and why."""

    frames: int
    reason: str


def clip_span(recipe: Recipe) -> ClipSpan:
    if recipe.sampling == "dense":
        n, stride = recipe.num_frames, recipe.stride
        frames = (n - 1) * stride + 1
        return ClipSpan(
            frames, f"dense sampling of {n} frames at stride {stride} spans ({n}-1)*{stride}+1 = {frames} frames"
        )
    return ClipSpan(recipe.num_frames, f"segment sampling needs a frame in each of its {recipe.num_frames} segments")


@dataclass(frozen=True)
class Finding:
    category: str
    frames: int | None = None  # None when the video could not be opened
    detail: str = ""


@dataclass(frozen=True)
class CheckedEntry:
    video: ListedVideo
    finding: Finding


@dataclass
class CheckReport:
    dataset: str
    root: Path
    span: ClipSpan
    entries: list[CheckedEntry]
    notes: list[str]  # dataset-level problems, e.g. a class count build_dataset would refuse
    annotation_files: list[Path] = dataclasses.field(default_factory=list)  # what the splits were read from

    @property
    def problems(self) -> list[CheckedEntry]:
        return [entry for entry in self.entries if entry.finding.category != "ok"]

    @property
    def has_problems(self) -> bool:
        return bool(self.problems or self.notes)

    def counts(self) -> dict[str, Counter]:
        """Per split (and "all"): how many entries fell in each category."""
        per_split: dict[str, Counter] = {}
        for entry in self.entries:
            per_split.setdefault(entry.video.split, Counter())[entry.finding.category] += 1
        per_split["all"] = sum(per_split.values(), Counter())
        return per_split

    def summary(self) -> str:
        lines = [
            f"data check of {self.dataset} at {self.root}",
            *(f"annotations: {path}" for path in self.annotation_files),
            f"too_short means fewer than {self.span.frames} frames: {self.span.reason}",
            "",
        ]
        header = ["split", *CATEGORIES, "total"]
        rows = [
            [split, *(str(counts[c]) for c in CATEGORIES), str(sum(counts.values()))]
            for split, counts in self.counts().items()
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append(
                "  ".join(
                    cell.rjust(width) if i else cell.ljust(width)
                    for i, (cell, width) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines += [""] + [f"note: {note}" for note in self.notes]
        total = len(self.entries)
        lines.append(
            f"{len(self.problems)} of {total} entries have problems"
            if self.has_problems
            else f"all {total} entries are ok"
        )
        return "\n".join(lines)

    def write(self, csv_path: Path) -> Path:
        """The problems as CSV at `csv_path` and the summary beside it; returns the summary's path."""
        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REPORT_COLUMNS)
            for entry in self.problems:
                video, finding = entry.video, entry.finding
                frames = "" if finding.frames is None else finding.frames
                writer.writerow([video.split, finding.category, video.path, video.label, frames, finding.detail])
        summary_path = summary_path_for(csv_path)
        summary_path.write_text(self.summary() + "\n", encoding="utf-8")
        return summary_path


def summary_path_for(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.stem + ".summary.txt")


# ------------------------------------------------------------------------------- reading annotations


def list_videos(dataset: str, split: str, root: Path, annotation_folder: Path) -> tuple[list[ListedVideo], int]:
    """Every entry of one split, unknown labels included, and the number of classes the split is read with."""
    return _LISTERS[get_dataset(dataset).layout](split, root, annotation_folder)


def _kinetics_videos(split: str, root: Path, annotation_folder: Path) -> tuple[list[ListedVideo], int]:
    files = split_files("kinetics", split, annotation_folder)
    csv_path = files.split_file
    rows = list(_kinetics_rows(csv_path))  # a malformed line raises AnnotationError here
    if files.class_file:  # validation is read with the training classes
        class_names = read_kinetics_class_names(files.class_file)
    else:
        class_names = sorted({label for _, label, _ in rows})
    known = set(class_names)
    video_root, listing = split_video_root(root, split), DirectoryListing()
    videos = []
    for line, label, file_name in rows:
        unlabelled = None
        if label not in known:
            unlabelled = str(
                AnnotationError(csv_path, line, f"unknown label {label!r} (not among the {len(class_names)} classes)")
            )
        path = _kinetics_video_path(video_root, label, file_name, listing)
        looked_in = f"looked in {video_root} and in its per-label folder {label!r}"
        videos.append(ListedVideo(split, path, label, unlabelled, looked_in))
    return videos, len(class_names)


def _ssv2_videos(split: str, root: Path, annotation_folder: Path) -> tuple[list[ListedVideo], int]:
    files = split_files("ssv2", split, annotation_folder)
    assert files.class_file is not None  # SSv2 has a class file (CLASS_FILES): split_files found it or raised
    labels_json, split_json = files.class_file, files.split_file
    video_root = ssv2_video_root(root)
    class_names = _ssv2_class_names(labels_json)
    known = set(class_names)
    videos = []
    for line, entry in _json_array_entries(split_json):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise AnnotationError(split_json, line, "each entry needs at least 'id' and 'template'")
        label = ssv2_label_of_template(str(entry["template"]))
        unlabelled = None
        if label not in known:
            unlabelled = str(AnnotationError(split_json, line, f"unknown label {label!r} (not in {labels_json.name})"))
        videos.append(ListedVideo(split, video_root / f"{entry['id']}.webm", label, unlabelled))
    return videos, len(class_names)


def _list_file_videos(split: str, root: Path, annotation_folder: Path) -> tuple[list[ListedVideo], int]:
    # Labels of list files are indices: every one is a class, so the reader itself will do.
    annotations = list_annotations(split, root, annotation_folder)
    videos = [ListedVideo(split, sample.path, str(sample.label)) for sample in annotations.samples]
    return videos, annotations.num_classes


_LISTERS = {"kinetics": _kinetics_videos, "ssv2": _ssv2_videos, "list": _list_file_videos}


# ---------------------------------------------------------------------------------------- the videos


@dataclass(frozen=True)
class VideoJob:
    """What a worker process needs to inspect one video (small and picklable)."""

    path: Path
    min_frames: int
    backend: str = "auto"


def inspect_video(job: VideoJob) -> Finding:
    """Open the video, count its frames, decode the first, middle and last; never raises."""
    counted: list[int] = []

    def first_middle_last(num_frames: int) -> list[int]:
        counted.append(num_frames)
        return sorted({0, num_frames // 2, num_frames - 1})

    try:
        read_clip(job.path, first_middle_last, backend=job.backend)
    except VideoDecodeError as error:
        if not job.path.exists():  # vanished since it was listed
            return Finding("missing", None, "file does not exist")
        return Finding("unreadable", counted[0] if counted else None, error.cause)
    except Exception as error:  # noqa: BLE001  -- a decoder bug must not stop the scan of 240k videos
        return Finding("unreadable", counted[0] if counted else None, f"{type(error).__name__}: {error}")
    frames = counted[0]
    if frames < job.min_frames:
        return Finding("too_short", frames, f"{frames} frames, fewer than the {job.min_frames} a clip spans")
    return Finding("ok", frames)


def _crashed(job: VideoJob) -> Finding:
    return Finding("unreadable", None, "decoding it crashed the checking process")


def check_dataset(
    dataset: str,
    root: Path | None,
    *,
    annotations: Path | None = None,
    splits: Sequence[str] = SPLITS,
    workers: int | None = None,
    num_frames: int | None = None,
    backend: str = "auto",
    progress: bool = True,
    cache_dir: Path | None = None,
) -> CheckReport:
    """Scan the annotations of `splits` and every video they list (see the module docstring).

    `num_frames` overrides the recipe's frame count, as `build_dataset` does; synthetic datasets are read
    from their cache (generated first if needed) and `root` is ignored for them.
    """
    if dataset not in available_datasets():
        raise ValueError(f"unknown dataset {dataset!r}; available: {', '.join(available_datasets())}")
    spec = get_dataset(dataset)
    check_decoder(backend)
    root, annotation_folder = _dataset_folders(dataset, root, annotations, cache_dir)
    recipe = load_recipe(spec.recipe)
    if num_frames is not None:
        recipe = dataclasses.replace(recipe, num_frames=num_frames)
    span = clip_span(recipe)
    videos, notes, files = [], [], []
    layout = spec.layout
    for split in splits:
        if layout != "list" or annotation_folder.is_dir():
            files += [path for path in split_files(layout, split, annotation_folder).paths if path not in files]
        else:
            files.append(annotation_folder)  # one list file given directly
        split_videos, num_classes = list_videos(dataset, split, root, annotation_folder)
        videos += split_videos
        expected = spec.num_classes
        if expected is not None and num_classes != expected:
            notes.append(
                f"the {split} split is read with {num_classes} classes, but {dataset} has {expected}: "
                "build_dataset will refuse it"
            )
    findings = _inspect_all(videos, span.frames, backend, workers, progress)
    entries = [CheckedEntry(video, finding) for video, finding in zip(videos, findings, strict=True)]
    return CheckReport(dataset, root, span, entries, notes, files)


def _dataset_folders(
    dataset: str, root: Path | None, annotations: Path | None, cache_dir: Path | None
) -> tuple[Path, Path]:
    if get_dataset(dataset).synthetic:
        folder = ensure_synthetic(dataset, Path(cache_dir) if cache_dir else default_cache_dir())
        return folder, folder
    if root is None:
        raise FileNotFoundError(f"dataset {dataset!r} needs --data-root, the folder holding its videos")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} does not exist")
    return root, annotation_folder(get_dataset(dataset).layout, root, annotations)


def _inspect_all(
    videos: list[ListedVideo], min_frames: int, backend: str, workers: int | None, progress: bool
) -> list[Finding]:
    """Findings in the order of `videos`; only present, labelled videos are decoded (in worker processes)."""
    findings: list[Finding | None] = [None] * len(videos)
    listing = DirectoryListing()  # one listing per folder: cheap on network file systems
    to_decode: list[int] = []
    for index, video in enumerate(videos):
        if video.unlabelled:
            findings[index] = Finding("unlabelled", None, video.unlabelled)
        elif not listing.exists(video.path):
            findings[index] = Finding(
                "missing", None, "file does not exist" + (f" ({video.looked_in})" if video.looked_in else "")
            )
        else:
            to_decode.append(index)
    jobs = [VideoJob(videos[index].path, min_frames, backend) for index in to_decode]
    decoded = parallel_map(
        inspect_video,
        jobs,
        workers=default_workers() if workers is None else workers,
        on_crash=_crashed,
        progress=progress,
        desc="checking videos",
        unit="video",
    )
    for index, finding in zip(to_decode, decoded, strict=True):
        findings[index] = finding
    return findings  # type: ignore[return-value]


# ------------------------------------------------------------------------------ parallel, crash-safe

Item = TypeVar("Item")
Result = TypeVar("Result")
# Items handed to the pool ahead of the free workers: enough to keep them busy, few enough that a
# crashed worker leaves only a handful of suspects to re-run alone.
IN_FLIGHT_PER_WORKER = 2


def default_workers() -> int:
    return usable_cpu_count()


def parallel_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    workers: int,
    on_crash: Callable[[Item], Result],
    progress: bool = True,
    desc: str = "",
    unit: str = "it",
) -> list[Result]:
    """`function(item)` for every item, in `workers` processes, results in order, with a progress bar.

    Decoders are native code: a corrupt file can kill the process decoding it, which breaks the whole
    pool. Then the items that were in flight are re-run one per fresh process, so the culprit is found
    (and gets `on_crash(item)`) and the innocent ones get their real result; the rest go on in a new pool.
    """
    results: list = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1:
            for index, item in enumerate(items):
                results[index] = function(item)
                bar.update()
            return results
        todo = deque(range(len(items)))
        while todo:
            for index in _run_until_a_worker_dies(function, items, todo, results, workers, bar):
                results[index] = _run_alone(function, items[index], on_crash)
                bar.update()
    return results


def _process_context():
    # fork: workers start at once and need no re-import (spawn would import torch again in each one).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _run_until_a_worker_dies(function, items, todo: deque, results: list, workers: int, bar) -> list[int]:
    """Runs items from `todo`; returns the indices in flight when a worker died (empty once all are done)."""
    in_flight: dict[Future, int] = {}
    with ProcessPoolExecutor(workers, mp_context=_process_context()) as pool:
        while todo or in_flight:
            while todo and len(in_flight) < workers * IN_FLIGHT_PER_WORKER:
                index = todo.popleft()
                in_flight[pool.submit(function, items[index])] = index
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    log.warning(
                        "a worker process died; re-running the %d items it may have held one by one", len(in_flight)
                    )
                    return sorted(in_flight.values())
                results[in_flight.pop(future)] = result
                bar.update()
    return []


def _run_alone(function, item, on_crash):
    with ProcessPoolExecutor(1, mp_context=_process_context()) as pool:
        try:
            return pool.submit(function, item).result()
        except BrokenProcessPool:
            return on_crash(item)
