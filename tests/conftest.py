"""Test-wide isolation: no test writes into the user's caches or the repository's results/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from peft_bench.track.tracking import quiet_mlflow_logging

# Shared across the session (and across sessions on one machine): the synthetic suite and the tiny
# backbone are deterministic, so tests reuse one copy instead of regenerating per test.
TEST_CACHE = Path(os.environ.get("PEFT_BENCH_TEST_CACHE", Path.home() / ".cache" / "peft_bench_tests"))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(TEST_CACHE))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative defaults (results/, runs/) land in the test's own folder


@pytest.fixture(scope="session")
def migrated_empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Creating a sqlite store runs mlflow's schema migrations (seconds); copying a migrated one is instant.
    quiet_mlflow_logging()
    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(migrated_empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep one test's store out of the next.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(migrated_empty_store, tmp_path / "mlflow.db")
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: a second intra-op thread only adds contention on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded_default_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embedded default on a tiny setting, run once per session: two methods (one training only after the
    frozen backbone, one inside it) on both synthetic datasets, random weights, one short epoch.

    Returns {"uri": the sqlite store, "runs": the run folders' root}. Session-scoped fixtures start before the
    per-test isolation above, so the same isolation is set up here.
    """
    from peft_bench.cli import main

    folder = tmp_path_factory.mktemp("embedded_default")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PEFT_BENCH_CACHE", str(TEST_CACHE))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.chdir(folder)
        code = main(
            [
                "run",
                "--methods",
                "linear_probe,st_adapter",
                "--pretrained",
                "none",
                "--frames",
                "2",
                "--no-progress",
                "--no-table",
                "--tracking-uri",
                uri,
                "--output-dir",
                str(folder / "runs"),
                "--set",
                "train.epochs=1",
                "--set",
                "train.val_subset=8",
                "--set",
                "train.num_workers=0",
                "--set",
                "train.batch_size=16",
            ]
        )
    mlflow.set_tracking_uri(None)
    assert code == 0
    return {"uri": uri, "runs": folder / "runs"}


def id_of_run_that_raised(tracker, error: BaseException, before=lambda tracker: None) -> str:
    """Enter `tracker`, call `before(tracker)`, raise `error` inside it and check that it escapes; the run's id.

    What the tracker records on the way out (FAILED, KILLED, the error's text) is what the callers test."""
    run_ids = []

    def body() -> None:
        with tracker:
            run_ids.append(tracker.run_id)
            before(tracker)
            raise error

    with pytest.raises(type(error)):
        body()
    return run_ids[0]
