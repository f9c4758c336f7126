"""decord and PyAV in one process: reading mp4 with decord must not break writing VP9 with PyAV."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from peft_bench.data.synthetic import write_video


def test_vp9_encoding_still_works_after_decord_decodes(tmp_path):
    write_video(tmp_path / "a.mp4", (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8), "libx264")
    # A fresh interpreter whose first video work is a decord read, as in a run that decodes Kinetics-style
    # mp4 before it generates the webm suite: the clash depends on which FFmpeg build is loaded first.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from peft_bench.data.decode import read_frames
        frames = read_frames(Path({str(tmp_path)!r}) / "a.mp4", list(range(8)), backend="decord")
        from peft_bench.data.synthetic import write_video
        write_video(Path({str(tmp_path)!r}) / "b.webm", frames, "libvpx-vp9")
        assert read_frames(Path({str(tmp_path)!r}) / "b.webm", [7]).shape == (1, 32, 32, 3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
