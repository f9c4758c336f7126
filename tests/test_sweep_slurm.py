"""A sweep on a real SLURM cluster (slurm/slurm-local.sh): a job array of 2 methods x 2 seeds, one job
preempted mid-training and requeued through submitit, resuming from its checkpoint; the same sweep again
submits nothing. Skipped, with the reason, where no cluster is up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from peft_bench.cli import main
from peft_bench.launch.sweep import Manifest, sweep_status
from peft_bench.train.runner import CHECKPOINT_NAME, load_checkpoint

WAIT_S = 900


def cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no SLURM client (sbatch) on PATH; start a cluster with slurm/slurm-local.sh (README, Sweeps)"
    ping = subprocess.run(["scontrol", "ping"], check=False, capture_output=True, text=True)
    if "UP" not in ping.stdout:
        said = (ping.stdout.strip() or ping.stderr.strip() or "no answer").splitlines()[0]
        return f"slurmctld not reachable (scontrol ping: {said}); start one with slurm/slurm-local.sh (README, Sweeps)"
    # Without accounting submitit reads every job state as UNKNOWN and cannot follow a requeue.
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], check=False, capture_output=True).returncode != 0:
        return "SLURM accounting (sacct) is off; start the cluster with SLURM_ACCOUNTING=1"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(cluster_problem() is not None, reason=str(cluster_problem())),
]


def wait_for(predicate, what: str, timeout: float = WAIT_S, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def mid_training_checkpoint(run_dir: Path, epochs: int):
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except Exception:  # noqa: BLE001  -- being replaced at this moment: any read error means not yet
        return None
    return state if state["epoch"] < epochs else None


def test_a_slurm_sweep_survives_a_preemption_and_is_not_submitted_twice(tmp_path, capsys):
    epochs = 1  # 30 steps of 16 clips: room to preempt mid-epoch, and CI stays short
    args = [
        "sweep",
        "--executor",
        "slurm",
        "--partition",
        "debug",
        "--cpus-per-task",
        "1",
        "--timeout",
        "30",  # over submitit's 12.5 min threshold: the signal counts as a preemption
        "--signal-delay",
        "60",
        "--methods",
        "linear_probe,st_adapter",
        "--seeds",
        "0,1",
        "--datasets",
        "synthetic-appearance",
        "--pretrained",
        "none",
        "--frames",
        "2",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        "train.val_subset=8",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.checkpoint_every=1",
        "--output-dir",
        str(tmp_path / "runs"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    assert main(args) == 0
    assert "4 to run" in capsys.readouterr().out
    sweep_dir = tmp_path / "runs" / "peft-bench" / "sweep"
    manifest = Manifest.load(sweep_dir)
    job_ids = [c.job_id for c in manifest.combinations]
    assert len(set(job_ids)) == 4 and len({j.split("_")[0] for j in job_ids}) == 1  # one job array

    victim = next(c for c in manifest.combinations if c.name.startswith("st_adapter"))
    before = wait_for(
        lambda: mid_training_checkpoint(Path(victim.run_dir), epochs), "a mid-training checkpoint", every=0.3
    )
    subprocess.run(["scancel", "--signal=USR2", victim.job_id], check=True)  # what SLURM sends before preempting

    def all_ended():
        statuses = sweep_status(sweep_dir)
        return statuses if all(s.state in ("done", "failed") for s in statuses) else None

    statuses = wait_for(all_ended, "the sweep to end", every=3)
    array = job_ids[0].split("_")[0]
    wait_for(
        lambda: (
            array not in subprocess.run(["squeue", "-h", "-o", "%i"], check=True, capture_output=True, text=True).stdout
        ),
        "the job array to leave the queue",
    )
    assert main(["sweep", "sync", "--sweep-dir", str(sweep_dir)]) == 0  # what the SQLite store refused meanwhile
    log = Path(manifest.folder)
    victim_log = "".join(p.read_text(errors="replace") for p in log.glob(f"{victim.job_id}_*_log.*"))
    assert [s.state for s in statuses] == ["done"] * 4, "\n".join(s.log_tail for s in statuses)
    assert "this job is preempted" in victim_log and "resuming" in victim_log  # requeued, then resumed
    resumed = re.search(r"resuming \S+ from epoch (\d+), step (\d+)", victim_log)
    assert resumed, victim_log[-2000:]
    at = (int(resumed.group(1)), int(resumed.group(2)))
    assert at >= (before["epoch"], before["step_in_epoch"]) and at != (0, 0)  # from its checkpoint, not the start

    client = MlflowClient(manifest.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # the requeued job kept its run
    victim_run = next(r for r in runs if r.info.run_name == victim.name)
    assert [m.step for m in client.get_metric_history(victim_run.info.run_id, "train_loss")] == list(
        range(1, epochs + 1)
    )

    jobs_before = subprocess.run(["squeue", "-h", "-o", "%i"], check=True, capture_output=True, text=True).stdout
    assert main(args) == 0
    assert "0 to run, 4 skipped" in capsys.readouterr().out
    assert json.loads((sweep_dir / "sweep.json").read_text())["combinations"][0]["job_id"] == job_ids[0]
    assert (
        subprocess.run(["squeue", "-h", "-o", "%i"], check=True, capture_output=True, text=True).stdout == jobs_before
    )
