"""What the fault-injection tests share: a small real run (subprocess or in-process), its folders, its store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import TEST_CACHE

# One epoch of the linear probe on tiny, 2 frames: 30 optimizer steps of 16 clips, the same code path as any run.
FAST = [
    "--methods",
    "linear_probe",
    "--dataset",
    "synthetic-appearance",
    "--pretrained",
    "none",
    "--frames",
    "2",
    "--no-progress",
    "--no-table",
    "--set",
    "train.epochs=1",
    "--set",
    "train.val_subset=8",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.batch_size=16",
]
TRAIN_CLIPS_PER_EPOCH = 480  # synthetic-appearance's training set, whole batches of 16


def with_sets(args: list[str], **values) -> list[str]:
    """``args`` with ``--set train.K=V`` added (later --set flags win)."""
    out = list(args)
    for key, value in values.items():
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PEFT_BENCH_CACHE": str(TEST_CACHE), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``peft-bench ARGS`` as its own process group (so a test can Ctrl-C it as a terminal would). Ctrl-C is
    restored to its default in the child: a suite started in the background (``pytest &``, nohup) inherits
    SIGINT ignored, as every background job does, and the command would then rightly not hear it."""
    return subprocess.Popen(
        [sys.executable, "-m", "peft_bench.cli", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_ctrl_c,  # noqa: PLW1509  -- the test process starts no threads that could hold a lock
    )


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_dirs(root: Path) -> list[Path]:
    experiment = root / "runs" / "peft-bench"
    return sorted(p for p in experiment.glob("*-*") if p.is_dir()) if experiment.is_dir() else []


def the_run_dir(root: Path) -> Path:
    (run_dir,) = run_dirs(root)
    return run_dir


def journal_entries(run_dir: Path) -> list[dict]:
    path = run_dir / "tracking.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def journal_metric_keys(run_dir: Path) -> set[str]:
    return {key for e in journal_entries(run_dir) for key, *_ in e.get("metrics", [])}


def training_started(root: Path) -> bool:
    """The run logged its GFLOPs: the last record before the first optimizer step."""
    dirs = run_dirs(root)
    return bool(dirs) and "gflops" in journal_metric_keys(dirs[0])


def wait_for(predicate, what: str, timeout: float = 600.0, every: float = 0.05, process=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"the process ended (rc {process.returncode}) before {what}: "
                f"{process.stderr.read()[-2000:] if process.stderr else ''}"
            )
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def default_store_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'results' / 'mlflow.db').resolve()}"


def only_run(uri: str, experiment: str = "peft-bench"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {uri}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and "sqlalchemy" not in text.lower()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
