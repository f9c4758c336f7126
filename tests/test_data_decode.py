"""Frame decoding: exact frames with each backend, partial decoding, clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from peft_bench.data import decode
from peft_bench.data.decode import VideoDecodeError, count_frames, read_clip, read_frames
from peft_bench.data.synthetic import write_video

NUM_FRAMES = 48
KEYFRAME_INTERVAL = 8
BITS = 8
BAR_WIDTH = 8


def index_frames(num_frames: int, size: int = 64) -> np.ndarray:
    """Frames whose index is written as 8 black/white bars (bit b set -> bar b white)."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for index in range(num_frames):
        for bit in range(BITS):
            if index >> bit & 1:
                frames[index, :, bit * BAR_WIDTH : (bit + 1) * BAR_WIDTH] = 255
    return frames


def frame_index(frame: np.ndarray) -> int:
    """Read back the index of a frame made by `index_frames` (bar centres only, away from blurred edges)."""
    centres = [frame[:, bit * BAR_WIDTH + 2 : (bit + 1) * BAR_WIDTH - 2].mean() for bit in range(BITS)]
    return sum(1 << bit for bit, value in enumerate(centres) if value > 127)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decode")
    frames = index_frames(NUM_FRAMES)
    paths = {"mp4": folder / "index.mp4", "webm": folder / "index.webm"}
    # Keyframes every 8 frames, so reading late frames really has to seek.
    write_video(paths["mp4"], frames, "libx264", keyframe_interval=KEYFRAME_INTERVAL)
    write_video(paths["webm"], frames, "libvpx-vp9", keyframe_interval=KEYFRAME_INTERVAL)
    return paths


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, videos) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    files = {
        "zero-byte": folder / "empty.mp4",
        "text": folder / "notes.mp4",
        "truncated-mp4": folder / "truncated.mp4",
        "missing": folder / "missing.mp4",
    }
    files["zero-byte"].write_bytes(b"")
    files["text"].write_text("this is not a video\n")
    files["truncated-mp4"].write_bytes(videos["mp4"].read_bytes()[:1500])
    return files


ORDERS = [
    [0],
    [47, 3, 3, 17, 0, 9, 9, 46],
    [5, 4, 3, 2, 1, 0],
    [40, 41, 40],
    list(range(0, NUM_FRAMES, 6)),
]
BACKEND_CASES = [("mp4", "decord"), ("mp4", "pyav"), ("mp4", "auto"), ("webm", "pyav"), ("webm", "auto")]


@pytest.mark.parametrize("container,backend", BACKEND_CASES)
@pytest.mark.parametrize("indices", ORDERS, ids=lambda order: "-".join(map(str, order)))
def test_read_frames_returns_exactly_the_frames_asked_for(videos, container, backend, indices):
    frames = read_frames(videos[container], indices, backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), 64, 64, 3)
    assert [frame_index(frame) for frame in frames] == indices


@pytest.mark.parametrize("container,backend", BACKEND_CASES)
def test_count_frames(videos, container, backend):
    assert count_frames(videos[container], backend=backend) == NUM_FRAMES


def test_webm_has_no_frame_count_so_pyav_counts_by_decoding(videos):
    with av.open(str(videos["webm"])) as container:
        assert container.streams.video[0].frames == 0  # the path exercised by the webm cases above


def test_auto_sends_webm_to_pyav_and_never_to_decord(videos, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decord must not be used for .webm in auto mode")

    monkeypatch.setattr(decode, "_read_with_decord", refuse)
    assert [frame_index(f) for f in read_frames(videos["webm"], [30, 2], backend="auto")] == [30, 2]


def test_auto_falls_back_to_pyav_when_decord_cannot_open(videos, monkeypatch):
    import decord

    def cannot_open(*args, **kwargs):
        raise RuntimeError("simulated demuxer failure")

    monkeypatch.setattr(decord, "VideoReader", cannot_open)
    assert [frame_index(f) for f in read_frames(videos["mp4"], [33, 1], backend="auto")] == [33, 1]
    with pytest.raises(VideoDecodeError, match="simulated demuxer failure"):
        read_frames(videos["mp4"], [1], backend="decord")


class CountingContainer:
    """Wraps a PyAV container and counts the frames its decoder hands out."""

    def __init__(self, container) -> None:
        self.container = container
        self.decoded = 0

    def seek(self, *args, **kwargs):
        return self.container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


def test_pyav_seeks_and_decodes_only_the_needed_stretch(videos):
    with av.open(str(videos["mp4"])) as container:
        counting = CountingContainer(container)
        frames = decode._decode_pyav_indices(videos["mp4"], counting, container.streams.video[0], [42, 44])
    assert [frame_index(frame) for frame in frames] == [42, 44]
    # From the keyframe at 40 to 44 (plus decoder delay), far from the 45 frames a full decode would take.
    assert counting.decoded <= 2 * KEYFRAME_INTERVAL


def test_read_clip_lets_the_caller_choose_from_the_frame_count(videos):
    frames, used = read_clip(videos["webm"], lambda num_frames: [num_frames - 1, 0])
    assert used == [NUM_FRAMES - 1, 0]
    assert [frame_index(frame) for frame in frames] == used


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
@pytest.mark.parametrize("indices", [[NUM_FRAMES], [-1], [0, 100]])
def test_indices_out_of_range_are_errors(videos, backend, indices):
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(videos["mp4"], indices, backend=backend)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
@pytest.mark.parametrize(
    "kind,cause",
    [
        ("zero-byte", "empty"),
        ("text", "could not open"),
        ("truncated-mp4", "could not open"),
        ("missing", "does not exist"),
    ],
)
def test_broken_files_raise_a_decode_error_naming_path_and_cause(broken_files, backend, kind, cause):
    path = broken_files[kind]
    with pytest.raises(VideoDecodeError, match=cause) as raised:
        read_frames(path, [0], backend=backend)
    assert str(path) in str(raised.value)
    assert raised.value.path == str(path)
    with pytest.raises(VideoDecodeError):
        count_frames(path, backend=backend)


def test_truncated_webm_is_an_error_for_frames_past_the_cut(tmp_path, videos):
    truncated = tmp_path / "truncated.webm"
    truncated.write_bytes(videos["webm"].read_bytes()[: videos["webm"].stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=str(truncated)):
        read_frames(truncated, [NUM_FRAMES - 1])


def test_unknown_backend_is_rejected(videos):
    with pytest.raises(ValueError, match="unknown video backend"):
        read_frames(videos["mp4"], [0], backend="opencv")
