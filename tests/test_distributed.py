"""`peft-bench run` under torchrun: 2 gloo processes on CPU train one run, and its metrics cover both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_gloo_processes_make_one_run_with_metrics_gathered_over_both(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "peft_bench.cli", "run", "--methods", "linear_probe", "--dataset", "synthetic-appearance",
               "--pretrained", "none", "--frames", "2", "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs"),
               "--no-table", "--no-progress", "--set", "train.epochs=1", "--set", "train.val_subset=9",
               "--set", "train.batch_size=16", "--set", "train.num_workers=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])
    assert len(runs) == 1  # rank 0 alone tracks
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["peft_bench.world_size"] == "2" and run.data.tags["peft_bench.rank_batch"] == "8"
    assert run.data.params["train.batch_size"] == "16"  # the global batch, as configured
    # 9 validation clips split 5 + 4: a rank alone would report 5 or 4.
    assert run.data.metrics["eval_clips"] == 9
    # 480 training clips, half per rank, every one of them counted in the epoch's loss and accuracy.
    assert run.data.metrics["train_clips"] == 480
