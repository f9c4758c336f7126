"""`peft-bench sweep` without a cluster: the grid, what is skipped, bad input, and status of a failed job."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from peft_bench.cli import main
from peft_bench.launch.sweep import Manifest, parse_sbatch_options, parse_timeout_minutes, sweep_status

GRID = [
    "sweep",
    "--methods",
    "linear_probe,st_adapter",
    "--seeds",
    "0,1",
    "--datasets",
    "synthetic-appearance",
    "--pretrained",
    "none",
    "--set",
    "train.epochs=1",
]


def test_timeouts_and_sbatch_options_parse_or_say_what_is_wrong():
    assert [parse_timeout_minutes(t) for t in ("90", "90m", "24h", "1d", "1:30:00")] == [90, 90, 1440, 1440, 90]
    with pytest.raises(ValueError, match="expected minutes"):
        parse_timeout_minutes("soon")
    assert parse_sbatch_options(["qos=high", "--mail-type=END"]) == {"qos": "high", "mail_type": "END"}
    with pytest.raises(ValueError, match="OPTION=VALUE"):
        parse_sbatch_options(["exclusive"])


def test_dry_run_prints_the_grid_and_skips_what_mlflow_has_finished(tmp_path, store, capsys):
    args = [*GRID, "--tracking-uri", store, "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 combination(s): 4 to run, 0 skipped" in out
    digests = {line.split("[")[1].split("]")[0]: line.split()[1] for line in out.splitlines() if "[" in line}
    assert not (tmp_path / "runs" / "peft-bench" / "sweep" / "sweep.json").exists()  # a dry run writes nothing

    # A finished run with one combination's digest, and a failed one with another's.
    client = MlflowClient(store)
    experiment = client.create_experiment("peft-bench")
    (finished_digest, finished_name), (failed_digest, _) = list(digests.items())[:2]
    for digest, status in ((finished_digest, "FINISHED"), (failed_digest, "FAILED")):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "config_digest", digest)
        client.set_terminated(run.info.run_id, status)

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 to run" not in out and "3 to run, 1 skipped" in out
    assert any(line.startswith("  skip") and finished_name in line for line in out.splitlines())
    assert main([*args, "--rerun"]) == 0
    assert "4 to run, 0 skipped" in capsys.readouterr().out


def test_bad_sweep_input_is_refused_with_a_clear_error(tmp_path, capsys):
    assert main([*GRID, "--methods", "no_such_method", "--dry-run"]) == 2
    assert "unknown method 'no_such_method'" in capsys.readouterr().err
    assert main([*GRID, "--timeout", "soon"]) == 2  # refused before anything is written or submitted
    assert "--timeout 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", "status", "--sweep-dir", str(tmp_path / "nowhere")]) == 2
    assert "no sweep in" in capsys.readouterr().err


@pytest.mark.slow
def test_status_names_a_failed_job_and_shows_the_end_of_its_log(tmp_path, capsys):
    # A dataset folder with no annotations: the job fails as soon as it starts.
    args = [
        "sweep",
        "--methods",
        "linear_probe",
        "--datasets",
        "list",
        "--data-root",
        str(tmp_path / "empty"),
        "--pretrained",
        "none",
        "--set",
        "train.num_workers=0",
    ]
    (tmp_path / "empty").mkdir()
    assert main(args) == 1  # the local sweep waits for its jobs and reports the failure
    statuses = sweep_status(tmp_path / "runs" / "peft-bench" / "sweep")
    assert [s.state for s in statuses] == ["failed"]
    assert "empty" in statuses[0].log_tail  # the error names the folder it could not read
    capsys.readouterr()
    assert main(["sweep", "status"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "end of its log" in out
    assert Manifest.load(tmp_path / "runs" / "peft-bench" / "sweep").combinations[0].job_id is not None
