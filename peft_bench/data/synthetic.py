"""The embedded default datasets, generated from a seed and written as real video files.

* `synthetic-motion` stands in for Something-Something v2 (SSv2 layout, VP9 `.webm`): the class is *how* a
  shape moves, and classes come in time-reversed pairs. A clip of the second class of a pair is a clip of
  the first class played backwards, so the *set* of frames has the same distribution for both: a method
  that ignores frame order cannot beat chance within a pair.
* `synthetic-appearance` stands in for Kinetics-400 (Kinetics layout, H.264 `.mp4`): the class is *what*
  is in the clip (an object with its own shape and hue band); the motion is random and carries no label information.
* `random_still_images` gives still images of shape types, for pre-training the tiny backbone on images
  only (its classes are shape types, not the appearance dataset's classes).

Shapes are drawn with anti-aliased signed distance functions on a pixel grid, whole clips at once.
"""

from __future__ import annotations

import colorsys
import csv
import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from peft_bench.system import usable_cpu_count

log = logging.getLogger(__name__)

FRAME_SIZE = 64
NUM_FRAMES = 16
FPS = 8
DEFAULT_NUM_TRAIN = 480
DEFAULT_NUM_VAL = 160
# Bump when the rendering or the layout changes, so cached copies made by older code are not reused.
GENERATOR_VERSION = 3
MARKER_FILE = "synthetic.json"
SSV2_VIDEO_FOLDER = "20bn-something-something-v2"

# Shape types: ("ell" and "half_disc" have no rotational symmetry, so their rotation direction is visible.)
SHAPES = ("circle", "square", "triangle", "cross", "ring", "ell", "half_disc", "bar")
ROTATION_SHAPES = ("ell", "half_disc")
# The appearance dataset's objects: each has its own shape and its own hue band (centre, in turns), the way
# a Kinetics class comes with its own objects and scenery, so that appearance alone tells the class.
APPEARANCE_OBJECTS = {
    "red circle": ("circle", 0.0),
    "orange square": ("square", 0.09),
    "yellow triangle": ("triangle", 0.16),
    "green cross": ("cross", 0.33),
    "cyan ring": ("ring", 0.5),
    "blue bar": ("bar", 0.64),
    "purple ell": ("ell", 0.76),
    "pink half_disc": ("half_disc", 0.89),
}
APPEARANCE_HUE_SPREAD = 0.025  # +- around the band centre

# Pairs of (forward class, its time reverse), as SSv2-style templates.
MOTION_TEMPLATES = (
    "Moving [something] from left to right",
    "Moving [something] from right to left",
    "Moving [something] up",
    "Moving [something] down",
    "Making [something] bigger",
    "Making [something] smaller",
    "Turning [something] clockwise",
    "Turning [something] counterclockwise",
    "Making [something] appear",
    "Making [something] disappear",
)
MOTION_KINDS = ("horizontal", "vertical", "size", "rotation", "fade")  # one per pair, in template order

VIDEO_OPTIONS = {
    # Low crf keeps 64-pixel shapes crisp; one thread keeps the output identical across machines.
    "libx264": {"crf": "12", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"crf": "12", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"},
}


# ----------------------------------------------------------------------------------------------- shapes


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of a shape of unit radius, in shape units."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return _box(u, v, 0.8, 0.8)
    if shape == "triangle":  # equilateral, pointing up, inradius 0.5
        normals = ((0.0, 1.0), (0.866, -0.5), (-0.866, -0.5))
        return np.max([nu * u + nv * v for nu, nv in normals], axis=0) - 0.5
    if shape == "cross":
        return np.minimum(_box(u, v, 0.95, 0.32), _box(u, v, 0.32, 0.95))
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.7) - 0.28
    if shape == "ell":
        return np.minimum(_box(u + 0.55, v, 0.3, 0.9), _box(u, v - 0.6, 0.85, 0.3))
    if shape == "half_disc":
        return np.maximum(np.hypot(u, v + 0.3) - 1.0, -(v + 0.3))
    if shape == "bar":
        return _box(u, v, 1.0, 0.3)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render_shape(
    shape: str,
    size: int,
    centre_x: np.ndarray | float,
    centre_y: np.ndarray | float,
    radius: np.ndarray | float,
    angle: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape (T, size, size) with one frame per parameter value.

    Parameters are pixels and radians (scalars or per-frame arrays). A positive angle turns the shape
    clockwise on screen (image y points down).
    """
    per_frame = (np.atleast_1d(np.asarray(p, dtype=np.float32)) for p in (centre_x, centre_y, radius, angle))
    centre_x, centre_y, radius, angle = (p[:, None, None] for p in np.broadcast_arrays(*per_frame))
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    dx, dy = grid[None, None, :] - centre_x, grid[None, :, None] - centre_y
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / radius
    v = (-dx * sin + dy * cos) / radius
    distance_in_pixels = _shape_distance(shape, u, v) * radius
    return np.clip(0.5 - distance_in_pixels, 0.0, 1.0)


def composite(canvas: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Paint `colour` (3,) floats 0..1 over float canvases (T, H, W, 3) with per-pixel coverage (T, H, W)."""
    alpha = coverage[..., None]
    return canvas * (1.0 - alpha) + colour * alpha


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise (size, size) in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    positions = (np.arange(size, dtype=np.float32) + 0.5) / size * (cells - 1)
    weights = np.maximum(0.0, 1.0 - np.abs(positions[:, None] - np.arange(cells)[None, :]))  # (size, cells)
    # Broadcast and sum rather than matrix products, which go through BLAS and vary with its threading.
    return (weights[:, None, :, None] * coarse[None, None, :, :] * weights[None, :, None, :]).sum(axis=(2, 3))


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) floats: a gradient between two muted colours plus soft blotches."""
    first = hsv_colour(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.85))
    second = hsv_colour(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.85))
    direction = rng.uniform(0, 2 * np.pi)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = np.cos(direction) * grid[None, :] + np.sin(direction) * grid[:, None] + 0.5
    background = first * (1 - ramp[..., None]) + second * ramp[..., None]
    background = background + 0.06 * _smooth_noise(rng, size)[..., None]
    return np.clip(background, 0.0, 1.0).astype(np.float32)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ still images

STILL_CLASSES = SHAPES


# Generic appearance attributes recorded alongside the shape, as extra pre-training targets: a denser
# signal than the shape alone, which a small ViT learns slowly. (bins of hue, size, horizontal and
# vertical position)
STILL_ATTRIBUTE_BINS = (6, 3, 3, 3)


def random_still_images(n: int, size: int, seed: int, with_attributes: bool = False):
    """`n` images (N, size, size, 3) uint8 of one random shape each on a random background.

    Labels index the shape type (balanced); colour, position, size and rotation are random. For
    pre-training the tiny backbone on still images only. With `with_attributes`, also an int64 array
    (N, 4) of the hue, size, x and y bins of the shape (see STILL_ATTRIBUTE_BINS).
    """
    rng = np.random.default_rng([seed, 0x5717])
    labels = rng.permutation(np.arange(n) % len(STILL_CLASSES))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    attributes = np.empty((n, len(STILL_ATTRIBUTE_BINS)), dtype=np.int64)
    for i, label in enumerate(labels):
        canvas = random_background(rng, size)[None]
        for _ in range(int(rng.integers(0, 2))):  # sometimes a small grey speck, so "one blob" is not a cue
            speck_x, speck_y = rng.uniform(0, size, 2)
            speck = render_shape("circle", size, speck_x, speck_y, rng.uniform(0.04, 0.08) * size)
            canvas = composite(canvas, speck, hsv_colour(0, 0, rng.uniform(0.1, 0.9)))
        relative_radius = rng.uniform(0.18, 0.34)
        radius = relative_radius * size
        centre = rng.uniform(radius, size - radius, 2)
        hue = rng.random()
        colour = hsv_colour(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        coverage = render_shape(STILL_CLASSES[label], size, centre[0], centre[1], radius, rng.uniform(0, 2 * np.pi))
        images[i] = to_uint8(composite(canvas, coverage, colour))[0]
        hue_bins, size_bins, x_bins, y_bins = STILL_ATTRIBUTE_BINS
        attributes[i] = (
            min(int(hue * hue_bins), hue_bins - 1),
            min(int((relative_radius - 0.18) / 0.16 * size_bins), size_bins - 1),
            min(int(centre[0] / size * x_bins), x_bins - 1),
            min(int(centre[1] / size * y_bins), y_bins - 1),
        )
    if with_attributes:
        return images, labels.astype(np.int64), list(STILL_CLASSES), attributes
    return images, labels.astype(np.int64), list(STILL_CLASSES)


# --------------------------------------------------------------------------------------- motion clips


def motion_class_names() -> list[str]:
    return [template.replace("[", "").replace("]", "") for template in MOTION_TEMPLATES]


def render_motion_clip(label: int, rng: np.random.Generator, size: int = FRAME_SIZE) -> tuple[np.ndarray, str]:
    """(T, size, size, 3) uint8 frames of motion class `label`, and the moving shape's name.

    Odd labels are the even label's clip reversed in time: identical frame sets, opposite order.
    """
    if not 0 <= label < len(MOTION_TEMPLATES):
        raise ValueError(f"motion label {label} outside 0..{len(MOTION_TEMPLATES) - 1}")
    kind = MOTION_KINDS[label // 2]
    canvas = np.broadcast_to(random_background(rng, size), (NUM_FRAMES, size, size, 3))
    for _ in range(int(rng.integers(0, 2))):
        canvas = _draw_distractor(canvas, rng, size)
    shape = str(rng.choice(ROTATION_SHAPES if kind == "rotation" else SHAPES))
    coverage = _forward_motion_coverage(kind, shape, rng, size)
    colour = hsv_colour(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    frames = to_uint8(composite(canvas, coverage, colour))
    if label % 2 == 1:
        frames = frames[::-1]
    return np.ascontiguousarray(frames), shape


def _draw_distractor(canvas: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A shape that stays put or drifts slowly in a random direction (symmetric in time)."""
    shape = str(rng.choice(SHAPES))
    radius = rng.uniform(0.07, 0.12) * size
    start = rng.uniform(radius, size - radius, 2)
    speed = 0.0 if rng.random() < 0.5 else rng.uniform(0.1, 0.4)  # pixels per frame, slower than the actor
    heading = rng.uniform(0, 2 * np.pi)
    t = np.arange(NUM_FRAMES, dtype=np.float32) - (NUM_FRAMES - 1) / 2
    centre_x = start[0] + speed * np.cos(heading) * t
    centre_y = start[1] + speed * np.sin(heading) * t
    coverage = render_shape(shape, size, centre_x, centre_y, radius, rng.uniform(0, 2 * np.pi))
    colour = hsv_colour(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))
    return composite(canvas, coverage, colour)


def _forward_motion_coverage(kind: str, shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Coverage (T, size, size) of the actor for the first class of a pair: left->right, up, growing,
    clockwise, appearing."""
    progress = np.linspace(0.0, 1.0, NUM_FRAMES, dtype=np.float32)
    radius = rng.uniform(0.12, 0.17) * size
    angle = rng.uniform(0, 2 * np.pi)
    margin = radius + 1
    centre = rng.uniform(margin, size - margin, 2)
    if kind in ("horizontal", "vertical"):
        distance = rng.uniform(0.45, 0.6) * size
        start = rng.uniform(margin, size - margin - distance)
        path = start + distance * progress
        if kind == "horizontal":  # left to right
            return render_shape(shape, size, path, centre[1], radius, angle)
        return render_shape(shape, size, centre[0], size - path, radius, angle)  # bottom to top
    if kind == "size":  # growing
        small, large = rng.uniform(0.06, 0.09) * size, rng.uniform(0.18, 0.24) * size
        centre = rng.uniform(large + 1, size - large - 1, 2)
        return render_shape(shape, size, centre[0], centre[1], small + (large - small) * progress, angle)
    if kind == "rotation":  # clockwise: the angle grows
        turn = rng.uniform(0.5, 1.25) * np.pi
        return render_shape(shape, size, centre[0], centre[1], radius, angle + turn * progress)
    if kind == "fade":  # appearing: opacity 0 -> 1 over a random stretch of the clip
        fade_start = rng.uniform(0.0, 0.35)
        fade_end = rng.uniform(0.65, 1.0)
        opacity = np.clip((progress - fade_start) / (fade_end - fade_start), 0.0, 1.0)
        return render_shape(shape, size, centre[0], centre[1], radius, angle) * opacity[:, None, None]
    raise ValueError(f"unknown motion kind {kind!r}")


# ----------------------------------------------------------------------------------- appearance clips


def appearance_class_names() -> list[str]:
    return list(APPEARANCE_OBJECTS)


def render_appearance_clip(label: int, rng: np.random.Generator, size: int = FRAME_SIZE) -> np.ndarray:
    """(T, size, size, 3) uint8 frames of appearance class `label`: its object (shape and hue band), with
    random drift, jitter, spin and background that say nothing about the class."""
    names = appearance_class_names()
    if not 0 <= label < len(names):
        raise ValueError(f"appearance label {label} outside 0..{len(names) - 1}")
    shape, hue = APPEARANCE_OBJECTS[names[label]]
    hue = (hue + rng.uniform(-APPEARANCE_HUE_SPREAD, APPEARANCE_HUE_SPREAD)) % 1.0
    colour = hsv_colour(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))
    radius = rng.uniform(0.16, 0.24) * size
    t = np.arange(NUM_FRAMES, dtype=np.float32) - (NUM_FRAMES - 1) / 2
    heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.8)
    reach = radius + speed * NUM_FRAMES / 2 + 2
    start = rng.uniform(reach, size - reach, 2) if reach < size / 2 else np.full(2, size / 2)
    jitter = rng.normal(0.0, 0.6, (2, NUM_FRAMES))
    centre_x = start[0] + speed * np.cos(heading) * t + jitter[0]
    centre_y = start[1] + speed * np.sin(heading) * t + jitter[1]
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.05, 0.05) * t
    canvas = random_background(rng, size)[None]
    coverage = render_shape(shape, size, centre_x, centre_y, radius, angle)
    return to_uint8(composite(canvas, coverage, colour))


# ------------------------------------------------------------------------------------------------ video


def _weighted_channels(rgb: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    # Elementwise, not `rgb @ weights`: BLAS results vary with its thread count, and so would the files.
    return rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1] + rgb[..., 2] * weights[2]


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> I420 planes stacked as (..., H * 3 / 2, W): BT.601, limited range.

    Done here rather than by swscale, whose SIMD paths depend on buffer alignment; together with avoiding
    BLAS this makes the same seed give byte-identical files.
    """
    *lead, height, width, _ = frames.shape
    rgb = frames.astype(np.float32)
    luma = 16.0 + _weighted_channels(rgb, (0.256788, 0.504129, 0.097906))
    # Chroma of each 2x2 block from the block's mean colour.
    block_mean = rgb.reshape(*lead, height // 2, 2, width // 2, 2, 3).mean(axis=(-4, -2))
    blue_diff = 128.0 + _weighted_channels(block_mean, (-0.148223, -0.290993, 0.439216))
    red_diff = 128.0 + _weighted_channels(block_mean, (0.439216, -0.367788, -0.071427))
    chroma_shape = (*lead, height // 4, width)  # each chroma plane, rows of two half-width lines
    planes = np.concatenate([luma, blue_diff.reshape(chroma_shape), red_diff.reshape(chroma_shape)], axis=-2)
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def write_video(
    path: Path, frames: np.ndarray, codec: str, fps: int = FPS, keyframe_interval: int | None = None
) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames as yuv420p with high quality and byte-reproducible output.

    `codec` is "libx264" (for .mp4) or "libvpx-vp9" (for .webm); H and W must be even.
    """
    if codec not in VIDEO_OPTIONS:
        raise ValueError(f"unsupported codec {codec!r}; choose one of {', '.join(VIDEO_OPTIONS)}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with even H and W, got {frames.shape}")

    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps, options=dict(VIDEO_OPTIONS[codec]))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        for index, planes in enumerate(rgb_to_yuv420p(frames)):
            video_frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            # Explicit timestamps: without them x264's rate control gave different files from the same frames.
            video_frame.pts = index
            video_frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


# --------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _VideoJob:
    """One video to render and write; `kind` picks the renderer. Jobs are independent (parallel-safe)."""

    kind: str  # "motion" or "appearance"
    label: int
    entropy: tuple[int, ...]  # seeds the video's own random generator
    path: Path


def _run_job(job: _VideoJob) -> str:
    rng = np.random.default_rng(list(job.entropy))
    if job.kind == "motion":
        frames, shape = render_motion_clip(job.label, rng)
        write_video(job.path, frames, "libvpx-vp9")
        return shape
    write_video(job.path, render_appearance_clip(job.label, rng), "libx264")
    return ""


def _balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    return [int(label) for label in rng.permutation(np.arange(count) % num_classes)]


def _write_motion_dataset(folder: Path, seed: int, num_train: int, num_val: int, run: Callable) -> None:
    """SSv2 layout: labels.json, train.json, validation.json, videos `20bn-something-something-v2/{id}.webm`."""
    video_folder = folder / SSV2_VIDEO_FOLDER
    video_folder.mkdir(parents=True)
    class_names = motion_class_names()
    (folder / "labels.json").write_text(
        json.dumps({name: str(index) for index, name in enumerate(class_names)}, indent=1) + "\n"
    )
    splits = {"train.json": (0, num_train), "validation.json": (1, num_val)}
    jobs: dict[str, list[_VideoJob]] = {}
    next_id = 1
    for file_name, (split_code, count) in splits.items():
        labels = _balanced_labels(count, len(class_names), np.random.default_rng([seed, 1, split_code]))
        jobs[file_name] = []
        for number, label in enumerate(labels):
            video_id = str(next_id)
            next_id += 1
            jobs[file_name].append(
                _VideoJob("motion", label, (seed, 1, split_code, number), video_folder / f"{video_id}.webm")
            )
    shapes = run([job for split_jobs in jobs.values() for job in split_jobs])
    shape_of = dict(zip([job.path for split_jobs in jobs.values() for job in split_jobs], shapes, strict=True))
    for file_name, split_jobs in jobs.items():
        entries = [_ssv2_entry(job, shape_of[job.path]) for job in split_jobs]
        # One entry per line, like the published files.
        text = "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n"
        (folder / file_name).write_text(text)


def _ssv2_entry(job: _VideoJob, shape: str) -> dict:
    template = MOTION_TEMPLATES[job.label]
    placeholder = shape.replace("_", " ")
    return {
        "id": job.path.stem,
        "label": template.replace("[something]", placeholder),
        "template": template,
        "placeholders": [placeholder],
    }


def _write_appearance_dataset(folder: Path, seed: int, num_train: int, num_val: int, run: Callable) -> None:
    """Kinetics layout: train.csv, validate.csv, videos `{train,val}/{label_with_underscores}/{id}_{s}_{e}.mp4`."""
    class_names = appearance_class_names()
    duration = NUM_FRAMES // FPS
    splits = {"train.csv": ("train", 0, num_train), "validate.csv": ("val", 1, num_val)}
    jobs: list[_VideoJob] = []
    rows: dict[str, list[list[str]]] = {}
    for csv_name, (split, split_code, count) in splits.items():
        labels = _balanced_labels(count, len(class_names), np.random.default_rng([seed, 2, split_code]))
        rows[csv_name] = []
        for number, label in enumerate(labels):
            youtube_id = f"syn{split_code}{number:07d}"  # 11 characters, like YouTube ids
            label_name = class_names[label]
            label_folder = folder / split / label_name.replace(" ", "_")
            label_folder.mkdir(parents=True, exist_ok=True)
            file_name = f"{youtube_id}_{0:06d}_{duration:06d}.mp4"
            jobs.append(_VideoJob("appearance", label, (seed, 2, split_code, number), label_folder / file_name))
            rows[csv_name].append([label_name, youtube_id, "0", str(duration), split])
    run(jobs)
    for csv_name, split_rows in rows.items():
        with open(folder / csv_name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(split_rows)


SYNTHETIC_WRITERS = {"synthetic-motion": _write_motion_dataset, "synthetic-appearance": _write_appearance_dataset}


# ------------------------------------------------------------------------------------------ generation


def default_cache_dir() -> Path:
    """`$PEFT_BENCH_CACHE/data`, by default ~/.cache/peft_bench/data."""
    return Path(os.environ.get("PEFT_BENCH_CACHE", Path.home() / ".cache" / "peft_bench")) / "data"


def synthetic_folder_name(name: str, seed: int, num_train: int, num_val: int) -> str:
    return f"{name}-seed{seed}-train{num_train}-val{num_val}-v{GENERATOR_VERSION}"


def ensure_synthetic(
    name: str,
    root: Path,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    workers: int | None = None,
) -> Path:
    """The folder of synthetic dataset `name` under `root`, generated on first use and reused after.

    Parameters go into the folder name, so different seeds or counts live side by side. Generation writes
    into a temporary folder that is renamed into place at the end, so a killed run never leaves half a
    dataset behind.
    """
    if name not in SYNTHETIC_WRITERS:
        raise ValueError(f"unknown synthetic dataset {name!r}; available: {', '.join(SYNTHETIC_WRITERS)}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be positive, got {num_train} and {num_val}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / synthetic_folder_name(name, seed, num_train, num_val)
    expected = {"name": name, "seed": seed, "num_train": num_train, "num_val": num_val, "version": GENERATOR_VERSION}
    if _is_complete(final, expected):
        return final
    if final.exists():  # not made by a finished generation: a stale or hand-edited copy
        log.warning("regenerating %s: its marker is missing or does not match", final)
        shutil.rmtree(final)
    _remove_abandoned_temporaries(root, final.name)
    temporary = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        started = time.perf_counter()
        runner = _JobRunner(workers)
        log.info(
            "writing %s (%d videos, once) with %d process%s",
            final,
            num_train + num_val,
            runner.workers,
            "es" if runner.workers > 1 else "",
        )
        with runner as run:
            SYNTHETIC_WRITERS[name](temporary, seed, num_train, num_val, run)
        marker = dict(expected, seconds=round(time.perf_counter() - started, 2))
        (temporary / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n")
        try:
            os.rename(temporary, final)
        except OSError:
            if not _is_complete(final, expected):  # another process did not win the race: a real failure
                raise
            log.info("%s was generated concurrently by another process; using that one", final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    log.info("generated %s in %.1f s", final, marker["seconds"])
    return final


def _is_complete(folder: Path, expected: dict) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(key) == value for key, value in expected.items())


def _remove_abandoned_temporaries(root: Path, final_name: str) -> None:
    """Temporary folders of generations whose process is gone (killed runs) on this machine."""
    for candidate in root.glob(f".{final_name}.tmp-*"):
        try:
            pid = int(candidate.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not process_alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (the owner of a temporary folder or file may have died)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _default_workers() -> int:
    if multiprocessing.current_process().daemon:  # e.g. inside a DataLoader worker: no child processes allowed
        return 1
    return usable_cpu_count()  # videos are independent and the output does not depend on the count


class _JobRunner:
    """Context giving `run(jobs) -> results in order`, in worker processes when more than one core helps."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers if workers is not None else _default_workers()
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Callable[[list[_VideoJob]], list[str]]:
        if self.workers > 1:
            # fork is cheap and needs no re-import; the jobs touch only numpy and PyAV.
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        return self.run

    def run(self, jobs: list[_VideoJob]) -> list[str]:
        if self.pool is None:
            return [_run_job(job) for job in jobs]
        return list(self.pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (self.workers * 8))))

    def __exit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()
