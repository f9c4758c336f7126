"""The tracker writes what the schema in peft_bench.track.tracking promises, into a throw-away sqlite store."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import id_of_run_that_raised
from peft_bench.track import journal
from peft_bench.track.journal import JOURNAL, Journal, JournaledTracker, OffRankTracker, sync_run_dir
from peft_bench.track.states import RunStatus
from peft_bench.track.tracking import (
    config_hash,
    default_tracking_uri,
    flatten_config,
    git_state,
    package_versions,
    tag_key,
)


def test_default_tracking_uri_is_a_sqlite_file_in_the_results_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "new" / "results"
    assert default_tracking_uri(results) == f"sqlite:///{results.resolve()}/mlflow.db"
    assert results.is_dir()


def test_default_tracking_uri_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_config_is_flattened_batched_and_saved_whole(store: str, tmp_path: Path) -> None:
    # 150 keys: more than one log_batch may carry; one value longer than mlflow's 6000 chars.
    config = {
        "method": {"name": "st_adapter", "adapter": {"width": 384, "positions": ["mlp"]}},
        "optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
        "many": {f"k{i:03d}": i for i in range(150)},
        "long": "x" * 7000,
        "pretrained": None,
    }
    with JournaledTracker(Path("runs") / "run-a", store, "exp", "run-a") as tracker:
        tracker.log_config(config)
        run_id = tracker.run_id

    run = MlflowClient(store).get_run(run_id)
    params = run.data.params
    assert params["method.name"] == "st_adapter"
    assert params["method.adapter.width"] == "384"
    assert params["method.adapter.positions"] == '["mlp"]'
    assert params["optim.lr"] == "0.001"
    assert params["many.k149"] == "149"
    assert params["pretrained"] == "null"
    assert len(params["long"]) == 6000
    assert run.data.tags["peft_bench.config_hash"] == config_hash(config)
    assert run.info.status == "FINISHED"

    saved = Path(MlflowClient(store).download_artifacts(run_id, "config.json", str(tmp_path)))
    assert json.loads(saved.read_text()) == config
    # Artifacts of a sqlite store live beside the database, not under the working directory.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_tags_and_metrics_land_in_the_store(store: str) -> None:
    with JournaledTracker(Path("runs") / "run-b", store, "exp", "run-b") as tracker:
        tracker.set_tags({"method": "st_adapter", "seed": 1, "mlflow.note.content": "smoke"})
        for epoch in range(3):
            tracker.log_metrics({"val_top1": 10.0 * epoch, "train_loss": 1.0 / (epoch + 1)}, step=epoch)
        tracker.log_metrics({"top1": 20.0, "trainable_params": 7_420_000})
        run_id = tracker.run_id

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.data.tags["peft_bench.method"] == "st_adapter"
    assert run.data.tags["peft_bench.seed"] == "1"
    assert run.data.tags["mlflow.note.content"] == "smoke"
    assert run.data.metrics["top1"] == 20.0
    history = client.get_metric_history(run_id, "val_top1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.0),
        (1, 10.0),
        (2, 20.0),
    ]


def test_environment_is_recorded(store: str) -> None:
    with JournaledTracker(Path("runs") / "run-c", store, "exp", "run-c") as tracker:
        tracker.log_environment(device="cpu")
        run_id = tracker.run_id

    run = MlflowClient(store).get_run(run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["peft_bench.device"].startswith("cpu (")
    assert tags["peft_bench.host"].startswith(platform.system())  # hardware beyond the device name
    assert tags["peft_bench.git_dirty"] in {"yes", "no", "unknown"}
    assert tags["peft_bench.git_commit"]
    assert params["version.mlflow"] == mlflow.__version__
    assert {"version.python", "version.torch", "version.decord", "version.pandas"} <= set(params)


def test_package_versions_says_absent_for_missing_packages() -> None:
    versions = package_versions(["surely-not-installed-peft-bench-probe"])
    assert versions["version.surely-not-installed-peft-bench-probe"] == "absent"


def test_git_state_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path) == ("unknown", "unknown")


def test_exception_marks_the_run_failed_and_propagates(store: str) -> None:
    tracker = JournaledTracker(Path("runs") / "run-d", store, "exp", "run-d")
    run_id = id_of_run_that_raised(tracker, ValueError("loss diverged"))

    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["peft_bench.error"] == "ValueError: loss diverged"
    assert mlflow.active_run() is None


def test_ctrl_c_marks_the_run_killed(store: str) -> None:
    tracker = JournaledTracker(Path("runs") / "run-e", store, "exp", "run-e")
    run_id = id_of_run_that_raised(tracker, KeyboardInterrupt())

    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(store: str) -> None:
    tracker = JournaledTracker(Path("runs") / "run-f", store, "exp", "run-f")
    run_id = id_of_run_that_raised(
        tracker, KeyboardInterrupt(), before=lambda tracker: tracker.log_metrics({"val_top1": 1.0}, step=0)
    )

    with JournaledTracker(Path("runs") / "run-f", store, "exp", "run-f", resume_run_id=run_id) as resumed:
        assert resumed.run_id == run_id
        resumed.log_metrics({"val_top1": 2.0}, step=1)

    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val_top1")) == 2


def test_flatten_config_and_hash_ignore_key_order() -> None:
    assert flatten_config({"a": {"b": {"c": 1}}, "d": "text", "e": {}}) == {
        "a.b.c": "1",
        "d": "text",
        "e": "{}",
    }
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({"a": 1})) == 12


def test_tag_keys_get_the_project_prefix_unless_namespaced() -> None:
    assert tag_key("method") == "peft_bench.method"
    assert tag_key("peft_bench.method") == "peft_bench.method"
    assert tag_key("mlflow.runName") == "mlflow.runName"


# -- the journal as the tracker's write-ahead log -------------------------------------------------------


def tracked_run(store: str, name: str, **kwargs) -> str | None:
    """What the runner records at a run's start and end, through the one tracker; returns its run id."""
    with JournaledTracker(Path("runs") / name, store, "exp", name, **kwargs) as tracker:
        tracker.log_config({"method": "st_adapter", "train": {"lr": 0.1}})
        tracker.log_environment(device="cpu")
        tracker.set_tags({"method": "st_adapter", "peft_bench.train.feature_cache": "off"})
        tracker.log_metrics({"train_loss": 0.5}, step=1)
        tracker.log_metrics({"top1": 42.0})
        tracker.log_dict("result.json", {"top1": 42.0})
    return tracker.run_id


def journal_tags(run_dir: Path) -> dict[str, str]:
    tags: dict[str, str] = {}
    for entry in Journal(run_dir / JOURNAL).entries():
        tags.update(entry.get("tags", {}))
    return tags


def test_every_tag_survives_a_sync_and_the_run_equals_one_that_reached_mlflow_live(store, monkeypatch) -> None:
    live = MlflowClient(store).get_run(tracked_run(store, "live"))

    with monkeypatch.context() as away:
        away.setattr(journal, "tracking_answers", lambda uri: False)  # tracking away for the whole run
        assert tracked_run(store, "later") is None
    assert sync_run_dir(Path("runs") / "later")
    synced = MlflowClient(store).get_run(Journal(Path("runs") / "later" / JOURNAL).sync_state()["run_id"])

    written = journal_tags(Path("runs") / "later")
    assert "peft_bench.host" in written and "peft_bench.device" in written
    assert {k: synced.data.tags.get(k) for k in written} == written  # every tag it wrote, host included
    assert set(synced.data.tags) == set(live.data.tags)
    assert synced.data.params == live.data.params and synced.data.metrics == live.data.metrics
    assert synced.info.status == live.info.status == RunStatus.FINISHED
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(synced.info.run_id)}
    assert (
        artifacts
        == {a.path for a in MlflowClient(store).list_artifacts(live.info.run_id)}
        == {"config.json", "result.json"}
    )


def test_the_run_id_is_known_inside_the_block_when_the_store_answers(store) -> None:
    with JournaledTracker(Path("runs") / "early", store, "exp", "early") as tracker:
        inside = tracker.run_id
    assert inside is not None and inside == tracker.run_id


def test_runs_started_one_after_another_in_one_folder_keep_every_journal(store) -> None:
    ids = [tracked_run(store, "again") for _ in range(3)]  # within a second or two: one timestamp
    assert len(set(ids)) == 3
    assert len(list((Path("runs") / "again").glob("tracking*.jsonl"))) == 3
    client = MlflowClient(store)
    assert all(client.get_run(run_id).info.status == "FINISHED" for run_id in ids)


def test_states_are_written_as_their_text() -> None:
    journal_file = Path("runs") / "x" / JOURNAL
    journal_file.parent.mkdir(parents=True)
    Journal(journal_file).append({"op": journal.Op.STATUS, "status": RunStatus.KILLED})
    assert json.loads(journal_file.read_text()) == {"op": "status", "status": "KILLED"}
    assert Journal(journal_file).status() is RunStatus.KILLED and f"{RunStatus.KILLED}" == "KILLED"


def test_the_tracker_of_another_rank_drops_metrics_and_refuses_the_rest() -> None:
    with OffRankTracker() as tracker:
        tracker.log_metrics({"train_loss": 1.0}, step=1)  # rank 0 logs the same (all-reduced) figures
        with pytest.raises(AttributeError):
            tracker.set_tags({"method": "x"})  # only rank 0 describes the run: a call here is a bug
        assert tracker.run_id is None
