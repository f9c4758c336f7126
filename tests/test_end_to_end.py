"""A whole run on the embedded default: data -> model -> mlflow -> table, and resuming a broken run."""

from __future__ import annotations

import mlflow
import pytest

import peft_bench.train.runner as runner
from peft_bench.cli import main
from peft_bench.config import resolve_config
from peft_bench.data.decode import decoder_provenance

FAST = [
    "--pretrained",
    "none",
    "--no-progress",
    "--set",
    "train.epochs=2",
    "--set",
    "train.val_subset=24",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.batch_size=8",
]


def small_config(tmp_path, **train):
    return resolve_config(
        {
            "method": "st_adapter",
            "dataset": "synthetic-motion",
            "pretrained": "none",
            "method_args": {"width": 16},  # narrow adapters: the same code path, a fraction of the time
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "output_dir": str(tmp_path / "runs"),
            "train": {"epochs": 2, "val_subset": 24, "num_workers": 0, "batch_size": 16, **train},
        }
    )


def test_a_run_lands_in_mlflow_and_comes_back_through_the_table(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "run",
        "--methods",
        "linear_probe",
        "--dataset",
        "synthetic-appearance",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "runs"),
        "--no-table",
        *FAST,
    ]
    assert main(args) == 0
    client = mlflow.MlflowClient(uri)  # this test's own store, whatever mlflow's default is
    run = client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["peft_bench.method"] == "linear_probe"
    assert run.data.tags["peft_bench.pretrained"] == "none"  # random weights are recorded as such
    assert run.data.tags["peft_bench.models_time"] == "no"  # measured
    decoding = decoder_provenance("auto")  # what decoded the clips, and on which FFmpeg
    assert {key: run.data.tags[f"peft_bench.{key}"] for key in decoding} == decoding
    assert "FFmpeg" in decoding["ffmpeg"] and run.data.params["data.decoder"] == "auto"
    assert run.data.params["train.epochs"] == "2" and run.data.params["train.head_dropout"] == "0.0"
    assert run.data.metrics["trainable_params"] == 96 * 8 + 8  # the head alone on tiny's 96-wide features
    assert run.data.metrics["gflops"] > 0 and 0 <= run.data.metrics["top1"] <= 100
    capsys.readouterr()

    assert main(["table", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| linear_probe"))
    assert f"{run.data.metrics['top1']:.1f}" in row and "tiny (random init) / synthetic-appearance" in out
    assert f"decoding: {decoding['decoder_version']} on {decoding['ffmpeg']}" in out


@pytest.mark.slow
def test_resume_continues_the_same_run_and_ends_where_an_unbroken_run_ends(tmp_path, monkeypatch):
    unbroken = runner.run(small_config(tmp_path / "a"), progress=False)

    cfg = small_config(tmp_path / "b")
    real_epoch = runner.train_one_epoch
    calls = []

    def preempted_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a job killed in its second epoch
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(runner, "train_one_epoch", preempted_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, progress=False)
    monkeypatch.setattr(runner, "train_one_epoch", real_epoch)
    assert runner.load_checkpoint(cfg.run_dir() / runner.CHECKPOINT_NAME)["epoch"] == 1

    resumed = runner.run(cfg, progress=False, resume=True)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert len(client.search_runs(client.get_experiment_by_name(cfg.experiment).experiment_id)) == 1
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_loss")] == [1, 2]
    assert resumed.top1 == unbroken.top1 and resumed.top5 == unbroken.top5


@pytest.mark.slow
def test_checkpoint_holds_only_what_the_method_trains(tmp_path):
    cfg = small_config(tmp_path, epochs=1)
    result = runner.run(cfg, progress=False)
    state = runner.load_checkpoint(cfg.run_dir() / runner.CHECKPOINT_NAME)  # weights_only=True inside
    assert sum(t.numel() for t in state["trainable"].values()) == result.trainable_params
    assert all(name.startswith(("backbone.blocks", "head")) for name in state["trainable"])
