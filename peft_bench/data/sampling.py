"""Which frame indices make up a clip: dense (fixed stride) and TSN-style segment sampling."""

from __future__ import annotations

import math
import random


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    *,
    train: bool,
    clip_index: int = 0,
    num_clips: int = 1,
    rng: random.Random | None = None,
) -> list[int]:
    """`num_frames` indices `stride` apart from a window of `num_frames * stride` frames.

    Training draws the window start uniformly; testing places `num_clips` windows evenly from the first to
    the last possible start (one clip: the centre) and returns window `clip_index`. Videos shorter than the
    window repeat their last frame.
    """
    _check_positive(num_video_frames=num_video_frames, num_frames=num_frames, stride=stride, num_clips=num_clips)
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} outside 0..{num_clips - 1}")
    span = num_frames * stride
    # Slack: how far the window can move. A window of span frames covers start .. start + span - 1.
    slack = max(num_video_frames - span, 0)
    if train:
        start = (rng or random).randint(0, slack)
    elif num_clips == 1:
        start = slack // 2
    else:
        start = round(clip_index * slack / (num_clips - 1))
    last = num_video_frames - 1
    return [min(start + k * stride, last) for k in range(num_frames)]


def segment_indices(
    num_video_frames: int, num_segments: int, *, train: bool, rng: random.Random | None = None
) -> list[int]:
    """One index per equal segment of the video (TSN): a random frame of it in training, its middle at test.

    Segments are real-valued, so a video with fewer frames than segments gets each frame repeated in order
    (e.g. 3 frames, 8 segments -> 0 0 0 1 1 2 2 2 at test) and never an index out of range.
    """
    _check_positive(num_video_frames=num_video_frames, num_segments=num_segments)
    segment_length = num_video_frames / num_segments
    rng = rng or random
    indices = []
    for segment in range(num_segments):
        offset = rng.random() if train else 0.5
        index = math.floor((segment + offset) * segment_length)
        indices.append(min(index, num_video_frames - 1))
    return indices


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
