"""Tracking under load: several sweep jobs at once against a real mlflow server, and a run recorded while
the server was down that arrives when it is back."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import MlflowServer
from peft_bench.cli import main
from peft_bench.track.journal import JOURNAL, Journal, JournaledTracker, sync_run_dir

FAST = [
    "--pretrained",
    "none",
    "--frames",
    "2",
    "--set",
    "train.epochs=1",
    "--set",
    "train.val_subset=8",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.batch_size=16",
]


@pytest.fixture
def quick_http_failures(monkeypatch):
    # A down server must fail fast in tests; mlflow's defaults retry for minutes (right for real jobs).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def metrics_in_journal(run_dir) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in Journal(run_dir / JOURNAL).entries():
        for key, *_ in entry.get("metrics", []):
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
def test_parallel_sweep_jobs_against_a_tracking_server_lose_no_run_or_metric(tmp_path, quick_http_failures, capsys):
    server = MlflowServer(tmp_path / "server").start()
    try:
        args = [
            "sweep",
            "--executor",
            "local",
            "--max-parallel",
            "3",
            "--methods",
            "linear_probe",
            "--datasets",
            "synthetic-appearance",
            "--seeds",
            "0,1,2",
            "--tracking-uri",
            server.uri,
            "--output-dir",
            str(tmp_path / "runs"),
            *FAST,
        ]
        assert main(args) == 0
        manifest = json.loads((tmp_path / "runs" / "peft-bench" / "sweep" / "sweep.json").read_text())
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("peft-bench")
        runs = {r.data.params["config_digest"]: r for r in client.search_runs([experiment.experiment_id])}
        assert len(runs) == 3 and {c["digest"] for c in manifest["combinations"]} == set(runs)
        for combo in manifest["combinations"]:
            run = runs[combo["digest"]]
            assert run.info.status == "FINISHED" and run.info.run_name == combo["name"]
            for key, count in metrics_in_journal(tmp_path / "runs" / "peft-bench" / run_dir_name(combo)).items():
                assert len(client.get_metric_history(run.info.run_id, key)) == count, key  # every metric arrived
        out = capsys.readouterr().out
        assert out.count(" done ") == 3

        # The same sweep again submits nothing.
        assert main(args) == 0
        assert "0 to run, 3 skipped" in capsys.readouterr().out
    finally:
        server.stop()


def run_dir_name(combo: dict) -> str:
    return f"{combo['name']}-{combo['digest']}"


@pytest.mark.slow
def test_a_run_recorded_while_the_server_is_down_arrives_when_it_is_back(tmp_path, quick_http_failures):
    server = MlflowServer(tmp_path / "server")
    run_dir = tmp_path / "run"
    with JournaledTracker(run_dir, server.uri, "outage", "while-down") as tracker:  # nobody listens yet
        tracker.log_config({"train": {"lr": 0.1}, "config_digest": "abc"})
        for step in (1, 2, 3):
            tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
        tracker.log_metrics({"top1": 42.0})
    assert tracker.run_id is None and Journal(run_dir / JOURNAL).unsynced() > 0

    server.start()
    try:
        assert sync_run_dir(run_dir)
        client = MlflowClient(server.uri)
        run = client.get_run(Journal(run_dir / JOURNAL).sync_state()["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.1"
        assert run.data.metrics["top1"] == 42.0
        history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
        assert not sync_run_dir(run_dir)  # nothing is sent twice
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    finally:
        server.stop()
