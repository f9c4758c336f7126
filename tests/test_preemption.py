"""Preemption mid-epoch: a real signal, a checkpoint at the next step, and a resumed run that ends where an
unbroken one ends (CPU, same seed)."""

from __future__ import annotations

import json
import os

import mlflow
import pytest

import peft_bench.train.runner as runner
from peft_bench.config import resolve_config
from peft_bench.track.journal import JOURNAL, Journal
from peft_bench.track.records import RECORD_NAME, validation_errors
from peft_bench.train.preemption import Preempted, PreemptionGuard, preemption_signal


def small_config(tmp_path, **train):
    return resolve_config(
        {
            "method": "st_adapter",
            "dataset": "synthetic-appearance",
            "pretrained": "none",
            "num_frames": 2,
            "method_args": {"width": 16},  # narrow adapters, 2 frames: the same code path, a fraction of the time
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "output_dir": str(tmp_path / "runs"),
            "train": {"epochs": 1, "val_subset": 8, "num_workers": 0, "batch_size": 16, **train},
        }
    )


def signal_at_step(monkeypatch, step: int) -> None:
    """Send ourselves the preemption signal right after the given optimizer step (a public post-step hook)."""
    real = runner.make_optimizer

    def with_signal(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        steps = []

        def count_and_maybe_signal(opt, args, kwargs):
            steps.append(1)
            if len(steps) == step:
                os.kill(os.getpid(), preemption_signal())

        optimizer.register_step_post_hook(count_and_maybe_signal)
        return optimizer

    monkeypatch.setattr(runner, "make_optimizer", with_signal)


def record_checkpoints(monkeypatch) -> list[tuple[int, int]]:
    saved = []
    real_save = runner.save_checkpoint

    def recording(path, model, optimizer, scheduler, position, *rest):
        saved.append((position.epoch, position.step))
        real_save(path, model, optimizer, scheduler, position, *rest)

    monkeypatch.setattr(runner, "save_checkpoint", recording)
    return saved


@pytest.mark.slow
def test_a_run_preempted_mid_epoch_resumes_from_that_step_and_matches_an_unbroken_run(tmp_path, monkeypatch):
    unbroken_cfg = small_config(tmp_path / "a", epochs=1, checkpoint_every=2)
    saved = record_checkpoints(monkeypatch)
    unbroken = runner.run(unbroken_cfg, progress=False)
    steps = max(step for _, step in saved)
    assert steps >= 4 and saved == [(0, k) for k in range(2, steps + 1, 2)] + [(1, 0)]  # every 2 steps, then the end

    cfg = small_config(tmp_path / "b", epochs=1, checkpoint_every=2)
    signal_at_step(monkeypatch, 3)
    with PreemptionGuard(), pytest.raises(Preempted):
        runner.run(cfg, progress=False)
    monkeypatch.undo()
    state = runner.load_checkpoint(cfg.run_dir() / runner.CHECKPOINT_NAME)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)  # at the signal, not at the last multiple of 2
    # The run's mlflow id: its records are sent from the background, so a checkpoint this early may predate it.
    run_id = Journal(cfg.run_dir() / JOURNAL).sync_state()["run_id"]
    assert state["mlflow_run_id"] in (None, run_id)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = runner.run(cfg, progress=False, resume=True)
    assert resumed.run_id == run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    loss = client.get_metric_history(resumed.run_id, "train_loss")
    unbroken_loss = mlflow.MlflowClient(unbroken_cfg.tracking_uri).get_metric_history(unbroken.run_id, "train_loss")
    assert [m.value for m in loss] == [m.value for m in unbroken_loss]  # the epoch's sums carried across the break
    assert (resumed.top1, resumed.top5) == (unbroken.top1, unbroken.top5)

    # The result record of the killed-and-resumed run names the same config and the same videos.
    records = [json.loads((result.run_dir / RECORD_NAME).read_text()) for result in (unbroken, resumed)]
    assert all(validation_errors(record) == [] for record in records)
    same = [
        lambda r: r["config_digest"],
        lambda r: r["results"],
        lambda r: r["data"]["train"],
        lambda r: r["data"]["val"],
        lambda r: r["params"],
        lambda r: r["flops"],
    ]
    assert [pick(records[1]) for pick in same] == [pick(records[0]) for pick in same]
    assert (records[0]["run"]["segments"], records[1]["run"]["segments"]) == (1, 2)
    assert records[1]["cost"]["train_clips"] == records[0]["cost"]["train_clips"]  # each clip counted once


def test_a_negative_checkpoint_interval_is_refused(tmp_path):
    with pytest.raises(Exception, match="checkpoint_every"):
        small_config(tmp_path, checkpoint_every=-1)


def test_the_signal_handler_is_restored_after_the_guard(tmp_path):
    import signal

    before = signal.getsignal(preemption_signal())
    with PreemptionGuard():
        assert signal.getsignal(preemption_signal()) != before
    assert signal.getsignal(preemption_signal()) == before
