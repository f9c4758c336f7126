"""Which frame indices make up a clip: dense (fixed stride) and TSN-style segment sampling.

Two formulas per sampler. ``released`` is the released ST-Adapter code's (linziyi96/st-adapter at b914b38,
``video_dataset/dataset.py``: ``_random_sample_frame_idx`` for training, ``_generate_temporal_crops`` for test);
the recipes use it. ``legacy`` is the one peft-bench used before it, kept so that what the difference costs
can be measured (``benchmarks/recipe_differences.py``).
"""

from __future__ import annotations

import math
import random
from typing import Literal, Protocol, get_args

# "released": the released ST-Adapter code's formulas; "legacy": peft-bench's earlier ones.
FrameIndexFormula = Literal["released", "legacy"]
FRAME_INDEX_FORMULAS: tuple[FrameIndexFormula, ...] = get_args(FrameIndexFormula)


class RandomSource(Protocol):
    """What the samplers draw from: a ``random.Random``, or the ``random`` module's global one."""

    def random(self) -> float: ...
    def randint(self, a: int, b: int, /) -> int: ...


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    *,
    train: bool,
    clip_index: int = 0,
    num_clips: int = 1,
    rng: random.Random | None = None,
    formula: FrameIndexFormula = "released",
) -> list[int]:
    """`num_frames` indices `stride` apart.

    released: a window of `(num_frames - 1) * stride + 1` frames (8 at stride 16: 113). Training draws its start
    uniformly among the windows that fit; a video no longer than the window gives 0, stride, ... and repeats
    the last of those that exists. Testing spreads `num_clips` windows from the first to the last possible
    start (one clip: the middle, rounded down), and a short video repeats its last frame.

    legacy: a window of `num_frames * stride` frames (128), so the last test clip ends `stride - 1` frames
    before the video does; videos shorter than the window repeat their last frame.
    """
    _check_positive(num_video_frames=num_video_frames, num_frames=num_frames, stride=stride, num_clips=num_clips)
    _check_formula(formula)
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} outside 0..{num_clips - 1}")
    last = num_video_frames - 1
    if formula == "legacy":
        return _legacy_dense(num_video_frames, num_frames, stride, train, clip_index, num_clips, rng)
    span = (num_frames - 1) * stride + 1
    if train and span >= num_video_frames:
        in_range = last // stride * stride  # the last multiple of the stride inside the video
        return [min(k * stride, in_range) for k in range(num_frames)]
    if train:
        start = (rng or random).randrange(num_video_frames - span + 1)
    else:
        slack = max(num_video_frames - span, 0)
        start = slack // 2 if num_clips == 1 else round(slack / (num_clips - 1) * clip_index)
    return [min(start + k * stride, last) for k in range(num_frames)]


def segment_indices(
    num_video_frames: int,
    num_segments: int,
    *,
    train: bool,
    rng: random.Random | None = None,
    formula: FrameIndexFormula = "released",
) -> list[int]:
    """One index per segment of the video (TSN): a random frame of it in training, its middle at test.

    released: segment k runs from round(k * s) to round((k + 1) * s) with s = (frames - 1) / segments, both
    ends included (neighbouring segments share their boundary frame, so a training clip can hold one frame
    twice); training draws a frame of it uniformly, testing takes (start + end) // 2.

    legacy: segment k is [k * frames / segments, (k + 1) * frames / segments); training takes floor((k + u) *
    frames / segments) with u uniform in [0, 1), testing u = 0.5.

    Either way a video with fewer frames than segments repeats frames in order, never out of range.
    """
    _check_positive(num_video_frames=num_video_frames, num_segments=num_segments)
    _check_formula(formula)
    source: RandomSource = random if rng is None else rng
    if formula == "legacy":
        segment_length = num_video_frames / num_segments
        offsets = [source.random() if train else 0.5 for _ in range(num_segments)]
        return [min(math.floor((k + u) * segment_length), num_video_frames - 1) for k, u in enumerate(offsets)]
    size = (num_video_frames - 1) / num_segments
    bounds = [(round(size * k), round(size * (k + 1))) for k in range(num_segments)]
    if train:
        return [source.randint(start, end) for start, end in bounds]
    return [(start + end) // 2 for start, end in bounds]


def _legacy_dense(num_video_frames, num_frames, stride, train, clip_index, num_clips, rng) -> list[int]:
    slack = max(num_video_frames - num_frames * stride, 0)
    if train:
        start = (rng or random).randint(0, slack)
    elif num_clips == 1:
        start = slack // 2
    else:
        start = round(clip_index * slack / (num_clips - 1))
    return [min(start + k * stride, num_video_frames - 1) for k in range(num_frames)]


def _check_formula(formula: object) -> None:
    if formula not in FRAME_INDEX_FORMULAS:
        raise ValueError(f"frame index formula must be one of {FRAME_INDEX_FORMULAS}, got {formula!r}")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
