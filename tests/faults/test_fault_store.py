"""The default SQLite store: one left half-migrated by a killed first run is named, with how to recover, by
`run` and by `table` (never a SQLAlchemy traceback), and several processes creating and writing one store at
once lose nothing."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from faultkit import FAST, cli_env, no_traceback
from peft_bench.cli import main


def half_migrated_copy(template: Path, target: Path) -> None:
    """What a first run killed inside mlflow's migrations leaves: an intermediate schema revision and the
    temporary table of the migration it was in (the states the issue found: `_alembic_tmp_experiments`)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    earlier = script.get_revision(script.get_current_head()).down_revision
    with sqlite3.connect(target) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (earlier,))
        db.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")


def test_a_half_migrated_default_store_is_named_with_how_to_recover(tmp_path, migrated_empty_store, capsys):
    store = tmp_path / "results" / "mlflow.db"
    half_migrated_copy(migrated_empty_store, store)

    assert main(["run", *FAST]) == 2
    err = capsys.readouterr().err
    assert no_traceback(err) and len(err.strip().splitlines()) == 1, err
    assert str(store.resolve()) in err and "mv " in err and "peft-bench sync" in err
    assert not Path("runs").exists()  # refused before any work

    assert main(["table"]) == 2
    err = capsys.readouterr().err
    assert no_traceback(err) and str(store.resolve()) in err and "mv " in err


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from peft_bench.track.journal import JournaledTracker
    from peft_bench.track.tracking import default_tracking_uri

    name = sys.argv[1]
    uri = default_tracking_uri(Path("results"))  # the default store, made by whichever process comes first
    with JournaledTracker(Path("runs") / name, uri, "peft-bench", name) as tracker:
        tracker.set_tags({"method": name})
        for step in range(1, 31):
            tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
        tracker.log_metrics({"top1": 50.0})
""")


@pytest.mark.slow
def test_concurrent_writers_create_and_share_the_default_store(tmp_path):
    names = [f"writer{i}" for i in range(4)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == names
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.metrics["top1"] == 50.0
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 30
    leftovers = [p.name for p in (tmp_path / "results").iterdir() if "tmp" in p.name or "creating" in p.name]
    assert not leftovers  # no half-made store left beside the real one
