"""Three FFmpeg builds in one process (PyAV's, torchcodec's system one, decord's): using one decoder must not
break another, nor PyAV's VP9 encoder (the synthetic suite writes webm)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from peft_bench.data.decode import decoder_unavailable_reason
from peft_bench.data.synthetic import write_video


@pytest.mark.slow
@pytest.mark.parametrize("first", ["decord", "torchcodec"])
def test_vp9_encoding_and_every_decoder_still_work_after_another_decoder_decodes(tmp_path, first):
    if decoder_unavailable_reason(first):
        pytest.skip(str(decoder_unavailable_reason(first)))
    write_video(tmp_path / "a.mp4", (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8), "libx264")
    # A fresh interpreter whose first video work is a read with `first`, as in a run that decodes Kinetics-style
    # mp4 before it generates the webm suite: a clash depends on which FFmpeg build is loaded first.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from peft_bench.data.decode import available_decoders, read_frames
        folder = Path({str(tmp_path)!r})
        frames = read_frames(folder / "a.mp4", list(range(8)), backend={first!r})
        from peft_bench.data.synthetic import write_video
        write_video(folder / "b.webm", frames, "libvpx-vp9")
        for decoder in available_decoders():
            assert read_frames(folder / "b.webm", [7], backend=decoder).shape == (1, 32, 32, 3), decoder
            assert read_frames(folder / "a.mp4", [7], backend=decoder).shape == (1, 32, 32, 3), decoder
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
