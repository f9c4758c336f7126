"""SIGTERM, SIGINT (Ctrl-C: the whole process group, loader workers included) and SIGUSR2 sent to a plain
`peft-bench run` mid-training: a checkpoint at the next optimizer step, the mlflow run KILLED (not RUNNING),
a non-zero exit with one line and no traceback; `--resume` then finishes the run, the stale error gone."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from faultkit import (
    FAST,
    TRAIN_CLIPS_PER_EPOCH,
    default_store_uri,
    last_line,
    no_traceback,
    only_run,
    start_cli,
    the_run_dir,
    training_started,
    wait_for,
    with_sets,
)
from peft_bench.cli import main
from peft_bench.train.runner import CHECKPOINT_NAME, load_checkpoint

EPOCHS = 3  # room for the signal to land inside training, not in the final evaluation
ARGS = with_sets(FAST, train__epochs=EPOCHS, train__num_workers=1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_signal_mid_training_saves_marks_killed_and_exits_with_one_line(tmp_path, sig, caplog):
    process = start_cli(["run", *ARGS], tmp_path)
    try:
        wait_for(lambda: training_started(tmp_path), "training to start", process=process)
        sent = time.time()
        if sig == signal.SIGINT:
            os.killpg(process.pid, sig)  # Ctrl-C reaches every process of the terminal's group
        else:
            os.kill(process.pid, sig)
        _, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 128 + sig, err[-3000:]
    assert no_traceback(err), err[-3000:]
    line = last_line(err)
    assert sig.name in line and "--resume" in line, err[-3000:]

    run_dir = the_run_dir(tmp_path)
    checkpoint = run_dir / CHECKPOINT_NAME
    assert checkpoint.is_file() and checkpoint.stat().st_mtime >= sent  # saved after the signal, not before
    state = load_checkpoint(checkpoint)
    assert (state["epoch"], state["step_in_epoch"]) < (EPOCHS, 0)  # mid-training, not the end of the run
    run = only_run(default_store_uri(tmp_path))
    assert run.info.status == "KILLED"
    assert sig.name in run.data.tags["peft_bench.error"]

    if sig != signal.SIGINT:
        return
    # Ctrl-C lost nothing: --resume continues from that step, ends FINISHED, and the stale error is gone.
    caplog.set_level(logging.INFO, logger="peft_bench")
    assert main(["run", *ARGS, "--resume"]) == 0
    assert f"from epoch {state['epoch']}, step {state['step_in_epoch']}" in caplog.text
    client = MlflowClient(default_store_uri(tmp_path))
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert "peft_bench.error" not in resumed.data.tags
    clips = client.get_metric_history(run.info.run_id, "train_clips")
    assert sorted((m.step, m.value) for m in clips) == [(e, TRAIN_CLIPS_PER_EPOCH) for e in range(1, EPOCHS + 1)]
