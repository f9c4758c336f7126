"""Tracking that is away: a server that refuses connections, one that accepts and never answers, and a
read-only results folder. Training never waits on any of them (measured without a clock: the training
thread opens no connection to the tracking server at all), the run ends with everything in its journal, and
`peft-bench sync` sends it once the store can be written."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from faultkit import FAST, default_store_uri, journal_entries, journal_metric_keys, only_run, the_run_dir
from peft_bench.cli import main


@pytest.fixture
def main_thread_connections(monkeypatch):
    """(host, port) of every connection the main thread opens while the test runs."""
    opened: list[tuple] = []
    real_connect = socket.socket.connect

    def recording_connect(sock, address):
        if threading.current_thread() is threading.main_thread():
            opened.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    return opened


@pytest.fixture
def main_thread_store_opens(monkeypatch):
    """Every SQL store the main thread opens while the test runs (mlflow makes one engine per store)."""
    import mlflow.store.db.utils as db_utils

    opened: list[str] = []
    real = db_utils.create_sqlalchemy_engine_with_retry

    def recording(db_uri):
        if threading.current_thread() is threading.main_thread():
            opened.append(db_uri)
        return real(db_uri)

    monkeypatch.setattr(db_utils, "create_sqlalchemy_engine_with_retry", recording)
    return opened


# A bound far above any run here, far below mlflow's minutes of retries; the exact checks are the threads'.
NO_HANG_S = 300


@pytest.fixture(params=["refused", "never-answers"])
def unreachable_uri(request):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if request.param == "refused":
        listener.close()  # nothing listens on the port any more
    else:
        listener.listen(64)  # the kernel completes connections; nobody ever reads or answers
    yield f"http://127.0.0.1:{port}", port
    listener.close()


def test_unreachable_tracking_never_blocks_training(tmp_path, unreachable_uri, main_thread_connections, caplog):
    uri, port = unreachable_uri
    started = time.time()
    # mlflow's own retry settings are left at their defaults: a user's run does not set them either.
    assert main(["run", *FAST, "--tracking-uri", uri]) == 0
    took = time.time() - started
    assert not [a for a in main_thread_connections if a[1] == port], "the training thread called the tracking server"
    assert took < NO_HANG_S, f"the run took {took:.0f} s with tracking away"
    run_dir = the_run_dir(tmp_path)
    assert {"top1", "train_loss", "gflops"} <= journal_metric_keys(run_dir)
    assert [e["status"] for e in journal_entries(run_dir) if e.get("op") == "status"][-1] == "FINISHED"
    assert f"peft-bench sync {run_dir.relative_to(tmp_path)}" in caplog.text


@pytest.fixture
def read_only_results(tmp_path):
    """An empty results/ that cannot be written: a read-only tmpfs as root (root ignores file modes), else 0555.

    Yields a function that makes it writable again.
    """
    results = tmp_path / "results"
    results.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=16m,ro", "tmpfs", str(results)], check=False, capture_output=True
            ).returncode
            == 0
        )
    if not mounted:
        results.chmod(0o555)
        if os.access(results, os.W_OK):
            pytest.skip("cannot make a folder read-only here (root without mount)")

    def make_writable():
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(results)], check=True)
        else:
            results.chmod(0o755)

    yield make_writable
    if mounted:
        subprocess.run(["umount", "--lazy", str(results)], check=False)  # mlflow may still hold the store open
    else:
        results.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_results_folder_does_not_hang_and_sync_sends_the_run_later(
    tmp_path, read_only_results, caplog, capsys, main_thread_store_opens
):
    started = time.time()
    assert main(["run", *FAST]) == 0
    took = time.time() - started
    assert not main_thread_store_opens, "the training thread opened the store"  # mlflow retries that ~100 s
    assert took < NO_HANG_S, f"the run took {took:.0f} s with a read-only results folder"
    run_dir = the_run_dir(tmp_path)
    assert "top1" in journal_metric_keys(run_dir)
    assert "peft-bench sync" in caplog.text

    read_only_results()
    assert main(["sync", "runs"]) == 0
    run = only_run(default_store_uri(tmp_path))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["top1"] >= 0 and run.data.tags["peft_bench.method"] == "linear_probe"
    capsys.readouterr()
    assert main(["sync", str(run_dir)]) == 0  # nothing is sent twice
    assert "nothing to send" in capsys.readouterr().out
    client = MlflowClient(default_store_uri(tmp_path))
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1


def test_sync_of_a_folder_without_runs_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["sync", str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().err
    assert not Path("results").exists()


def test_a_run_started_over_one_that_died_silently_marks_that_one_killed(tmp_path, store):
    from peft_bench.track.journal import JOURNAL, Journal, JournaledTracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = Journal(run_dir / JOURNAL)  # what a process SIGKILLed mid-run leaves: a journal without an end
    dead.append({"op": "start", "tracking_uri": store, "experiment": "peft-bench", "run_name": "dead", "time": 1})
    dead.append({"op": "metrics", "metrics": [["train_loss", 1.0, 2, 1]]})
    with JournaledTracker(run_dir, store, "peft-bench", "again") as again:  # no --resume: a new run
        again.log_metrics({"top1": 50.0})
    client = MlflowClient(store)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])}
    assert runs["again"].info.status == "FINISHED"
    assert runs["dead"].info.status == "KILLED" and "killed" in runs["dead"].data.tags["peft_bench.error"]
    assert runs["dead"].data.metrics["train_loss"] == 1.0  # what it had recorded is kept
