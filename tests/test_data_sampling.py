"""Dense and segment frame samplers, including videos shorter than a clip."""

from __future__ import annotations

import random

import pytest

from peft_bench.data.sampling import dense_indices, segment_indices


def test_dense_training_clip_is_a_strided_window_anywhere_in_the_video():
    rng = random.Random(0)
    starts = set()
    for _ in range(400):
        indices = dense_indices(300, 8, 16, train=True, rng=rng)
        assert len(indices) == 8
        assert all(b - a == 16 for a, b in zip(indices, indices[1:]))
        assert 0 <= indices[0] and indices[-1] < 300
        starts.add(indices[0])
    # Window of 128 frames in 300: starts 0..172, and the draws should cover most of them.
    assert min(starts) <= 5 and max(starts) >= 167 and len(starts) > 100


def test_dense_training_is_reproducible_with_a_seeded_rng():
    first = [dense_indices(500, 8, 16, train=True, rng=random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_dense_test_clips_are_evenly_spaced_from_first_to_last_start():
    clips = [dense_indices(300, 8, 16, train=False, clip_index=c, num_clips=3) for c in range(3)]
    assert [clip[0] for clip in clips] == [0, 86, 172]
    assert clips[-1][-1] == 172 + 7 * 16 == 284


def test_dense_single_test_clip_is_centred():
    indices = dense_indices(300, 8, 16, train=False)
    assert indices[0] == (300 - 128) // 2


@pytest.mark.parametrize("train", [True, False])
def test_dense_short_video_repeats_its_last_frame(train):
    indices = dense_indices(20, 8, 4, train=train, rng=random.Random(0))
    assert indices == [0, 4, 8, 12, 16, 19, 19, 19]


@pytest.mark.parametrize("train", [True, False])
def test_dense_one_frame_video(train):
    assert dense_indices(1, 8, 16, train=train, num_clips=3, clip_index=2, rng=random.Random(0)) == [0] * 8


def test_segment_test_takes_the_middle_of_each_segment():
    assert segment_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert segment_indices(80, 8, train=False) == [5, 15, 25, 35, 45, 55, 65, 75]


def test_segment_training_takes_one_random_frame_inside_each_segment():
    rng = random.Random(1)
    seen = [set() for _ in range(8)]
    for _ in range(300):
        indices = segment_indices(80, 8, train=True, rng=rng)
        for segment, index in enumerate(indices):
            assert segment * 10 <= index < (segment + 1) * 10
            seen[segment].add(index)
    assert all(len(frames) == 10 for frames in seen)  # every frame of every segment gets drawn


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("num_video_frames", [1, 2, 3, 7, 9, 13])
def test_segment_short_and_uneven_videos_stay_in_range_and_in_order(train, num_video_frames):
    rng = random.Random(2)
    for _ in range(50):
        indices = segment_indices(num_video_frames, 8, train=train, rng=rng)
        assert len(indices) == 8
        assert all(0 <= i < num_video_frames for i in indices)
        assert indices == sorted(indices)


def test_segment_short_video_repeats_frames_evenly():
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert set(segment_indices(5, 8, train=False)) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "call",
    [
        lambda: dense_indices(0, 8, 16, train=False),
        lambda: dense_indices(10, 0, 16, train=False),
        lambda: dense_indices(10, 8, 0, train=False),
        lambda: dense_indices(10, 8, 1, train=False, clip_index=3, num_clips=3),
        lambda: segment_indices(0, 8, train=False),
        lambda: segment_indices(10, 0, train=True),
    ],
)
def test_invalid_arguments_are_rejected(call):
    with pytest.raises(ValueError):
        call()
