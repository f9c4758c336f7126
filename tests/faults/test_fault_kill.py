"""SIGKILL, which no program can catch, at seeded random moments of a run and while the first run in an empty
folder creates the default store; `--resume` then finishes it with what an unbroken run gets, and the store
and the table keep working."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sqlite3
import time

import pytest
from mlflow.tracking import MlflowClient

from faultkit import (
    FAST,
    TRAIN_CLIPS_PER_EPOCH,
    default_store_uri,
    no_traceback,
    only_run,
    run_dirs,
    start_cli,
    wait_for,
    with_sets,
)
from peft_bench.cli import main
from peft_bench.train.runner import CHECKPOINT_NAME, load_checkpoint

ARGS = with_sets(FAST, train__epochs=2, train__checkpoint_every=7)
_draw = random.Random(18)
MOMENTS = sorted(_draw.uniform(2.0, 14.0) for _ in range(2))  # seconds after the start: 4.2 and 9.9
CREATION_KILLS = [_draw.uniform(0.2, 2.5) for _ in range(3)]  # seconds after a store's migration started


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The same run without a kill: what every resumed run must end with."""
    folder = tmp_path_factory.mktemp("unbroken")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["run", *ARGS]) == 0
    finally:
        os.chdir(cwd)
    run = only_run(default_store_uri(folder))
    loss = MlflowClient(default_store_uri(folder)).get_metric_history(run.info.run_id, "train_loss")
    return run.data.metrics, sorted((m.step, m.value) for m in loss)


def migrating(results) -> bool:
    """A store file (the store itself, or a temporary one beside it) whose schema migration has begun."""
    if not results.is_dir():
        return False
    for path in results.iterdir():
        if "mlflow.db" not in path.name or path.name.endswith(".lock"):
            continue
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)) as db:
                if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                    return True
        except sqlite3.Error:  # being written at this moment
            continue
    return False


def kill_at(process, moment: float) -> None:
    deadline = time.time() + moment
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def finished_run(uri: str, experiment: str = "peft-bench"):
    """The one FINISHED run of the experiment; any other must be KILLED, never left RUNNING."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert len(finished) == 1, [run.info.status for run in runs]
    assert all(run.info.status == "KILLED" for run in runs if run is not finished[0]), [r.info.status for r in runs]
    return finished[0]


def checkpoint_position(root):
    dirs = run_dirs(root)
    path = dirs[0] / CHECKPOINT_NAME if dirs else None
    if path is None or not path.is_file():
        return None
    state = load_checkpoint(path)
    return state["epoch"], state["step_in_epoch"]


def assert_resumes_to_the_unbroken_result(root, unbroken, caplog, killed_runs_before=False):
    """``killed_runs_before``: a kill that landed after the store was whole and the run had begun leaves that
    run in mlflow, marked KILLED by the next start (README, Reliability); the one that finishes is checked."""
    before = checkpoint_position(root)
    caplog.set_level(logging.INFO, logger="peft_bench")
    assert main(["run", *ARGS, "--resume"]) == 0
    if before is not None:  # whatever was checkpointed before the kill was kept, not trained again
        assert f"from epoch {before[0]}, step {before[1]}" in caplog.text
    uri = default_store_uri(root)
    run = finished_run(uri) if killed_runs_before else only_run(uri)
    assert run.info.status == "FINISHED"
    metrics, loss = unbroken
    assert run.data.metrics["top1"] == metrics["top1"] and run.data.metrics["top5"] == metrics["top5"]
    history = sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss"))
    assert [s for s, _ in history] == [s for s, _ in loss]
    assert [v for _, v in history] == pytest.approx([v for _, v in loss], rel=1e-4)
    clips = MlflowClient(uri).get_metric_history(run.info.run_id, "train_clips")
    assert {m.value for m in clips} == {TRAIN_CLIPS_PER_EPOCH}


@pytest.mark.slow
def test_sigkill_while_the_first_run_creates_the_default_store(tmp_path, unbroken, caplog, capsys):
    # mlflow's migrations of a new store take seconds; killed at some points of them, the store that was
    # left could never be opened again. Three kills, each some (seeded) time after a migration started.
    for delay in CREATION_KILLS:
        process = start_cli(["run", *ARGS], tmp_path)
        try:
            wait_for(lambda: migrating(tmp_path / "results"), "a migration to start", every=0.01, process=process)
            time.sleep(delay)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()

    # On a loaded machine a kill can land after the store was made and the run had begun.
    assert_resumes_to_the_unbroken_result(tmp_path, unbroken, caplog, killed_runs_before=True)
    capsys.readouterr()
    assert main(["table"]) == 0
    out, err = capsys.readouterr()
    assert "| linear_probe" in out and no_traceback(err)


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS, ids=lambda m: f"{m:.1f}s")
def test_sigkill_at_a_random_moment_then_resume(tmp_path, moment, unbroken, caplog):
    kill_at(start_cli(["run", *ARGS], tmp_path), moment)
    print(f"killed {moment:.1f} s in; checkpoint then: {checkpoint_position(tmp_path)}")
    assert_resumes_to_the_unbroken_result(tmp_path, unbroken, caplog)
