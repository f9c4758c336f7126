"""Loader throughput in clips per second for one worker process: the project's loader with each decoder
(PyAV, torchcodec, decord) against the way the released ST-Adapter code loads a clip (decode every frame
with PyAV, then sample), on Kinetics-like and Something-Something-v2-like videos, raw and after
`peft-bench data prepare`.

    python -m peft_bench.benchmarks.loader_speed   # (or python -m benchmarks.loader_speed from a clone)
                                                   # writes results/loader_speed.csv and results/loader_speed.md

One "clip" is one training item: sample the frame indices, decode, and apply the recipe's training
augmentation at 224 px (`load_recipe("k400")` / `load_recipe("ssv2")`), as a DataLoader worker does. Every
loader gets the same augmentation, so the figures differ by decoding alone. The process is pinned to one
CPU core with one torch thread, and every decoder runs one thread: the figure is what one DataLoader
worker delivers on one core. Time is the process's CPU time by default (`--clock wall` for elapsed time),
so that other processes on a shared machine do not count.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from peft_bench.data import decode
from peft_bench.data.annotations import Annotations, VideoSample
from peft_bench.data.dataset import VideoClipDataset
from peft_bench.data.decode import (
    AUTO_ORDER,
    DECODERS,
    available_decoders,
    decoder_unavailable_reason,
)
from peft_bench.data.prepare import EncodeSettings, prepare_videos
from peft_bench.data.recipes import load_recipe
from peft_bench.data.sampling import dense_indices, segment_indices
from peft_bench.data.transforms import Recipe, train_transform
from peft_bench.system import cpu_model_name

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BASELINE = "baseline: decode all (PyAV), then sample"
WORK_CLIPS = 24  # clips whose decoding work is counted per loader
AUGMENTATION_ONLY = "augmentation alone (no decoding)"
RAW, PREPARED, PREPARED_DEFAULT_TUNING = "raw", "prepared", "prepared, x264 default tuning"


@dataclass(frozen=True)
class VideoSet:
    """A handful of generated videos standing in for one dataset."""

    name: str
    recipe: str
    count: int
    seconds: float
    fps: int
    width: int
    height: int
    codec: str
    suffix: str
    encoder_options: tuple[tuple[str, str], ...]
    description: str

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)


# The usual 340x256 Kinetics copies are made with ffmpeg's defaults: x264 crf 23, preset medium, a keyframe
# at most every 250 frames, CABAC and B-frames.
K400_LIKE = VideoSet(
    "k400-like",
    "k400",
    6,
    10.0,
    30,
    340,
    256,
    "libx264",
    ".mp4",
    (("crf", "23"), ("preset", "medium")),
    "340x256, 30 fps, 10 s, H.264 (x264 crf 23 preset medium, keyframes <= 250 apart)",
)
# SSv2 ships VP9 .webm, 240 px high, 12 fps, a few seconds long.
SSV2_LIKE = VideoSet(
    "ssv2-like",
    "ssv2",
    6,
    4.0,
    12,
    427,
    240,
    "libvpx-vp9",
    ".webm",
    (("crf", "32"), ("b:v", "0"), ("deadline", "good"), ("cpu-used", "4")),
    "427x240, 12 fps, 4 s, VP9 .webm (libvpx crf 32)",
)


@dataclass(frozen=True)
class BenchmarkSettings:
    k400: VideoSet = K400_LIKE
    ssv2: VideoSet = SSV2_LIKE
    # Many short turns rather than a few long ones: a burst of load from other processes then lands on
    # every loader alike.
    repeats: int = 21
    clips_per_repeat: int = 4
    clock: str = "cpu"  # "cpu": this process's CPU time; "wall": elapsed time
    input_size: int = 224
    prepared_short_side: int = 256
    prepared_keyframe_interval: int = 16


# ----------------------------------------------------------------------------------------- the videos


def render_frames(video_set: VideoSet, seed: int) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames: a panning texture under a drifting colour gradient and two moving discs.

    Textured and moving everywhere, so the encoder spends bits and the decoder real work, as on real
    footage (flat synthetic frames would decode unrealistically fast).
    """
    rng = np.random.default_rng(seed)
    height, width = video_set.height, video_set.width
    texture = rng.integers(0, 256, (height // 4 + 64, width // 4 + 64, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(texture, 4, axis=0), 4, axis=1)  # 4-pixel grain
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    discs = [(rng.uniform(0.1, 0.3) * height, rng.uniform(0.5, 2.0), rng.integers(60, 256, 3)) for _ in range(2)]
    for t in range(video_set.num_frames):
        shift_x, shift_y = int(t * 0.8) % 256, int(t * 0.5) % 256  # the texture is 256 pixels larger
        texture_view = texture[shift_y : shift_y + height, shift_x : shift_x + width]
        gradient = 128 + 90 * np.sin((cols + 4 * t) / 41.0 + rows / 67.0)[..., None] * tint
        frame = 0.45 * texture_view + 0.55 * gradient
        for number, (radius, speed, colour) in enumerate(discs):
            centre_x = width / 2 + 0.35 * width * np.sin(speed * t / video_set.fps + number)
            centre_y = height / 2 + 0.3 * height * np.cos(speed * t / video_set.fps * 1.3 + number)
            frame[(cols - centre_x) ** 2 + (rows - centre_y) ** 2 < radius**2] = colour
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_video_set(video_set: VideoSet, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(video_set.count):
        path = folder / f"{video_set.name}-{number:02d}{video_set.suffix}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(video_set.codec, rate=video_set.fps, options=dict(video_set.encoder_options))
            stream.width, stream.height, stream.pix_fmt = video_set.width, video_set.height, "yuv420p"
            for index, rgb in enumerate(render_frames(video_set, seed=number)):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, video_set.fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------- the loaders

Loader = Callable[[int], torch.Tensor]  # clip number -> augmented clip


def ours_loader(paths: list[Path], recipe: Recipe, input_size: int, decoder: str = "auto") -> Loader:
    """The project's VideoClipDataset with one of its decoders (`auto`: the one it would choose)."""
    annotations = Annotations([VideoSample(path, 0) for path in paths], ["any"])
    dataset = VideoClipDataset(
        annotations,
        recipe,
        train=True,
        input_size=input_size,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        max_failure_fraction=0.0,
        decoder=decoder,
    )

    def load(clip_number: int) -> torch.Tensor:
        dataset.set_epoch(clip_number // len(paths))  # a new random clip each time round the videos
        return dataset[clip_number % len(paths)]["video"]

    return load


def decode_all_then_sample(path: Path, choose: Callable[[int], list[int]]) -> np.ndarray:
    """The released ST-Adapter code's reading, as we read it: the file into memory, every frame decoded by
    PyAV on one thread and kept by timestamp, then the chosen ones converted to RGB."""
    with av.open(io.BytesIO(Path(path).read_bytes())) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        by_pts = {frame.pts: frame for frame in container.decode(stream)}
    frames = [by_pts[pts] for pts in sorted(by_pts)]
    return np.stack([frames[index].to_rgb().to_ndarray() for index in choose(len(frames))])


def augmentation_only_loader(paths: list[Path], recipe: Recipe, input_size: int) -> Loader:
    """The ceiling: the same augmentation on clips decoded beforehand (one per video), so no decoding."""
    transform = train_transform(recipe, input_size, CLIP_MEAN, CLIP_STD)
    clips = [
        decode_all_then_sample(path, lambda n, seed=number: training_indices(recipe, n, random.Random(seed)))
        for number, path in enumerate(paths)
    ]

    def load(clip_number: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(clip_number)
            return transform(torch.from_numpy(clips[clip_number % len(clips)]))

    return load


def training_indices(recipe: Recipe, num_video_frames: int, rng: random.Random) -> list[int]:
    if recipe.sampling == "segment":
        return segment_indices(num_video_frames, recipe.num_frames, train=True, rng=rng)
    return dense_indices(num_video_frames, recipe.num_frames, recipe.stride, train=True, rng=rng)


def baseline_loader(paths: list[Path], recipe: Recipe, input_size: int) -> Loader:
    transform = train_transform(recipe, input_size, CLIP_MEAN, CLIP_STD)

    def load(clip_number: int) -> torch.Tensor:
        rng = random.Random(clip_number)
        frames = decode_all_then_sample(paths[clip_number % len(paths)], lambda n: training_indices(recipe, n, rng))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(clip_number)
            return transform(torch.from_numpy(frames))

    return load


# ---------------------------------------------------------------------------------------- measuring


@dataclass
class Case:
    video_set: str
    copy: str  # RAW, PREPARED or PREPARED_DEFAULT_TUNING: which files
    loader: str
    load: Loader
    files: list[Path]
    decoder: str  # "baseline", "none" (augmentation alone) or a decoder name
    recipe: Recipe
    rates: list[float] = field(default_factory=list)  # clips per second, one per repeat


@dataclass(frozen=True)
class Measurement:
    video_set: str
    copy: str
    loader: str
    decoder: str
    clips_per_s: float  # median over repeats
    clips_per_s_min: float
    clips_per_s_max: float
    speedup: float  # over the baseline on the same video set (raw files)
    packets_fed_per_clip: float  # mean packets sent to the decoder (nan: not counted, other decoders)
    frames_decoded_per_clip: float  # of those, frames decoded, not skipped as unreferenced (nan: not counted)
    repeats: int
    clips_per_repeat: int
    mean_file_kb: float


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK_NOTES = {
    "cpu": "Clips per second of the process's own CPU time (one worker on one core: what it delivers while it "
    "has the core), so that other processes on a shared machine do not count; they still slow it "
    "through shared caches.",
    "wall": "Clips per elapsed second.",
}


def measure(cases: list[Case], repeats: int, clips_per_repeat: int, clock: str = "cpu") -> None:
    """Fill each case's `rates`. Cases take turns within every repeat (in a rotating order), so a burst of
    load from other processes on a shared machine hits every loader alike."""
    for case in cases:
        case.load(0)  # warm-up: imports, first-open costs
    for repeat in range(repeats):
        shift = repeat % len(cases)
        for case in cases[shift:] + cases[:shift]:
            first = 1 + repeat * clips_per_repeat
            started = CLOCKS[clock]()
            for clip_number in range(first, first + clips_per_repeat):
                case.load(clip_number)
            case.rates.append(clips_per_repeat / (CLOCKS[clock]() - started))


class CountingDecoder:
    """Stands in for a PyAV codec context: counts the packets sent and the frames that came out."""

    def __init__(self, codec_context) -> None:
        self.codec_context, self.packets_fed, self.frames_decoded = codec_context, 0, 0

    @property
    def skip_frame(self):
        return self.codec_context.skip_frame

    @skip_frame.setter
    def skip_frame(self, value) -> None:
        self.codec_context.skip_frame = value

    def decode(self, packet):
        frames = self.codec_context.decode(packet)
        self.packets_fed += packet is not None
        self.frames_decoded += len(frames)
        return frames

    def flush_buffers(self) -> None:
        self.codec_context.flush_buffers()


def decode_work(case: Case, clips: int) -> tuple[float, float]:
    """Mean (packets fed to the decoder, frames it decoded) per training clip of this case's loader.

    Runs the PyAV path's own decoding (`decode._decode_wanted_frames`) on the same kind of clips, through a
    counting stand-in for the decoder; the baseline decodes every packet of the video.
    """
    if case.decoder == "none":
        return 0.0, 0.0
    if case.decoder not in ("baseline", "pyav"):  # only PyAV's path can be counted from outside
        return float("nan"), float("nan")
    fed, decoded = [], []
    for clip_number in range(clips):
        path = case.files[clip_number % len(case.files)]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            index = decode._index_packets(path, container, stream)
            if case.decoder == "baseline":
                fed.append(len(index.packets))
                decoded.append(len(index.packets))
                continue
            wanted = training_indices(case.recipe, index.num_frames, random.Random(clip_number))
            counter = CountingDecoder(stream.codec_context)
            decode._decode_wanted_frames(path, counter, index, wanted)
            fed.append(counter.packets_fed)
            decoded.append(counter.frames_decoded)
    return statistics.mean(fed), statistics.mean(decoded)


def summarise(cases: list[Case], clips_per_repeat: int) -> list[Measurement]:
    baselines = {case.video_set: statistics.median(case.rates) for case in cases if case.loader == BASELINE}
    measurements = []
    for case in cases:
        median = statistics.median(case.rates)
        measurements.append(
            Measurement(
                case.video_set,
                case.copy,
                case.loader,
                case.decoder,
                median,
                min(case.rates),
                max(case.rates),
                median / baselines[case.video_set] if case.video_set in baselines else float("nan"),
                *decode_work(case, clips=WORK_CLIPS),
                len(case.rates),
                clips_per_repeat,
                statistics.mean(p.stat().st_size for p in case.files) / 1e3,
            )
        )
    return measurements


def prepared_variants(settings: BenchmarkSettings, video_set: VideoSet) -> list[tuple[str, EncodeSettings]]:
    """(copy, encode settings) of the prepared copies to measure on this video set."""
    encode = EncodeSettings(
        short_side=settings.prepared_short_side, keyframe_interval=settings.prepared_keyframe_interval
    )
    if video_set.codec != "libx264":  # fastdecode is an x264 tuning: one VP9 copy
        return [(PREPARED, encode)]
    # With and without the fastdecode tuning, to show what the keyframes alone buy.
    return [(PREPARED, encode), (PREPARED_DEFAULT_TUNING, dataclasses.replace(encode, fast_decode=False))]


def build_cases(
    settings: BenchmarkSettings, work_dir: Path, decoders: list[str] | None = None, progress: bool = False
) -> list[Case]:
    """Write the videos (and the prepared copies) under `work_dir`; the loaders to compare on them.

    Every decoder reads every copy; decord included on .webm, which `auto` never gives it (see
    peft_bench/data/decode.py), so that the table shows what it would cost and deliver there.
    """
    decoders = available_decoders() if decoders is None else decoders
    cases = []
    size = settings.input_size
    for video_set in (settings.k400, settings.ssv2):
        recipe = load_recipe(video_set.recipe)
        source = work_dir / video_set.name / "source"
        paths = write_video_set(video_set, source)
        cases.append(
            Case(video_set.name, RAW, BASELINE, baseline_loader(paths, recipe, size), paths, "baseline", recipe)
        )
        cases.append(
            Case(
                video_set.name,
                RAW,
                AUGMENTATION_ONLY,
                augmentation_only_loader(paths, recipe, size),
                paths,
                "none",
                recipe,
            )
        )
        copies = [(RAW, paths)]
        for copy, encode in prepared_variants(settings, video_set):
            folder = work_dir / video_set.name / copy.replace(", ", "-").replace(" ", "-")
            prepare_videos(source, folder, encode, workers=1, progress=progress)
            copies.append((copy, [folder / path.name for path in paths]))
        for copy, files in copies:
            # The default tuning only shows what the keyframes alone buy: one decoder is enough for that.
            for decoder in decoders if copy != PREPARED_DEFAULT_TUNING else decoders[:1]:
                cases.append(
                    Case(
                        video_set.name, copy, decoder, ours_loader(files, recipe, size, decoder), files, decoder, recipe
                    )
                )
    return cases


def run_benchmark(
    settings: BenchmarkSettings = BenchmarkSettings(), work_dir: Path | None = None, decoders: list[str] | None = None
) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="loader_speed-") as temporary:
        cases = build_cases(settings, Path(work_dir or temporary), decoders)
        measure(cases, settings.repeats, settings.clips_per_repeat, settings.clock)
        return summarise(cases, settings.clips_per_repeat)


# ---------------------------------------------------------------------------------------- reporting


def pin_to_one_cpu(cpu: int | None = None) -> int | None:
    """Pin this process to one core (default: the last one it may use); None where that is not possible."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[-1] if cpu is None else cpu
        os.sched_setaffinity(0, {chosen})
        return chosen
    except (AttributeError, OSError):
        return None


def write_results(
    measurements: list[Measurement], settings: BenchmarkSettings, results_dir: Path, setup: str
) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = results_dir / "loader_speed.csv", results_dir / "loader_speed.md"
    columns = [f.name for f in dataclasses.fields(Measurement)]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for m in measurements:
            writer.writerow([round(v, 3) if isinstance(v, float) else v for v in dataclasses.astuple(m)])
    md_path.write_text(markdown(measurements, settings, setup))
    return csv_path, md_path


def markdown(measurements: list[Measurement], settings: BenchmarkSettings, setup: str) -> str:
    per_second = "clips/s (CPU time)" if settings.clock == "cpu" else "clips/s"
    lines = [
        "# Loader speed: clips per second in one worker process",
        "",
        "Generated by `python -m peft_bench.benchmarks.loader_speed`; do not edit by hand.",
        "",
        "## Decoders side by side",
        "",
        side_by_side(measurements, per_second),
        "",
        (
            f"Fastest first in this run: {', '.join(measured_order(measurements))} (by the geometric mean of "
            f"the four columns; `auto` follows `AUTO_ORDER` = {', '.join(AUTO_ORDER)} in "
            "peft_bench/data/decode.py)."
        ),
        "",
        "## Every loader",
        "",
        (
            f"| video set | files | loader | {per_second} (median) | min - max | vs baseline | ms per clip "
            "| packets decoded per clip | frames not skipped | mean file size |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measurements:
        lines.append(
            f"| {m.video_set} | {m.copy} | {m.loader} | {m.clips_per_s:.1f} | {m.clips_per_s_min:.1f} - "
            f"{m.clips_per_s_max:.1f} | {m.speedup:.2f}x | {1000 / m.clips_per_s:.0f} | "
            f"{_count(m.packets_fed_per_clip)} | {_count(m.frames_decoded_per_clip)} | "
            f"{m.mean_file_kb:.0f} kB |"
        )
    missing = [f"{name} ({decoder_unavailable_reason(name)})" for name in DECODERS if decoder_unavailable_reason(name)]
    lines += [
        "",
        "## Setup",
        "",
        (
            f"- k400-like: {settings.k400.count} videos, {settings.k400.description}; K400 recipe (the released "
            "code's): dense sampling, 8 frames at stride 16, short-side jitter 224-258 (bicubic, no antialias), "
            "random 224 crop, flip."
        ),
        (
            f"- ssv2-like: {settings.ssv2.count} videos, {settings.ssv2.description}; SSv2 recipe (the released "
            "code's): 8 segments, timm's RandAugment rand-m7-n4-mstd0.5-inc1 on the full decoded frames (one "
            "draw per clip), then a random-resized crop (bicubic, no antialias)."
        ),
        (
            "- baseline: the file read into memory, every frame decoded by PyAV on one thread, then the "
            "sampled frames converted to RGB (the released ST-Adapter code's reading); same augmentation."
        ),
        "- pyav, torchcodec, decord: `VideoClipDataset` with `data.decoder` set to that decoder, one decoder "
        "thread. pyav reads the file's packets once (the frame count, also for WebM, which stores none), "
        "decodes only the groups of pictures that hold sampled frames, each up to its last sampled frame, "
        "and skips frames nothing refers to (non-reference B-frames) unless sampled; torchcodec scans the "
        "file once (exact seek mode) and `get_frames_at` decodes from the keyframe before each sampled "
        "frame; decord's `get_batch` likewise. decord is measured on .webm too, where `auto` never uses it."
        + (f" Not installed here: {'; '.join(missing)}." if missing else ""),
        "- augmentation alone: the same augmentation on clips decoded beforehand, the ceiling for any loader here.",
        (
            f"- packets decoded / frames not skipped: mean over {WORK_CLIPS} training clips of the packets "
            "sent to the decoder and of the frames it decoded rather than skipped (8 of them are used); "
            "the baseline decodes every frame; counted for PyAV's path only."
        ),
        (
            f"- prepared: `peft-bench data prepare` applied to the same videos (`prepare_videos`): short side "
            f"{settings.prepared_short_side} (so no video here is scaled: none is larger), a keyframe every "
            f"{settings.prepared_keyframe_interval} frames, x264 crf 23 preset fast with its fastdecode tuning "
            "(no CABAC, no deblocking; the default of `data prepare`), or without it ('x264 default tuning', "
            "read by the first decoder only), VP9 crf 32 for .webm."
        ),
        f"- {settings.repeats} repeats of {settings.clips_per_repeat} clips per loader, loaders taking "
        "turns within each repeat; median and range over repeats. " + CLOCK_NOTES[settings.clock],
        f"- {setup}",
        "",
    ]
    return "\n".join(lines)


def side_by_side(measurements: list[Measurement], per_second: str) -> str:
    """One row per decoder: its clips per second (and speed-up over the baseline) per video set and copy."""
    columns = [(video_set, copy) for video_set in ("k400-like", "ssv2-like") for copy in (RAW, PREPARED)]
    by_key = {(m.decoder, m.video_set, m.copy): m for m in measurements}
    header = "| decoder | " + " | ".join(f"{video_set}, {copy}" for video_set, copy in columns) + " |"
    lines = [
        f"{per_second} (median) and speed-up over decoding every frame, one worker:",
        "",
        header,
        "| --- |" + " ---: |" * len(columns),
    ]
    for decoder in ["baseline", *[d for d in DECODERS if any(m.decoder == d for m in measurements)]]:
        cells = []
        for video_set, copy in columns:
            m = by_key.get((decoder, video_set, RAW if decoder == "baseline" else copy))
            cells.append("-" if m is None else f"{m.clips_per_s:.1f} ({m.speedup:.2f}x)")
        name = "baseline (decode all, PyAV)" if decoder == "baseline" else decoder
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_order(measurements: list[Measurement]) -> list[str]:
    """Decoders fastest first, by the geometric mean of their clips per second over the video sets and copies
    they were measured on (all four for every decoder in a full run)."""
    rates: dict[str, list[float]] = {}
    for m in measurements:
        if m.decoder in DECODERS and m.copy in (RAW, PREPARED):
            rates.setdefault(m.decoder, []).append(m.clips_per_s)
    return sorted(rates, key=lambda d: -statistics.geometric_mean(rates[d]))


def _count(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # nan: not counted


def describe_setup(pinned: int | None) -> str:
    cpu = cpu_model_name() or "unknown CPU"
    pinning = f"pinned to core {pinned}" if pinned is not None else "not pinned"
    decoders = "; ".join(
        f"{p['decoder_version']} on {p['ffmpeg']}"
        for p in (decode.decoder_provenance(name) for name in available_decoders())
    )
    return (
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, one process {pinning}, 1 torch thread; "
        f"Python {platform.python_version()}, torch {torch.__version__}; {decoders}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peft_bench.benchmarks.loader_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--videos", type=int, default=6, help="videos per set (default 6)")
    parser.add_argument("--repeats", type=int, default=BenchmarkSettings.repeats)
    parser.add_argument("--clips", type=int, default=BenchmarkSettings.clips_per_repeat, help="clips per repeat")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default=BenchmarkSettings.clock,
        help="cpu (default): clips per second of this process's CPU time, robust to other load on "
        "a shared machine; wall: per elapsed second",
    )
    parser.add_argument("--cpu", type=int, help="core to pin to (default: the last allowed one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    parser.add_argument(
        "--decoders",
        default=",".join(available_decoders()),
        help=f"comma-separated decoders to measure (default: every installed one of {', '.join(DECODERS)})",
    )
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--note", default="", help="a remark for the setup line (e.g. 'machine shared with ...')")
    args = parser.parse_args(argv)
    settings = BenchmarkSettings(
        k400=dataclasses.replace(K400_LIKE, count=args.videos),
        ssv2=dataclasses.replace(SSV2_LIKE, count=args.videos),
        repeats=args.repeats,
        clips_per_repeat=args.clips,
        clock=args.clock,
    )
    pinned = None if args.no_pin else pin_to_one_cpu(args.cpu)
    torch.set_num_threads(1)
    decoders = [name for name in args.decoders.split(",") if name]
    for name in decoders:
        decode.check_decoder(name)
    measurements = run_benchmark(settings, decoders=decoders)
    setup = describe_setup(pinned) + (f". {args.note}" if args.note else "")
    csv_path, md_path = write_results(measurements, settings, Path(args.results_dir), setup)
    print(markdown(measurements, settings, setup))
    print(f"(saved {csv_path} and {md_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
