"""Dense and segment frame samplers against the released ST-Adapter code's formulas, including videos shorter
than a clip, and the earlier (legacy) formulas kept for measuring the difference."""

from __future__ import annotations

import random

import pytest

from peft_bench.data.sampling import dense_indices, segment_indices

# ------------------------------------------------------------------ the released formulas, written out
# linziyi96/st-adapter at b914b38, video_dataset/dataset.py. Training draws with np.random.randint(a, b),
# whose upper end b is excluded.


def released_dense_training_choices(num_video_frames: int, num_frames: int, stride: int) -> set[tuple[int, ...]]:
    """Every clip _random_sample_frame_idx can return for sampling_rate = stride."""
    if stride * (num_frames - 1) + 1 >= num_video_frames:
        indices: list[int] = []
        for i in range(num_frames):
            indices.append(i * stride if i * stride < num_video_frames else indices[-1])
        return {tuple(indices)}
    starts = range(num_video_frames - stride * (num_frames - 1))  # np.random.randint(len - stride * (n - 1))
    return {tuple(range(start, start + stride * num_frames, stride)) for start in starts}


def released_dense_test(num_video_frames: int, num_frames: int, stride: int, num_views: int) -> list[list[int]]:
    """_generate_temporal_crops: pad with the last frame to the clip's length, then spread the views."""
    frames = list(range(num_video_frames))
    seg_len = (num_frames - 1) * stride + 1
    if len(frames) < seg_len:
        frames += [frames[-1]] * (seg_len - len(frames))
    slide_len = len(frames) - seg_len
    crops = []
    for i in range(num_views):
        st = slide_len // 2 if num_views == 1 else round(slide_len / (num_views - 1) * i)
        crops.append(frames[st : st + num_frames * stride : stride])
    return crops


def released_segment_bounds(num_video_frames: int, num_frames: int) -> list[tuple[int, int]]:
    seg_size = (num_video_frames - 1) / num_frames
    return [(round(seg_size * i), round(seg_size * (i + 1))) for i in range(num_frames)]


def released_segment_test(num_video_frames: int, num_frames: int) -> list[int]:
    return [(start + end) // 2 for start, end in released_segment_bounds(num_video_frames, num_frames)]


# ------------------------------------------------------------------------------------------ dense


@pytest.mark.parametrize("num_video_frames", [1, 5, 50, 112, 113, 114, 120, 300, 301])
@pytest.mark.parametrize("num_views", [1, 2, 3])
def test_dense_test_clips_follow_the_released_formula(num_video_frames, num_views):
    ours = [
        dense_indices(num_video_frames, 8, 16, train=False, clip_index=c, num_clips=num_views) for c in range(num_views)
    ]
    assert ours == released_dense_test(num_video_frames, 8, 16, num_views)


@pytest.mark.parametrize("num_video_frames", [1, 20, 50, 112, 113, 114, 130, 300])
def test_dense_training_clips_are_exactly_the_released_choices(num_video_frames):
    rng = random.Random(0)
    expected = released_dense_training_choices(num_video_frames, 8, 16)
    drawn = {tuple(dense_indices(num_video_frames, 8, 16, train=True, rng=rng)) for _ in range(3000)}
    assert drawn == expected  # nothing outside, and every possible window comes up


def test_k400_clip_spans_113_frames_and_the_last_test_clip_ends_at_the_last_frame():
    clips = [dense_indices(300, 8, 16, train=False, clip_index=c, num_clips=3) for c in range(3)]
    assert [clip[-1] - clip[0] + 1 for clip in clips] == [113, 113, 113]
    assert clips[0][0] == 0 and clips[-1][-1] == 299
    assert [clip[0] for clip in clips] == [0, 94, 187]  # round(187 / 2) = 94: Python rounds half to even


def test_dense_short_video_differs_between_training_and_test_as_released():
    # Training repeats the last index on the stride; test pads with the video's last frame.
    assert dense_indices(50, 8, 16, train=True, rng=random.Random(0)) == [0, 16, 32, 48, 48, 48, 48, 48]
    assert dense_indices(50, 8, 16, train=False) == [0, 16, 32, 48, 49, 49, 49, 49]


def test_dense_training_is_reproducible_with_a_seeded_rng():
    first = [dense_indices(500, 8, 16, train=True, rng=random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


@pytest.mark.parametrize("formula", ["released", "legacy"])
@pytest.mark.parametrize("train", [True, False])
def test_dense_one_frame_video(formula, train):
    indices = dense_indices(1, 8, 16, train=train, num_clips=3, clip_index=2, rng=random.Random(0), formula=formula)
    assert indices == [0] * 8


# ----------------------------------------------------------------------------------------- segment


@pytest.mark.parametrize("num_video_frames", [*list(range(1, 60)), 80, 117, 200])
def test_segment_test_frames_follow_the_released_formula(num_video_frames):
    assert segment_indices(num_video_frames, 8, train=False) == released_segment_test(num_video_frames, 8)


def test_segment_test_frames_differ_from_the_legacy_middles():
    assert segment_indices(16, 8, train=False) == [1, 3, 5, 7, 8, 10, 12, 14]
    assert segment_indices(16, 8, train=False, formula="legacy") == [1, 3, 5, 7, 9, 11, 13, 15]


@pytest.mark.parametrize("num_video_frames", [3, 16, 45, 80])
def test_segment_training_draws_every_frame_of_each_released_segment_and_nothing_else(num_video_frames):
    rng = random.Random(1)
    bounds = released_segment_bounds(num_video_frames, 8)
    seen: list[set[int]] = [set() for _ in range(8)]
    for _ in range(1500):
        for segment, index in enumerate(segment_indices(num_video_frames, 8, train=True, rng=rng)):
            seen[segment].add(index)
    assert seen == [set(range(start, end + 1)) for start, end in bounds]  # np.random.randint(start, end + 1)


@pytest.mark.parametrize("formula", ["released", "legacy"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("num_video_frames", [1, 2, 3, 7, 9, 13])
def test_segment_short_and_uneven_videos_stay_in_range_and_in_order(formula, train, num_video_frames):
    rng = random.Random(2)
    for _ in range(50):
        indices = segment_indices(num_video_frames, 8, train=train, rng=rng, formula=formula)
        assert len(indices) == 8
        assert all(0 <= i < num_video_frames for i in indices)
        assert indices == sorted(indices)


# ------------------------------------------------------------------------------------ legacy formulas


def test_legacy_dense_windows_span_num_frames_times_stride():
    clips = [dense_indices(300, 8, 16, train=False, clip_index=c, num_clips=3, formula="legacy") for c in range(3)]
    assert [clip[0] for clip in clips] == [0, 86, 172]
    assert clips[-1][-1] == 284  # 15 frames before the end
    assert dense_indices(300, 8, 16, train=False, formula="legacy")[0] == (300 - 128) // 2
    assert dense_indices(20, 8, 4, train=True, rng=random.Random(0), formula="legacy") == [0, 4, 8, 12, 16, 19, 19, 19]


def test_legacy_segments_are_floor_of_k_plus_u_times_length():
    assert segment_indices(80, 8, train=False, formula="legacy") == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(3, 8, train=False, formula="legacy") == [0, 0, 0, 1, 1, 2, 2, 2]
    rng = random.Random(1)
    for _ in range(200):
        indices = segment_indices(80, 8, train=True, rng=rng, formula="legacy")
        assert all(k * 10 <= index < (k + 1) * 10 for k, index in enumerate(indices))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: dense_indices(0, 8, 16, train=False), "num_video_frames must be at least 1, got 0"),
        (lambda: dense_indices(10, 0, 16, train=False), "num_frames must be at least 1, got 0"),
        (lambda: dense_indices(10, 8, 0, train=False), "stride must be at least 1, got 0"),
        (lambda: dense_indices(10, 8, 1, train=False, clip_index=3, num_clips=3), r"clip_index 3 outside 0\.\.2"),
        (lambda: dense_indices(10, 8, 1, train=False, formula="slowfast"), "formula must be one of .* got 'slowfast'"),
        (lambda: segment_indices(0, 8, train=False), "num_video_frames must be at least 1, got 0"),
        (lambda: segment_indices(10, 0, train=True), "num_segments must be at least 1, got 0"),
        (lambda: segment_indices(10, 8, train=True, formula="tsn"), "formula must be one of .* got 'tsn'"),
    ],
)
def test_invalid_arguments_are_rejected_with_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
