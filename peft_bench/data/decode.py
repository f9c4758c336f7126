"""Reading selected frames from video files with decord or PyAV.

Only the frames that are asked for are decoded: decord reads them with `get_batch`, PyAV seeks to the
keyframe before the first wanted frame and decodes forward until the last wanted one.  `auto` uses decord,
except for `.webm` files (VP8/VP9), where decord's seeking is known to return frames from the start of the
video, and falls back to PyAV when decord cannot open a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av  # noqa: F401  -- before decord, always: see below
import numpy as np

# decord bundles its own FFmpeg libraries; when they are loaded before PyAV's, PyAV's VP9 encoder fails
# to open ("avcodec_open2(libvpx-vp9) returned 22"). Loading PyAV first, here, in the module every decord
# user imports, keeps both working in one process.

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# Containers whose codecs (VP8/VP9) decord seeks wrongly in; "auto" sends them to PyAV.
_PYAV_FIRST_SUFFIXES = {".webm"}


class VideoDecodeError(RuntimeError):
    """A video could not be decoded; the message names the path and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"cannot decode video {str(path)!r}: {cause}")
        self.path = str(path)
        self.cause = cause


IndexChooser = Callable[[int], Sequence[int]]


def count_frames(path: str | Path, backend: str = "auto") -> int:
    """Number of frames in the video (PyAV: the container's count, else counted by decoding)."""
    count = 0

    def remember_count(num_frames: int) -> list[int]:
        nonlocal count
        count = num_frames
        return []

    read_clip(path, remember_count, backend=backend)
    return count


def read_frames(path: str | Path, indices: Sequence[int], backend: str = "auto") -> np.ndarray:
    """uint8 array (len(indices), H, W, 3) RGB holding exactly the frames asked for, in the order asked."""
    wanted = [int(i) for i in indices]
    frames, _ = read_clip(path, lambda _num_frames: wanted, backend=backend)
    return frames


def read_clip(
    path: str | Path, choose_indices: IndexChooser, backend: str = "auto"
) -> tuple[np.ndarray, list[int]]:
    """Open the video once, let `choose_indices(num_frames)` pick frames, and decode only those.

    Returns the frames (N, H, W, 3) uint8 RGB and the indices used. This spares datasets a second open of
    the file just to learn its length.
    """
    path = Path(path)
    _check_readable_file(path)
    for_backend = _resolve_backend(path, backend)
    if for_backend == "pyav":
        return _read_with_pyav(path, choose_indices)
    try:
        return _read_with_decord(path, choose_indices)
    except _DecordOpenError as error:
        if backend == "decord":
            raise VideoDecodeError(path, f"decord could not open it ({error.cause})") from error
        # decord's demuxer is stricter/older than PyAV's ffmpeg; give the file a second chance.
        log.debug("decord could not open %s (%s); trying PyAV", path, error.cause)
        try:
            return _read_with_pyav(path, choose_indices)
        except VideoDecodeError as pyav_error:
            raise VideoDecodeError(
                path, f"decord could not open it ({error.cause}); PyAV fallback: {pyav_error.cause}"
            ) from pyav_error


def _resolve_backend(path: Path, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "pyav" if path.suffix.lower() in _PYAV_FIRST_SUFFIXES else "decord"


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


# ----------------------------------------------------------------------------------------------- decord


class _DecordOpenError(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _read_with_decord(path: Path, choose_indices: IndexChooser) -> tuple[np.ndarray, list[int]]:
    import decord

    try:
        # One thread per reader: parallelism comes from DataLoader workers, not from inside one decode.
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames = len(reader)
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        raise _DecordOpenError(_short_cause(error)) from error
    if num_frames <= 0:
        raise _DecordOpenError("no video frames")
    wanted = _validated_indices(path, choose_indices(num_frames), num_frames)
    if not wanted:
        return _empty_frames(), wanted
    unique = sorted(set(wanted))
    try:
        batch = reader.get_batch(unique).asnumpy()
    except Exception as error:
        raise VideoDecodeError(path, f"decord failed while decoding ({_short_cause(error)})") from error
    position = {index: row for row, index in enumerate(unique)}
    return np.ascontiguousarray(batch[[position[i] for i in wanted]]), wanted


# ------------------------------------------------------------------------------------------------- PyAV


def _read_with_pyav(path: Path, choose_indices: IndexChooser) -> tuple[np.ndarray, list[int]]:
    import av

    try:
        container = av.open(str(path))
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV could not open it ({_short_cause(error)})") from error
    try:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.frames > 0:
            num_frames = int(stream.frames)
            wanted = _validated_indices(path, choose_indices(num_frames), num_frames)
            return _decode_pyav_indices(path, container, stream, wanted), wanted
        # No count in the container (common for webm): counting needs a full decode anyway, so keep the
        # decoded (YUV) frames and convert only the chosen ones to RGB.
        decoded = _decode_all_pyav(path, container, stream)
        if not decoded:
            raise VideoDecodeError(path, "no decodable video frames")
        wanted = _validated_indices(path, choose_indices(len(decoded)), len(decoded))
        return _frames_to_rgb([decoded[i] for i in wanted]), wanted
    except VideoDecodeError:
        raise
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV failed while decoding ({_short_cause(error)})") from error
    finally:
        container.close()


def _decode_all_pyav(path: Path, container, stream) -> list:
    try:
        return list(container.decode(stream))
    except Exception as error:
        raise VideoDecodeError(path, f"PyAV failed while decoding ({_short_cause(error)})") from error


def _decode_pyav_indices(path: Path, container, stream, wanted: list[int]) -> np.ndarray:
    if not wanted:
        return _empty_frames()
    needed = set(wanted)
    first, last = min(needed), max(needed)
    found = _decode_range_after_seek(container, stream, first, last, needed)
    if found is None:  # no usable timestamps, or the seek landed after the first wanted frame
        container.seek(0, stream=stream)
        found = _decode_range_counting(container, stream, last, needed)
    missing = needed - found.keys()
    if missing:
        raise VideoDecodeError(
            path,
            f"frames {sorted(missing)[:5]} could not be decoded (file truncated or shorter than its "
            f"header's {stream.frames} frames?)",
        )
    rgb = dict(zip(found, _frames_to_rgb(list(found.values()))))
    return np.stack([rgb[i] for i in wanted])


def _frame_rate(stream) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def _decode_range_after_seek(container, stream, first: int, last: int, needed: set[int]) -> dict | None:
    """Seek to the keyframe before `first`, decode forward to `last`; frame indices come from timestamps.

    Returns None when timestamps are unusable or the seek overshot, so the caller can decode from the start.
    """
    rate = _frame_rate(stream)
    if rate is None or stream.time_base is None:
        return None
    time_base = Fraction(stream.time_base)
    start_pts = stream.start_time or 0
    if first > 0:
        container.seek(start_pts + int(first / rate / time_base), stream=stream, backward=True, any_frame=False)
    found: dict = {}
    first_seen: int | None = None
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        index = round((frame.pts - start_pts) * time_base * rate)
        if first_seen is None:
            first_seen = index
            if index > first:
                return None
        if index in needed:
            found[index] = frame
        if index >= last:
            break
    return found


def _decode_range_counting(container, stream, last: int, needed: set[int]) -> dict:
    found: dict = {}
    for index, frame in enumerate(container.decode(stream)):
        if index in needed:
            found[index] = frame
        if index >= last:
            break
    return found


def _frames_to_rgb(frames: list) -> np.ndarray:
    if not frames:
        return _empty_frames()
    from av.video.reformatter import VideoReformatter

    # One reformatter for the clip reuses its conversion context (to_ndarray would build one per frame).
    reformatter = VideoReformatter()
    return np.stack([reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in frames])


def _short_cause(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first_line = text[0] if text else ""
    return f"{type(error).__name__}: {first_line[:300]}"
