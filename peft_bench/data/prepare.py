"""`peft-bench data prepare`: a copy of a dataset that is cheap to decode, read by the same readers.

Kinetics videos as commonly stored (340x256 or larger, H.264 with a keyframe every ~250 frames and CABAC
entropy coding) make a clip of 8 frames at stride 16 cost a decode of most of the video. Re-encoding each
video once with a keyframe every 16 frames and, by default, x264's `fastdecode` tuning (CAVLC instead of
CABAC, no deblocking filter) turns every sampled frame into a short decode from the keyframe before it;
see `benchmarks/loader_speed.py` for what that buys.

What the copy keeps: the folder layout, file names and suffixes, frame count and frame order (timestamps
are rewritten to a constant rate: the readers index frames, not times), and the annotation files. What it
drops: audio, and pixels above `short_side` (videos are only ever scaled down, to even sizes for H.264).

Containers are chosen by suffix, so that every path the annotations name stays valid:
* `.mp4` (Kinetics) and other suffixes: H.264.
* `.webm` (Something-Something v2): VP9 again, with the short keyframe interval. H.264 would be quicker to
  decode, but the SSv2 reader names `{id}.webm` and WebM cannot hold H.264, so switching codec would
  mean renaming files and changing the reader. (For SSv2 the copy saves little decode time: the 8
  segments of a clip reach into every group of pictures of a few-second video, and augmentation, not
  decoding, takes most of a clip's time; `benchmarks/loader_speed.py` shows both.)

Resumable: each video is written under a temporary name and renamed into place when complete, so an
existing output file is always whole and is skipped; temporaries left by a killed run are removed on the
next. Failures are logged, counted and listed, and never stop the run. The source is only ever read.
"""

from __future__ import annotations

import csv
import filecmp
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from peft_bench.data.check import default_workers, parallel_map
from peft_bench.data.specs import available_datasets, get_dataset
from peft_bench.data.synthetic import process_alive

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska", ".avi": "avi"}
# Annotation files of each layout: copied along (at their relative path, or to the top of the output).
ANNOTATION_SUFFIXES = {"kinetics": (".csv",), "ssv2": (".json",), "list": (".txt",)}
FAILURES_FILE = ".prepare_failures.csv"  # hidden: the readers and a later prepare never pick it up
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial$")
# A source that decodes to fewer frames than its header declares is truncated; a frame or two less is
# normal (edit lists, a dropped last frame) and not worth failing over.
FRAME_SHORTFALL_TOLERATED = 2


class PrepareError(RuntimeError):
    """A source video could not be re-encoded; the message says why."""


@dataclass(frozen=True)
class EncodeSettings:
    short_side: int = 320  # scale down so the shorter side is at most this (never up)
    keyframe_interval: int = 16
    fast_decode: bool = True  # H.264: x264's fastdecode tuning (no CABAC, no deblocking); no effect on VP9
    crf: int | None = None  # None: 23 for H.264, 32 for VP9

    def __post_init__(self) -> None:
        if self.short_side < 2:
            raise ValueError(f"short side must be at least 2 pixels, got {self.short_side}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe interval must be at least 1, got {self.keyframe_interval}")

    def encoder(self, suffix: str) -> tuple[str, dict[str, str]]:
        """(codec, options) for an output file with this suffix; one thread: parallelism is across files."""
        if suffix.lower() == ".webm":
            crf = 32 if self.crf is None else self.crf
            return "libvpx-vp9", {
                "crf": str(crf),
                "b:v": "0",
                "deadline": "good",
                "cpu-used": "5",
                "row-mt": "1",
                "threads": "1",
            }
        options = {"crf": str(23 if self.crf is None else self.crf), "preset": "fast", "threads": "1"}
        if self.fast_decode:
            options["tune"] = "fastdecode"
        return "libx264", options


def output_size(width: int, height: int, short_side: int, even: bool) -> tuple[int, int]:
    """Scaled down so min(width, height) <= short_side, aspect kept; even sizes when the codec needs them."""
    scale = min(1.0, short_side / min(width, height))
    sizes = [width * scale, height * scale]
    if even:
        return tuple(max(2, 2 * round(size / 2)) for size in sizes)  # type: ignore[return-value]
    return tuple(max(1, round(size)) for size in sizes)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ one video


def transcode(source: Path, target: Path, settings: EncodeSettings, suffix: str) -> int:
    """Re-encode the video stream of `source` into `target` (container and codec chosen by `suffix`).

    Returns the number of frames written; raises PrepareError (or PyAV's errors) on failure.
    """
    codec, options = settings.encoder(suffix)
    container_format = CONTAINER_FORMATS.get(suffix.lower(), "matroska")
    container_options = {"movflags": "+faststart"} if container_format in ("mp4", "mov") else {}
    with av.open(str(source)) as reader:
        if not reader.streams.video:
            raise PrepareError("no video stream")
        in_stream = reader.streams.video[0]
        in_stream.thread_count = 1
        rate = _frame_rate(in_stream)
        declared = int(in_stream.frames or 0)
        written = 0
        reformatter = VideoReformatter()  # one scaling context for the whole video, not one per frame
        with av.open(str(target), "w", format=container_format, options=container_options) as writer:
            out_stream = None
            width = height = 0  # from the first frame, below
            for frame in reader.decode(in_stream):
                if out_stream is None:  # sizes from the first frame: some containers do not declare them
                    width, height = output_size(frame.width, frame.height, settings.short_side, codec == "libx264")
                    out_stream = writer.add_stream(codec, rate=rate, options=options)
                    out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
                    out_stream.codec_context.gop_size = settings.keyframe_interval
                converted = reformatter.reformat(
                    frame, width=width, height=height, format="yuv420p", interpolation="AREA"
                )
                # Frame i at time i / rate: readers index frames, and variable-rate sources keep every frame.
                converted.pts, converted.time_base = written, 1 / rate
                writer.mux(out_stream.encode(converted))
                written += 1
            if out_stream is None:
                raise PrepareError("no decodable video frames")
            writer.mux(out_stream.encode())
    if declared and written < declared - FRAME_SHORTFALL_TOLERATED:
        raise PrepareError(f"decoded only {written} of the {declared} frames its header declares (truncated?)")
    return written


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate).limit_denominator(100_000) if rate else Fraction(30)


@dataclass(frozen=True)
class PrepareJob:
    source: Path
    target: Path
    settings: EncodeSettings


@dataclass(frozen=True)
class PrepareOutcome:
    source: Path
    ok: bool
    detail: str = ""


def prepare_one(job: PrepareJob) -> PrepareOutcome:
    """Encode into a temporary name beside the target, rename it into place when complete; never raises."""
    temporary = job.target.with_name(f".{job.target.name}.{os.getpid()}.partial")
    try:
        job.target.parent.mkdir(parents=True, exist_ok=True)
        frames = transcode(job.source, temporary, job.settings, job.target.suffix)
        os.replace(temporary, job.target)  # atomic: the target is either absent or complete
        return PrepareOutcome(job.source, True, f"{frames} frames")
    except Exception as error:  # noqa: BLE001  -- one bad video must not stop the run; it is reported as failed
        return PrepareOutcome(job.source, False, f"{type(error).__name__}: {str(error).strip()[:300]}")
    finally:
        temporary.unlink(missing_ok=True)


def _crashed(job: PrepareJob) -> PrepareOutcome:
    return PrepareOutcome(job.source, False, "re-encoding it crashed the worker process")


# --------------------------------------------------------------------------------------- whole trees


@dataclass
class PrepareSummary:
    out: Path
    prepared: int = 0
    skipped: int = 0  # already prepared by an earlier run
    failures: list[PrepareOutcome] = field(default_factory=list)
    annotation_files: list[Path] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            (
                f"prepared {self.prepared} videos, skipped {self.skipped} already prepared, "
                f"{len(self.failures)} failed; {len(self.annotation_files)} annotation files in {self.out}"
            )
        ]
        for failure in self.failures[:10]:
            lines.append(f"  failed: {failure.source}: {failure.detail}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (all in {self.out / FAILURES_FILE})")
        return "\n".join(lines)


def prepare_videos(
    root: Path, out: Path, settings: EncodeSettings, *, workers: int | None = None, progress: bool = True
) -> PrepareSummary:
    """Re-encode every video under `root` to the same relative path under `out`, skipping finished ones."""
    root, out = Path(root), Path(out)
    _refuse_overlap(root, out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(out)
    summary = PrepareSummary(out)
    jobs = []
    for source in _files_under(root, VIDEO_SUFFIXES):
        target = out / source.relative_to(root)
        if target.exists():
            summary.skipped += 1
        else:
            jobs.append(PrepareJob(source, target, settings))
    outcomes = parallel_map(
        prepare_one,
        jobs,
        workers=default_workers() if workers is None else workers,
        on_crash=_crashed,
        progress=progress,
        desc="preparing videos",
        unit="video",
    )
    for outcome in outcomes:
        if outcome.ok:
            summary.prepared += 1
        else:
            log.warning("could not prepare %s: %s", outcome.source, outcome.detail)
            summary.failures.append(outcome)
    _write_failures(out, summary.failures)
    return summary


def prepare_dataset(
    dataset: str,
    root: Path,
    out: Path,
    settings: EncodeSettings = EncodeSettings(),
    *,
    annotations: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """A prepared copy of dataset `dataset` (videos under `root`) in `out`, annotation files included.

    Annotation files found under `root` keep their relative path; those of a separate `annotations`
    folder go to the top of `out`, so `out` alone serves as both --data-root and --annotations. They are
    copied after the videos, so an interrupted copy does not look like a complete dataset.
    """
    preparable = [name for name in available_datasets() if not get_dataset(name).synthetic]
    if dataset not in preparable:
        raise ValueError(
            f"cannot prepare dataset {dataset!r}; preparable: {', '.join(preparable)} "
            "(synthetic datasets are generated small already)"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} does not exist")
    summary = prepare_videos(root, Path(out).expanduser(), settings, workers=workers, progress=progress)
    suffixes = ANNOTATION_SUFFIXES[get_dataset(dataset).layout]
    sources = [(path, summary.out / path.relative_to(root)) for path in _files_under(root, suffixes)]
    if annotations is not None and Path(annotations).expanduser().resolve() != root.resolve():
        folder = Path(annotations).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"annotation folder {folder} does not exist")
        sources += [
            (path, summary.out / path.name)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix.lower() in suffixes
        ]
    summary.annotation_files = [_copy_if_changed(source, target) for source, target in sources]
    return summary


def _files_under(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files with these suffixes under `root`, in a stable order; hidden files and folders are skipped."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                yield Path(folder) / name


def _refuse_overlap(root: Path, out: Path) -> None:
    source, target = root.resolve(), out.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ValueError(
            f"the output folder {out} must be outside the source {root} (and not contain it): "
            "the source is never written to"
        )


def _copy_if_changed(source: Path, target: Path) -> Path:
    if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    return target


def _remove_abandoned_partials(out: Path) -> None:
    """Temporary files of runs that were killed (their process is gone) on this machine."""
    for folder, _, names in os.walk(out):
        for name in names:
            match = _PARTIAL.match(name)
            if match and not process_alive(int(match["pid"])):
                log.info("removing %s, left by an interrupted run", Path(folder) / name)
                (Path(folder) / name).unlink(missing_ok=True)


def _write_failures(out: Path, failures: list[PrepareOutcome]) -> None:
    path = out / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "problem"])
        writer.writerows([failure.source, failure.detail] for failure in failures)
