"""A disk that fills up while a run writes a checkpoint: no temporary file is left behind, the previous
checkpoint stays whole, the run ends FAILED (not RUNNING) with one clear line.

Two ways to fill it: a real one (a small tmpfs, where mounting is allowed: root) and a simulated ENOSPC (the
checkpoint file's writes fail as a full disk's do), which runs everywhere. The test id says which."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import peft_bench.train.runner as runner
from faultkit import FAST, default_store_uri, only_run, with_sets
from peft_bench.cli import main
from peft_bench.train.runner import CHECKPOINT_NAME, load_checkpoint

FAILING_SAVE = 3  # the first two checkpoints fit; the third does not


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=False, capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC case covers this")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill_before_save(monkeypatch, disk: Path) -> None:
    """Right before the FAILING_SAVE-th checkpoint, fill the disk but for a few pages (the journal's next lines)."""
    real, calls = runner.save_checkpoint, []

    def filling(path, *args):
        calls.append(path)
        if len(calls) == FAILING_SAVE:
            free = shutil.disk_usage(disk).free
            (disk / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
        return real(path, *args)

    monkeypatch.setattr(runner, "save_checkpoint", filling)


class FullDiskFile:
    """A file whose writes fail with ENOSPC once a few bytes are in, as on a full disk."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self._file = open(path, mode, *args, **kwargs)  # noqa: SIM115  -- a file object stand-in; closed by close()
        self._room = 512

    def write(self, data):
        if len(data) > self._room:
            self._file.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()
        return False


def simulate_enospc(monkeypatch) -> None:
    """Checkpoint files opened from the FAILING_SAVE-th save on fail like a full disk."""
    real, calls = runner.save_checkpoint, []

    def failing(path, *args):
        calls.append(path)
        if len(calls) == FAILING_SAVE:
            monkeypatch.setattr(runner, "open", FullDiskFile, raising=False)  # the module's own `open`
        return real(path, *args)

    monkeypatch.setattr(runner, "save_checkpoint", failing)


@pytest.mark.parametrize("how", ["tmpfs", "simulated-enospc"])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_fails_cleanly(
    how, tmp_path, monkeypatch, request, capsys
):
    if how == "tmpfs":
        disk = request.getfixturevalue("small_disk")
        fill_before_save(monkeypatch, disk)
    else:
        disk = tmp_path / "disk"
        simulate_enospc(monkeypatch)
    args = with_sets([*FAST, "--output-dir", str(disk / "runs")], train__checkpoint_every=1)

    assert main(["run", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "No space left on device" in failed[0] and CHECKPOINT_NAME in failed[0], err

    (run_dir,) = (disk / "runs" / "peft-bench").iterdir()
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]  # nothing half-written left behind
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert (state["epoch"], state["step_in_epoch"]) == (0, FAILING_SAVE - 1)  # the last one that fitted
    run = only_run(default_store_uri(tmp_path))
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags["peft_bench.error"]
