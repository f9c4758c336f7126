"""Reading selected frames from video files: three decoders behind one interface.

Only the frames that are asked for are decoded, and every decoder returns the same frames (the tests hold
each one to PyAV's decode of the whole stream: H.264 with B-frames, VP9 .webm, seeks near the end,
variable frame rate):

* `pyav`: PyAV (FFmpeg bundled with its wheel). The compressed stream is read once and only the groups of
  pictures that hold wanted frames are decoded, skipping frames nothing refers to (see the PyAV section).
* `torchcodec`: the PyTorch team's decoder, on the system's FFmpeg libraries (Debian: `apt-get install
  ffmpeg`); exact frame indexing from a scan of the file, on the CPU or, with `device="cuda"`, on the GPU.
* `decord`: optional (`pip install peft-bench[decord]`); never used for VP8/VP9 `.webm` by `auto`, where
  users report its seeking returns frames from the start of the video (on the VP9 files the tests make it
  returned the right frames; the reports are about real SSv2 files).

`auto` takes the first installed decoder of `AUTO_ORDER` (the measured order, fastest first) that suits the
file, and when that one cannot open a file, gives it to the next.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import av  # before decord, always: see below
import numpy as np
from av.video.reformatter import VideoReformatter

# decord bundles its own FFmpeg libraries; when they are loaded before PyAV's, PyAV's VP9 encoder fails
# to open ("avcodec_open2(libvpx-vp9) returned 22"). Loading PyAV first, here, in the module every decord
# user imports, keeps both working in one process.

log = logging.getLogger(__name__)

DECODERS = ("pyav", "torchcodec", "decord")
BACKENDS = ("auto", *DECODERS)
# `auto`'s preference, fastest first, by clips per second of one loader worker on Kinetics-like H.264 and
# SSv2-like VP9, raw and prepared (benchmarks/loader_speed.py; results/loader_speed.md, README's table): PyAV
# led everywhere (K400-like raw 1.72x the decode-everything baseline, prepared 3.72x), torchcodec next
# (1.29x, 3.13x), decord last (1.26x, 2.26x); on SSv2-like VP9 all three were within 8% of each other.
AUTO_ORDER = ("pyav", "torchcodec", "decord")
DECODE_DEVICES = ("cpu", "cuda")
# Containers whose codecs (VP8/VP9) decord seeks wrongly in; "auto" never sends them to decord.
_DECORD_WRONG_SUFFIXES = {".webm"}


class VideoDecodeError(RuntimeError):
    """A video could not be decoded; the message names the path and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"cannot decode video {str(path)!r}: {cause}")
        self.path = str(path)
        self.cause = cause


class DecoderUnavailableError(RuntimeError):
    """The decoder asked for cannot run here (not installed, no FFmpeg libraries, no GPU): not a video's fault."""


class _OpenError(Exception):
    """The decoder could not open the file at all (the caller may try another one)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


IndexChooser = Callable[[int], Sequence[int]]


class FrameReader(Protocol):
    """What a decoder provides (one function per decoder, listed in ``_READERS`` under its name in `DECODERS`).

    It opens `path` once, calls `choose_indices(num_frames)` with the video's frame count, and returns the frames
    at the chosen indices as uint8 RGB (len(indices), H, W, 3) in host memory, in the order chosen (an index may
    repeat), with the indices. It raises `_OpenError` when it cannot open the file at all (`auto` then gives the
    file to the next decoder) and `VideoDecodeError` when the file opens but the frames cannot be decoded.
    `device` is "cpu", or "cuda" for a decoder that can decode on the GPU.
    """

    def __call__(
        self, path: Path, choose_indices: IndexChooser, device: str = "cpu"
    ) -> tuple[np.ndarray, list[int]]: ...


def count_frames(path: str | Path, backend: str = "auto", device: str = "cpu") -> int:
    """Number of frames in the video (PyAV: its packets, counted without decoding; others: their index)."""
    count = 0

    def remember_count(num_frames: int) -> list[int]:
        nonlocal count
        count = num_frames
        return []

    read_clip(path, remember_count, backend=backend, device=device)
    return count


def read_frames(path: str | Path, indices: Sequence[int], backend: str = "auto", device: str = "cpu") -> np.ndarray:
    """uint8 array (len(indices), H, W, 3) RGB holding exactly the frames asked for, in the order asked."""
    wanted = [int(i) for i in indices]
    frames, _ = read_clip(path, lambda _num_frames: wanted, backend=backend, device=device)
    return frames


def read_clip(
    path: str | Path, choose_indices: IndexChooser, backend: str = "auto", device: str = "cpu"
) -> tuple[np.ndarray, list[int]]:
    """Open the video once, let `choose_indices(num_frames)` pick frames, and decode only those.

    Returns the frames (N, H, W, 3) uint8 RGB, in host memory, and the indices used. This spares datasets a
    second open of the file just to learn its length. `device="cuda"` decodes on the GPU (torchcodec).
    """
    path = Path(path)
    _check_readable_file(path)
    check_decoder(backend, device)
    causes = []
    for name in decoders_for(path, backend, device):
        try:
            return _READERS[name](path, choose_indices, device)
        except _OpenError as error:
            causes.append(f"{_DISPLAY_NAMES[name]} could not open it ({error.cause})")
            log.debug("%s: %s", path, causes[-1])
        except VideoDecodeError as error:
            if not causes:
                raise
            raise VideoDecodeError(path, "; ".join([*causes, f"{_DISPLAY_NAMES[name]}: {error.cause}"])) from error
    raise VideoDecodeError(path, "; ".join(causes) if causes else "no decoder suits this file")


# ------------------------------------------------------------------------------------- choosing one


def decoder_unavailable_reason(name: str) -> str | None:
    """Why decoder `name` cannot run in this process, or None when it can."""
    _check_backend(name)
    return None if name == "auto" else _probe(name)


@functools.cache
def _probe(name: str) -> str | None:
    try:
        if name == "torchcodec":
            import torchcodec.decoders  # noqa: F401  -- loads FFmpeg's shared libraries: fails without them
        elif name == "decord":
            import decord  # noqa: F401
    except ImportError as error:
        if error.name == name:
            return f"{name} is not installed (pip install peft-bench[{name}])"
        return f"{name} cannot be imported ({_short_cause(error)})"
    except Exception as error:  # noqa: BLE001  -- torchcodec raises RuntimeError/OSError without FFmpeg's libraries
        return (
            f"{name} cannot load FFmpeg's shared libraries ({_short_cause(error)}); on Debian: apt-get install ffmpeg"
        )
    return None


def available_decoders() -> list[str]:
    return [name for name in DECODERS if _probe(name) is None]


def check_decoder(backend: str, device: str = "cpu") -> None:
    """Raise DecoderUnavailableError (or ValueError for a bad name) unless `backend` can decode on `device`."""
    _check_backend(backend)
    if device not in DECODE_DEVICES:
        raise ValueError(f"unknown decode device {device!r}; choose one of {', '.join(DECODE_DEVICES)}")
    if device == "cuda":
        if backend not in ("auto", "torchcodec"):
            raise DecoderUnavailableError(f"decoding on the GPU needs torchcodec, not {backend}")
        import torch  # heavy, and only for GPU decoding: `peft-bench data` and --help load this module

        if not torch.cuda.is_available():
            raise DecoderUnavailableError("decoding on the GPU was asked for, but torch sees no CUDA device")
    wanted = "torchcodec" if device == "cuda" and backend == "auto" else backend
    if wanted != "auto" and _probe(wanted):
        raise DecoderUnavailableError(f"decoder {wanted!r} cannot run here: {_probe(wanted)}")


def decoders_for(path: Path, backend: str = "auto", device: str = "cpu") -> list[str]:
    """The decoders `read_clip` tries on `path`, in order (one, unless `backend` is "auto")."""
    if device == "cuda":
        return ["torchcodec"]
    if backend != "auto":
        return [backend]
    return [
        name
        for name in AUTO_ORDER
        if _probe(name) is None and not (name == "decord" and path.suffix.lower() in _DECORD_WRONG_SUFFIXES)
    ]


def auto_choice() -> str:
    """The decoder `auto` uses for a file every installed decoder can read."""
    return next(name for name in AUTO_ORDER if _probe(name) is None)


# ------------------------------------------------------------------------------------------ provenance


def decoder_provenance(backend: str = "auto", device: str = "cpu") -> dict[str, str]:
    """What decodes a run's videos, for its tracking tags: decoder, its version, the FFmpeg it runs on.

    For `auto` the decoder is the one it chooses first (others only for files that one cannot open).
    """
    name = "torchcodec" if device == "cuda" else (auto_choice() if backend == "auto" else backend)
    return {
        "decoder": name if backend != "auto" else f"{name} (auto)",
        "decode_device": device,
        "decoder_version": f"{_PACKAGES[name]} {_package_version(_PACKAGES[name])}",
        "ffmpeg": _ffmpeg_description(name),
    }


_PACKAGES = {"pyav": "av", "torchcodec": "torchcodec", "decord": "decord"}
_DISPLAY_NAMES = {"pyav": "PyAV", "torchcodec": "torchcodec", "decord": "decord"}


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _ffmpeg_description(name: str) -> str:
    """The FFmpeg release (and libavcodec version) decoder `name` decodes with; "unknown" if it cannot say."""
    try:
        if name == "pyav":
            codec = ".".join(map(str, av.library_versions["libavcodec"]))
            return f"FFmpeg {av.ffmpeg_version_info} (libavcodec {codec}), bundled with PyAV"
        if name == "torchcodec":
            # optional: the torchcodec extra
            from torchcodec._core import (  # type: ignore[attr-defined]  # torchcodec re-exports it without __all__
                get_ffmpeg_library_versions,
            )

            versions = get_ffmpeg_library_versions()
            codec = ".".join(map(str, versions["libavcodec"]))
            return f"FFmpeg {versions['ffmpeg_version']} (libavcodec {codec}), the system's"
        # decord reports none: its wheel's bundled libavcodec file names carry the version.
        files = metadata.files("decord") or []
        found = [re.search(r"libavcodec[-\w]*\.so\.([\d.]+)$", str(file)) for file in files]
        decord_codec = next((match.group(1) for match in found if match), None)
        return f"libavcodec {decord_codec}, bundled with decord" if decord_codec else "unknown (decord does not say)"
    except Exception as error:  # noqa: BLE001  -- provenance must never stop a run
        return f"unknown ({_short_cause(error)})"


# --------------------------------------------------------------------------------------------- checks


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _check_readable_file(path: Path) -> None:
    """Cheap checks that give clearer messages than the decoders do."""
    if not path.exists():
        raise VideoDecodeError(path, "file does not exist")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _validated_indices(path: Path, indices: Sequence[int], num_frames: int) -> list[int]:
    wanted = [int(i) for i in indices]
    out_of_range = [i for i in wanted if i < 0 or i >= num_frames]
    if out_of_range:
        raise VideoDecodeError(
            path, f"frame indices {sorted(set(out_of_range))[:5]} out of range for a video of {num_frames} frames"
        )
    return wanted


def _empty_frames() -> np.ndarray:
    return np.zeros((0, 0, 0, 3), dtype=np.uint8)


def _in_asked_order(batch: np.ndarray, unique: list[int], wanted: list[int]) -> np.ndarray:
    """Rows of `batch` (one per index of `unique`) rearranged to `wanted`, repeats included."""
    position = {index: row for row, index in enumerate(unique)}
    return np.ascontiguousarray(batch[[position[i] for i in wanted]])


# ------------------------------------------------------------------------------------------- torchcodec


def _read_with_torchcodec(
    path: Path, choose_indices: IndexChooser, device: str = "cpu"
) -> tuple[np.ndarray, list[int]]:
    # optional: the torchcodec extra
    from torchcodec.decoders import VideoDecoder  # type: ignore[attr-defined]  # re-exported without __all__

    try:
        # Exact seeking: the file is scanned once on opening, so frame i is the i-th in display order. One
        # thread per decoder: parallelism comes from DataLoader workers.
        decoder = VideoDecoder(
            str(path), seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC", device=device
        )
        stream = decoder.metadata
        found = int(stream.num_frames_from_content or 0)
    except Exception as error:  # RuntimeError from its C++ core, ValueError for streams it rejects
        raise _OpenError(_short_cause(error)) from error
    if found <= 0:
        raise VideoDecodeError(path, "no decodable video frames")
    declared = int(stream.num_frames_from_header or 0)
    num_frames = max(declared, found)  # as PyAV's path: a truncated file is chosen from, then refused
    wanted = _validated_indices(path, choose_indices(num_frames), num_frames)
    _refuse_frames_past_the_end(path, wanted, found, declared)
    if not wanted:
        return _empty_frames(), wanted
    unique = sorted(set(wanted))
    try:
        batch = decoder.get_frames_at(unique).data.cpu().numpy()
    except Exception as error:
        raise VideoDecodeError(path, f"torchcodec failed while decoding ({_short_cause(error)})") from error
    return _in_asked_order(batch, unique, wanted), wanted


# ----------------------------------------------------------------------------------------------- decord


def _read_with_decord(path: Path, choose_indices: IndexChooser, device: str = "cpu") -> tuple[np.ndarray, list[int]]:
    import decord  # optional: the decord extra (and imported after av, always: see the top)

    try:
        # One thread per reader: parallelism comes from DataLoader workers, not from inside one decode.
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames = len(reader)
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        raise _OpenError(_short_cause(error)) from error
    if num_frames <= 0:
        raise _OpenError("no video frames")
    wanted = _validated_indices(path, choose_indices(num_frames), num_frames)
    if not wanted:
        return _empty_frames(), wanted
    unique = sorted(set(wanted))
    try:
        batch = reader.get_batch(unique).asnumpy()
    except Exception as error:
        raise VideoDecodeError(path, f"decord failed while decoding ({_short_cause(error)})") from error
    return _in_asked_order(batch, unique, wanted), wanted


# ------------------------------------------------------------------------------------------------- PyAV
#
# The compressed video stream is read once (demuxing is cheap next to decoding) and kept as packets; that
# gives the frame count (WebM stores none) and the keyframes. The packets are then decoded in runs, one
# per group of pictures that holds a wanted frame: from its keyframe to the last wanted frame in it. A
# group of pictures without a wanted frame is never decoded, and a run goes on through the next keyframe
# when that is where the next wanted frame's run would start, so no frame is decoded twice. This makes the
# choice between seeking and decoding straight through per file, from its keyframes: a downloaded Kinetics
# video (one keyframe in 250 frames) is decoded from its start to the last wanted frame, a prepared one
# (a keyframe every 16) only in the groups that hold wanted frames. Inside a run, frames that no other
# frame refers to (x264's non-reference B-frames, about half of them) are skipped unless wanted: they
# cannot change any other frame, so the wanted frames come out exactly as in a decode of the whole stream.


@dataclass(frozen=True)
class _PacketIndex:
    """The video packets in decode order, and where each frame (in display order) sits among them."""

    packets: list
    frame_positions: list[int]  # frame_positions[i]: decode position of the packet of frame i
    keyframe_positions: list[int]

    @property
    def num_frames(self) -> int:
        return len(self.frame_positions)


def _read_with_pyav(path: Path, choose_indices: IndexChooser, device: str = "cpu") -> tuple[np.ndarray, list[int]]:
    try:
        container = av.open(str(path))
    except Exception as error:
        raise _OpenError(_short_cause(error)) from error
    try:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        # One thread per decoder: parallelism comes from DataLoader workers, as with decord.
        stream.thread_count = 1
        index = _index_packets(path, container, stream)
        if index is None:  # no usable timestamps: frames can only be numbered by decoding them all
            return _read_by_decoding_everything(path, container, stream, choose_indices)
        if index.num_frames == 0:
            raise VideoDecodeError(path, "no decodable video frames")
        declared = int(stream.frames or 0)
        num_frames = declared if declared > len(index.packets) else index.num_frames
        wanted = _validated_indices(path, choose_indices(num_frames), num_frames)
        _refuse_frames_past_the_end(path, wanted, index.num_frames, declared)
        return _decode_wanted_frames(path, stream.codec_context, index, wanted), wanted
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV failed while decoding ({_short_cause(error)})") from error
    finally:
        container.close()


def _refuse_frames_past_the_end(path: Path, wanted: list[int], found: int, declared: int) -> None:
    """A header that declares more frames than the file holds packets for belongs to a truncated file.

    Frames are chosen from the declared count (as decord does), so that a clip reaching past the cut fails
    with this message instead of quietly sampling a shorter video.
    """
    missing = sorted({frame for frame in wanted if frame >= found})
    if missing:
        raise VideoDecodeError(
            path,
            f"frames {missing[:5]} could not be decoded: the file holds {found} of the {declared} frames "
            "its header declares (truncated?)",
        )


def _index_packets(path: Path, container, stream) -> _PacketIndex | None:
    """Demux (without decoding) the whole video stream; None when timestamps cannot number the frames."""
    try:
        packets = [packet for packet in container.demux(stream) if packet.size]
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV failed while reading packets ({_short_cause(error)})") from error
    if any(packet.pts is None for packet in packets):
        return None
    # Packets the container marks for discarding (before the start of an edit list) are decoded when a
    # run passes them, as references, but are not frames of the video.
    shown = [position for position, packet in enumerate(packets) if not packet.is_discard]
    frame_positions = sorted(shown, key=lambda position: packets[position].pts)
    if len({packets[position].pts for position in shown}) != len(shown):
        return None
    keyframes = [position for position, packet in enumerate(packets) if packet.is_keyframe]
    return _PacketIndex(packets, frame_positions, keyframes)


def _decode_runs(index: _PacketIndex, wanted: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) decode positions, inclusive, of the stretches of packets to decode for `wanted` frames.

    Each wanted frame needs the stretch from the last keyframe before it, in decode order and not shown
    after it (an open group of pictures' leading frames refer to the previous group); overlapping or
    touching stretches are merged.
    """
    needs = []
    for frame in set(wanted):
        position = index.frame_positions[frame]
        pts = index.packets[position].pts
        starts = [k for k in index.keyframe_positions if k <= position and index.packets[k].pts <= pts]
        needs.append((starts[-1] if starts else 0, position))
    runs: list[tuple[int, int]] = []
    for first, last in sorted(needs):
        if runs and first <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], last))
        else:
            runs.append((first, last))
    return runs


def _decode_wanted_frames(path: Path, codec_context, index: _PacketIndex, wanted: list[int]) -> np.ndarray:
    if not wanted:
        return _empty_frames()
    wanted_pts = {index.packets[index.frame_positions[frame]].pts for frame in wanted}
    found = _decode_packets(codec_context, index, _decode_runs(index, wanted), wanted_pts, skip_unreferenced=True)
    if wanted_pts - found.keys():
        # Cannot happen with a well-behaved decoder; the slowest exact way is still worth a try.
        log.debug("%s: skipping unreferenced frames lost wanted ones; decoding from the first packet", path)
        last = max(index.frame_positions[frame] for frame in wanted)
        found = _decode_packets(codec_context, index, [(0, last)], wanted_pts, skip_unreferenced=False)
    missing = sorted(frame for frame in set(wanted) if index.packets[index.frame_positions[frame]].pts not in found)
    if missing:
        raise VideoDecodeError(path, f"frames {missing[:5]} could not be decoded (file truncated or corrupt?)")
    rgb = dict(zip(found, _frames_to_rgb(list(found.values())), strict=True))  # each decoded frame converted once
    return _stacked([rgb[index.packets[index.frame_positions[frame]].pts] for frame in wanted])


def _decode_packets(codec_context, index: _PacketIndex, runs, wanted_pts: set, skip_unreferenced: bool) -> dict:
    """Decoded frames by pts, for the wanted timestamps; the decoder is drained and reset after each run."""
    found: dict = {}

    def keep(frames) -> None:
        for frame in frames:
            if frame.pts in wanted_pts:
                found[frame.pts] = frame

    for first, last in runs:
        for packet in index.packets[first : last + 1]:
            # FFmpeg reads skip_frame for each packet: a wanted frame is always decoded, another one only
            # if it is a reference for others ("NONREF" discards the frames nothing refers to).
            unwanted = skip_unreferenced and packet.pts not in wanted_pts
            codec_context.skip_frame = "NONREF" if unwanted else "DEFAULT"
            keep(codec_context.decode(packet))
        codec_context.skip_frame = "DEFAULT"
        keep(codec_context.decode(None))  # drain: frames held back for reordering
        codec_context.flush_buffers()  # a fresh decoder for the next run, which starts at a keyframe
    return found


def _read_by_decoding_everything(path: Path, container, stream, choose_indices: IndexChooser):
    """Number frames in decoding output order (for streams without timestamps)."""
    container.seek(0)
    try:
        decoded = list(container.decode(stream))
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV failed while decoding ({_short_cause(error)})") from error
    if not decoded:
        raise VideoDecodeError(path, "no decodable video frames")
    wanted = _validated_indices(path, choose_indices(len(decoded)), len(decoded))
    return _stacked(_frames_to_rgb([decoded[i] for i in wanted])), wanted


def _frames_to_rgb(frames: list) -> list[np.ndarray]:
    # One reformatter for the clip reuses its conversion context (to_ndarray would build one per frame).
    reformatter = VideoReformatter()
    return [reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in frames]


def _stacked(frames: list[np.ndarray]) -> np.ndarray:
    return np.stack(frames) if frames else _empty_frames()


def _short_cause(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # torchcodec prefixes its messages with the C++ function, file and line: keep the message.
    first_line = _SOURCE_LOCATION.sub("", text[0]) if text else ""
    return f"{type(error).__name__}: {first_line[:300]}"


_SOURCE_LOCATION = re.compile(r"^\w+, \S+\.(cpp|h):\d+, ")
_READERS: dict[str, FrameReader] = {
    "pyav": _read_with_pyav,
    "torchcodec": _read_with_torchcodec,
    "decord": _read_with_decord,
}
