"""A crafted sweep folder: submitit's result pickles are where `sweep status` (and a repeated submit) would
look, but nothing in the folder is ever unpickled; job state comes from the scheduler and from the JSON a
job writes itself."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

from peft_bench.cli import main
from peft_bench.config import resolve_config


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def dead_pid() -> int:
    """The pid of a process that has ended (a local job that is gone)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def crafted_sweep(folder: Path, marker: Path, store: str) -> list[str]:
    logs = folder / "logs"
    logs.mkdir(parents=True)
    job_ids = [str(dead_pid()), str(os.getpid())]  # one ended, one still "running" (this test process)
    combos = []
    for i, job_id in enumerate(job_ids):
        # Where submitit keeps a job's outcome: unpickling it runs the payload.
        with open(logs / f"{job_id}_0_result.pkl", "wb") as f:
            pickle.dump(("success", Payload(marker)), f)
        (logs / f"{job_id}_0_log.out").write_text("started\n")
        (logs / f"{job_id}_0_log.err").write_text(f"job {i} log\n")
        cfg = resolve_config(
            {"method": "linear_probe", "dataset": "synthetic-appearance", "pretrained": "none", "seed": i}
        )  # the digest a submit of the same grid computes
        combos.append(
            {
                "name": cfg.run_name(),
                "digest": cfg.digest(),
                "run_dir": str(folder / f"run{i}"),
                "config": {},
                "job_id": job_id,
                "submitted": "submitted",
                "finished_run_id": None,
            }
        )
    manifest = {
        "executor": "local",
        "folder": str(logs),
        "tracking_uri": store,
        "experiment": "peft-bench",
        "combinations": combos,
    }
    (folder / "sweep.json").write_text(json.dumps(manifest))
    return job_ids


def test_sweep_status_never_unpickles_the_sweep_folder(tmp_path, store, capsys):
    marker = tmp_path / "payload-ran"
    crafted_sweep(tmp_path / "sweep", marker, store)
    assert main(["sweep", "status", "--sweep-dir", str(tmp_path / "sweep")]) == 1
    out = capsys.readouterr().out
    assert not marker.exists(), "sweep status ran code from the sweep folder"
    states = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("linear_probe")}
    # The ended job left no finished run and no outcome of its own: failed; the other one's process lives.
    assert states == {
        "linear_probe-tiny-synthetic-appearance-s0": "failed",
        "linear_probe-tiny-synthetic-appearance-s1": "running",
    }

    # A repeated submit reads the same folder to skip what is queued: still nothing unpickled.
    main(
        [
            "sweep",
            "--methods",
            "linear_probe",
            "--datasets",
            "synthetic-appearance",
            "--seeds",
            "0,1",
            "--pretrained",
            "none",
            "--tracking-uri",
            store,
            "--sweep-dir",
            str(tmp_path / "sweep"),
            "--dry-run",
        ]
    )
    assert not marker.exists()
