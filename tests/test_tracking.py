"""RunTracker writes what the schema in peft_bench.track.tracking promises, into a throw-away sqlite store."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from peft_bench.track.tracking import (
    RunTracker,
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


def test_default_tracking_uri_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    with RunTracker(store, "exp", "run-a") as tracker:
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
    with RunTracker(store, "exp", "run-b") as tracker:
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
    with RunTracker(store, "exp", "run-c") as tracker:
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
    with pytest.raises(ValueError, match="diverged"):
        with RunTracker(store, "exp", "run-d") as tracker:
            run_id = tracker.run_id
            raise ValueError("loss diverged")

    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["peft_bench.error"] == "ValueError: loss diverged"
    assert mlflow.active_run() is None


def test_ctrl_c_marks_the_run_killed(store: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        with RunTracker(store, "exp", "run-e") as tracker:
            run_id = tracker.run_id
            raise KeyboardInterrupt

    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(store: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        with RunTracker(store, "exp", "run-f") as tracker:
            run_id = tracker.run_id
            tracker.log_metrics({"val_top1": 1.0}, step=0)
            raise KeyboardInterrupt

    with RunTracker(store, "exp", "run-f", resume_run_id=run_id) as resumed:
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
