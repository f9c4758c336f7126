"""Frame decoding: exact frames with every decoder, partial decoding, clear errors for broken files.

A decoder that cannot run here (not installed, or without FFmpeg's shared libraries) skips its cases,
saying why.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from peft_bench.benchmarks.loader_speed import CountingDecoder  # the benchmark's packet and frame counter
from peft_bench.data import decode
from peft_bench.data.decode import (
    DECODERS,
    DecoderUnavailableError,
    VideoDecodeError,
    check_decoder,
    count_frames,
    decoder_unavailable_reason,
    read_clip,
    read_frames,
)
from peft_bench.data.prepare import EncodeSettings, transcode
from peft_bench.data.synthetic import write_video

NUM_FRAMES = 48


def runnable(backend: str):
    """`backend` as a test parameter that skips, with the reason, where that decoder cannot run."""
    reason = decoder_unavailable_reason(backend)
    return pytest.param(backend, marks=pytest.mark.skipif(reason is not None, reason=str(reason)), id=backend)


def runnable_case(container: str, backend: str):
    reason = decoder_unavailable_reason(backend)
    return pytest.param(
        container,
        backend,
        marks=pytest.mark.skipif(reason is not None, reason=str(reason)),
        id=f"{container}-{backend}",
    )


EVERY_BACKEND = [runnable(name) for name in ("auto", *DECODERS)]
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


# Scene-cut detection off: x264 would otherwise start a new group of pictures where the index bars change.
ONE_KEYFRAME_OPTIONS = {
    "libx264": {"crf": "12", "preset": "veryfast", "x264-params": "keyint=300:scenecut=0"},
    "libvpx-vp9": {"crf": "12", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "g": "300"},
}


def write_one_keyframe_video(path: Path, frames: np.ndarray, codec: str) -> None:
    """Frames encoded with one keyframe, at the start: the long groups of pictures of downloaded videos."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30, options=ONE_KEYFRAME_OPTIONS[codec])
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decode")
    frames = index_frames(NUM_FRAMES)
    paths = {"mp4": folder / "index.mp4", "webm": folder / "index.webm"}
    # Keyframes every 8 frames, so reading late frames really has to skip groups of pictures.
    write_video(paths["mp4"], frames, "libx264", keyframe_interval=KEYFRAME_INTERVAL)
    write_video(paths["webm"], frames, "libvpx-vp9", keyframe_interval=KEYFRAME_INTERVAL)
    # As downloaded: one keyframe for the whole video (x264 and libvpx default to 250 and more).
    paths["long-gop-mp4"] = folder / "long-gop.mp4"
    paths["long-gop-webm"] = folder / "long-gop.webm"
    write_one_keyframe_video(paths["long-gop-mp4"], frames, "libx264")
    write_one_keyframe_video(paths["long-gop-webm"], frames, "libvpx-vp9")
    # After `data prepare`: short groups of pictures, x264's fastdecode tuning.
    prepared = EncodeSettings(keyframe_interval=6, crf=12)
    for suffix in ("mp4", "webm"):
        paths[f"prepared-{suffix}"] = folder / f"prepared.{suffix}"
        transcode(paths[f"long-gop-{suffix}"], paths[f"prepared-{suffix}"], prepared, f".{suffix}")
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
# Every decoder on every kind of file, decord included on .webm (which `auto` never gives it).
BACKEND_CASES = [
    runnable_case(f"{kind}{suffix}", backend)
    for kind in ("", "long-gop-", "prepared-")
    for suffix in ("mp4", "webm")
    for backend in ("auto", *DECODERS)
]


@pytest.mark.parametrize("container,backend", BACKEND_CASES)
@pytest.mark.parametrize("indices", ORDERS, ids=lambda order: "-".join(map(str, order)))
def test_read_frames_returns_exactly_the_frames_asked_for(videos, container, backend, indices):
    frames = read_frames(videos[container], indices, backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), 64, 64, 3)
    assert [frame_index(frame) for frame in frames] == indices


@pytest.mark.parametrize("container,backend", BACKEND_CASES)
def test_count_frames(videos, container, backend):
    assert count_frames(videos[container], backend=backend) == NUM_FRAMES


def keyframes_and_reordering(path: Path) -> tuple[list[int], bool]:
    """Decode positions of the keyframes, and whether any frame is decoded out of display order."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    pts = [p.pts for p in packets]
    return [position for position, p in enumerate(packets) if p.is_keyframe], pts != sorted(pts)


def test_the_test_videos_have_the_structure_the_decode_tests_rely_on(videos, textured_videos):
    assert keyframes_and_reordering(videos["mp4"]) == (list(range(0, NUM_FRAMES, KEYFRAME_INTERVAL)), True)
    for suffix in ("mp4", "webm"):
        assert keyframes_and_reordering(videos[f"long-gop-{suffix}"])[0] == [0]
        assert keyframes_and_reordering(textured_videos[suffix])[0] == [0]
        assert keyframes_and_reordering(videos[f"prepared-{suffix}"])[0] == list(range(0, NUM_FRAMES, 6))
    assert keyframes_and_reordering(videos["long-gop-mp4"])[1], "B-frames: display order differs from decode order"
    with av.open(str(videos["webm"])) as container:
        assert container.streams.video[0].frames == 0  # WebM stores no frame count: the packets are counted


def test_webm_frames_are_counted_without_decoding(videos, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("counting frames must not decode any")

    monkeypatch.setattr(decode, "_decode_packets", refuse)
    assert count_frames(videos["long-gop-webm"]) == NUM_FRAMES


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_auto_reads_with_the_first_decoder_of_its_order(videos, container, monkeypatch):
    first = decode.auto_choice()
    assert first == decode.AUTO_ORDER[0] == "pyav"  # PyAV is a dependency, and the fastest measured

    def refuse(*args, **kwargs):
        raise AssertionError(f"auto mode must read with {first}")

    for name in DECODERS:
        if name != first:
            monkeypatch.setitem(decode._READERS, name, refuse)
    assert [frame_index(f) for f in read_frames(videos[container], [30, 2], backend="auto")] == [30, 2]


def pretend_unavailable(monkeypatch, *names: str) -> None:
    real_probe = decode._probe
    monkeypatch.setattr(
        decode, "_probe", lambda name: f"{name} is pretended away" if name in names else real_probe(name)
    )


@pytest.mark.parametrize("container", ["mp4", "webm"])
@pytest.mark.parametrize("second", DECODERS[1:])
def test_auto_gives_a_file_pyav_cannot_open_to_the_next_decoder_but_never_webm_to_decord(
    videos, container, second, monkeypatch
):
    if decoder_unavailable_reason(second):
        pytest.skip(str(decoder_unavailable_reason(second)))
    real_open = av.open

    def cannot_open(file, *args, **kwargs):
        if str(file) == str(videos[container]):
            raise av.error.InvalidDataError(1094995529, "simulated demuxer failure")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", cannot_open)
    pretend_unavailable(monkeypatch, *[name for name in DECODERS[1:] if name != second])
    if second == "decord" and container == "webm":  # decord numbers webm frames wrongly: no second chance
        with pytest.raises(VideoDecodeError, match="PyAV could not open it"):
            read_frames(videos[container], [33, 1], backend="auto")
    else:
        assert [frame_index(f) for f in read_frames(videos[container], [33, 1], backend="auto")] == [33, 1]
    with pytest.raises(VideoDecodeError, match="simulated demuxer failure"):
        read_frames(videos[container], [1], backend="pyav")


def test_a_decoder_that_cannot_run_stops_the_read_instead_of_counting_a_broken_video(videos, monkeypatch):
    pretend_unavailable(monkeypatch, "torchcodec")
    with pytest.raises(DecoderUnavailableError, match="torchcodec is pretended away"):
        read_frames(videos["mp4"], [0], backend="torchcodec")
    assert not issubclass(DecoderUnavailableError, VideoDecodeError)  # a dataset would count and skip those
    assert [frame_index(f) for f in read_frames(videos["mp4"], [4], backend="auto")] == [4]


def test_torchcodec_without_ffmpeg_libraries_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ffmpeg(name, *args, **kwargs):
        if name.startswith("torchcodec"):
            raise OSError("libavutil.so.59: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ffmpeg)
    reason = decode._probe.__wrapped__("torchcodec")
    assert "cannot load FFmpeg's shared libraries" in reason and "apt-get install ffmpeg" in reason


def test_decoding_on_the_gpu_is_checked_and_needs_torchcodec(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DecoderUnavailableError, match="no CUDA device"):
        check_decoder("auto", "cuda")
    with pytest.raises(DecoderUnavailableError, match="needs torchcodec, not pyav"):
        check_decoder("pyav", "cuda")
    with pytest.raises(ValueError, match="unknown decode device 'tpu'"):
        check_decoder("auto", "tpu")


@pytest.mark.skipif(
    decoder_unavailable_reason("torchcodec") is not None, reason=str(decoder_unavailable_reason("torchcodec"))
)
def test_the_gpu_path_hands_the_device_to_torchcodec_and_returns_host_frames(videos, monkeypatch):
    # No GPU here: a CUDA device is pretended, and torchcodec is told to decode on the CPU after the
    # device it was given has been recorded.
    import torch
    import torchcodec.decoders

    real_decoder, devices = torchcodec.decoders.VideoDecoder, []

    def recording(*args, device=None, **kwargs):
        devices.append(device)
        return real_decoder(*args, device="cpu", **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", recording)
    frames = read_frames(videos["mp4"], [40, 3], backend="auto", device="cuda")
    assert devices == ["cuda"] and isinstance(frames, np.ndarray)
    assert [frame_index(f) for f in frames] == [40, 3]


def decode_counting(path: Path, wanted: list[int]) -> tuple[list[int], CountingDecoder]:
    """Frame indices read back from the PyAV path's frames for `wanted`, and what its decoder did."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index = decode._index_packets(path, container, stream)
        counting = CountingDecoder(stream.codec_context)
        frames = decode._decode_wanted_frames(path, counting, index, wanted)
    return [frame_index(frame) for frame in frames], counting


def test_pyav_decodes_only_the_groups_of_pictures_holding_wanted_frames(videos):
    read, counting = decode_counting(videos["mp4"], [42, 44])
    assert read == [42, 44]
    # From the keyframe at 40 to frame 44 (decode order may put a later P-frame before it): never the
    # 40 packets before that keyframe.
    assert counting.packets_fed <= KEYFRAME_INTERVAL
    read, counting = decode_counting(videos["prepared-mp4"], [1, 25, 26])
    assert read == [1, 25, 26]
    assert counting.packets_fed <= 6 + 6  # the groups starting at 0 and 24


def test_pyav_skips_unreferenced_frames_that_are_not_wanted(videos):
    read, counting = decode_counting(videos["long-gop-mp4"], [45, 46, 47])
    assert read == [45, 46, 47]
    assert counting.packets_fed == NUM_FRAMES  # one keyframe: everything up to the last frame is needed
    assert counting.frames_decoded < NUM_FRAMES - 8  # but x264's non-reference B-frames were skipped


def test_pyav_decodes_from_the_first_packet_when_skipping_lost_a_wanted_frame(videos, monkeypatch):
    real_decode_packets = decode._decode_packets
    calls = []

    def lose_everything_when_skipping(codec_context, index, runs, wanted_pts, skip_unreferenced):
        calls.append((runs, skip_unreferenced))
        return {} if skip_unreferenced else real_decode_packets(codec_context, index, runs, wanted_pts, False)

    monkeypatch.setattr(decode, "_decode_packets", lose_everything_when_skipping)
    assert [frame_index(f) for f in read_frames(videos["mp4"], [42, 20])] == [42, 20]
    assert [skip for _, skip in calls] == [True, False]
    assert calls[1][0][0][0] == 0  # the slow, exact way: one run from the first packet


def fake_index(packets: list[tuple[int, bool]]) -> decode._PacketIndex:
    """A packet index from (pts, is_keyframe) in decode order."""
    stand_ins = [SimpleNamespace(pts=pts, is_keyframe=key, is_discard=False, size=1) for pts, key in packets]
    shown = sorted(range(len(stand_ins)), key=lambda position: stand_ins[position].pts)
    return decode._PacketIndex(stand_ins, shown, [p for p, packet in enumerate(stand_ins) if packet.is_keyframe])


def test_decode_runs_skip_groups_without_wanted_frames_and_merge_adjacent_ones():
    index = fake_index([(pts, pts % 6 == 0) for pts in range(18)])  # keyframes at 0, 6 and 12
    assert decode._decode_runs(index, [1, 2]) == [(0, 2)]
    assert decode._decode_runs(index, [14, 1]) == [(0, 1), (12, 14)]
    assert decode._decode_runs(index, [5, 6, 8]) == [(0, 8)]  # runs on through the keyframe at 6
    assert decode._decode_runs(index, [13, 13]) == [(12, 13)]


def test_decode_runs_start_open_gop_leading_frames_at_the_previous_keyframe():
    # Decode order I0 P3 B1 B2 | I6 B4 B5 P9 B7 B8: B4 and B5 are shown before I6 and refer to P3.
    index = fake_index(
        [
            (0, True),
            (3, False),
            (1, False),
            (2, False),
            (6, True),
            (4, False),
            (5, False),
            (9, False),
            (7, False),
            (8, False),
        ]
    )
    assert decode._decode_runs(index, [4]) == [(0, 5)]
    assert decode._decode_runs(index, [6]) == [(4, 4)]
    assert decode._decode_runs(index, [8]) == [(4, 9)]


def test_streams_without_timestamps_are_numbered_by_decoding_everything(videos, monkeypatch):
    monkeypatch.setattr(decode, "_index_packets", lambda *args: None)
    assert [frame_index(f) for f in read_frames(videos["long-gop-mp4"], [47, 3])] == [47, 3]
    assert count_frames(videos["webm"]) == NUM_FRAMES


def textured_frames(num_frames: int = 40, height: int = 64, width: int = 96) -> np.ndarray:
    """Noise panning under a moving bar: every pixel matters, so a frame decoded from the wrong references
    differs from the right one (index bars alone could survive that)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (height, width + num_frames, 3), dtype=np.uint8)
    frames = np.stack([noise[:, t : t + width] for t in range(num_frames)])
    for t in range(num_frames):
        frames[t, :, (3 * t) % width : (3 * t) % width + 8] = 255
    return frames


@pytest.fixture(scope="module")
def textured_videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("textured")
    paths = {"mp4": folder / "textured.mp4", "webm": folder / "textured.webm", "prepared-mp4": folder / "p.mp4"}
    write_one_keyframe_video(paths["mp4"], textured_frames(), "libx264")
    write_one_keyframe_video(paths["webm"], textured_frames(), "libvpx-vp9")
    transcode(paths["mp4"], paths["prepared-mp4"], EncodeSettings(keyframe_interval=5), ".mp4")
    return paths


def decode_everything(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        by_pts = {frame.pts: frame for frame in container.decode(stream)}
    return np.stack([by_pts[pts].to_ndarray(format="rgb24") for pts in sorted(by_pts)])


@pytest.mark.parametrize("kind", ["mp4", "webm", "prepared-mp4"])
def test_pyav_frames_are_pixel_identical_to_a_full_decode(textured_videos, kind):
    everything = decode_everything(textured_videos[kind])
    rng = np.random.default_rng(1)
    for wanted in ([39], [0, 17, 18, 33], rng.choice(len(everything), 8, replace=False).tolist()):
        assert np.array_equal(read_frames(textured_videos[kind], wanted, backend="pyav"), everything[wanted])


# ------------------------------------------------------------------ every decoder against a full decode

EXACT_FRAMES = 72
# Milliseconds between frames of the variable-frame-rate files: 20 to 100 ms, irregularly.
VFR_STEPS_MS = np.random.default_rng(2).choice([20, 33, 40, 67, 100], EXACT_FRAMES - 1)
EXACTNESS_FILES = {
    # x264 with B-frames in a pyramid: display order differs from decode order; keyframes 30 apart.
    "h264-bframes.mp4": (
        "libx264",
        {"crf": "18", "preset": "medium", "x264-params": "keyint=30:scenecut=0:bframes=3:b-pyramid=normal"},
        False,
    ),
    # libvpx's good-quality VP9 with hidden alternate reference frames, as SSv2's files are made.
    "vp9.webm": ("libvpx-vp9", {"crf": "24", "b:v": "0", "deadline": "good", "cpu-used": "4", "g": "30"}, False),
    "vfr-h264.mp4": (
        "libx264",
        {"crf": "18", "preset": "veryfast", "x264-params": "keyint=25:scenecut=0:bframes=2"},
        True,
    ),
    "vfr-vp9.webm": ("libvpx-vp9", {"crf": "24", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "g": "25"}, True),
}


def write_encoded(path: Path, frames: np.ndarray, codec: str, options: dict, variable_rate: bool) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        pts = [0, *np.cumsum(VFR_STEPS_MS).tolist()] if variable_rate else list(range(len(frames)))
        time_base = Fraction(1, 1000) if variable_rate else Fraction(1, 30)
        if variable_rate:
            stream.codec_context.time_base = stream.time_base = time_base
        for rgb, stamp in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = int(stamp), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def exactness_videos(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each file with PyAV's decode of its whole stream, frames in display order: the reference."""
    folder = tmp_path_factory.mktemp("exactness")
    frames = textured_frames(EXACT_FRAMES)
    videos = {}
    for name, (codec, options, variable_rate) in EXACTNESS_FILES.items():
        write_encoded(folder / name, frames, codec, options, variable_rate)
        videos[name] = (folder / name, decode_everything(folder / name))
    return videos


def test_the_exactness_files_have_the_structure_they_are_named_for(exactness_videos):
    for name, (path, everything) in exactness_videos.items():
        assert len(everything) == EXACT_FRAMES
        with av.open(str(path)) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        pts = [p.pts for p in packets]
        if "h264" in name:
            assert pts != sorted(pts), "B-frames: display order differs from decode order"
        durations = {b - a for a, b in itertools.pairwise(sorted(pts))}
        assert (len(durations) > 2) == name.startswith("vfr"), durations


SEEKS = [
    [EXACT_FRAMES - 1],  # the last frame alone
    [EXACT_FRAMES - 2, EXACT_FRAMES - 1, EXACT_FRAMES - 3],  # near the end, out of order
    [3, EXACT_FRAMES - 1, 4, EXACT_FRAMES - 2],  # back and forth between the start and the end
    [29, 30, 31, 59, 60, 61],  # either side of keyframes
    [10, 10, 0, 10],  # repeats
    list(range(0, EXACT_FRAMES, 9)),  # a dense clip's spread
]


@pytest.mark.parametrize("name", list(EXACTNESS_FILES))
@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_every_decoder_returns_the_frames_of_a_full_decode(exactness_videos, name, backend):
    path, everything = exactness_videos[name]
    assert count_frames(path, backend=backend) == EXACT_FRAMES
    for wanted in SEEKS:
        frames = read_frames(path, wanted, backend=backend)
        assert frames.shape == everything[wanted].shape
        for index, frame in zip(wanted, frames, strict=True):
            # The same frame, pixel for pixel: every frame differs from its neighbours everywhere.
            assert np.array_equal(frame, everything[index]), f"{backend} frame {index} of {name}"


def test_read_clip_lets_the_caller_choose_from_the_frame_count(videos):
    frames, used = read_clip(videos["webm"], lambda num_frames: [num_frames - 1, 0])
    assert used == [NUM_FRAMES - 1, 0]
    assert [frame_index(frame) for frame in frames] == used


@pytest.mark.parametrize("backend", EVERY_BACKEND)
@pytest.mark.parametrize("indices", [[NUM_FRAMES], [-1], [0, 100]])
def test_indices_out_of_range_are_errors(videos, backend, indices):
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(videos["mp4"], indices, backend=backend)


@pytest.mark.parametrize("backend", EVERY_BACKEND)
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


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_truncated_webm_is_an_error_for_frames_past_the_cut(tmp_path, videos, backend):
    truncated = tmp_path / "truncated.webm"
    truncated.write_bytes(videos["webm"].read_bytes()[: videos["webm"].stat().st_size // 2])
    if backend == "decord":  # decord counts the frames it finds: nothing past the cut can be asked for
        assert count_frames(truncated, backend=backend) < NUM_FRAMES
        return
    with pytest.raises(VideoDecodeError, match=str(truncated)):
        read_frames(truncated, [NUM_FRAMES - 1], backend=backend)


@pytest.mark.parametrize("backend", [runnable(name) for name in ("auto", "pyav", "torchcodec")])
def test_truncated_mp4_with_its_index_up_front_reads_before_the_cut_and_names_the_cut_after(tmp_path, videos, backend):
    truncated = tmp_path / "cut.mp4"  # `data prepare` writes the index (moov) first: it survives the cut
    truncated.write_bytes(videos["prepared-mp4"].read_bytes()[: videos["prepared-mp4"].stat().st_size * 3 // 4])
    assert count_frames(truncated, backend=backend) == NUM_FRAMES  # what the header declares
    assert [frame_index(f) for f in read_frames(truncated, [0, 5], backend=backend)] == [0, 5]
    with pytest.raises(VideoDecodeError, match=f"of the {NUM_FRAMES} frames its header declares"):
        read_frames(truncated, [NUM_FRAMES - 1], backend=backend)


def test_unknown_backend_is_rejected(videos):
    with pytest.raises(ValueError, match="unknown video backend"):
        read_frames(videos["mp4"], [0], backend="opencv")
