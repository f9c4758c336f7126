"""`peft-bench run`'s runs: side by side where cores would idle, and one progress line with the time left."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from peft_bench.cli import main
from peft_bench.config import resolve_config
from peft_bench.launch import progress as progress_module
from peft_bench.launch.progress import CommandProgress, RunState, StatusLine
from peft_bench.launch.run_all import longest_first, plan_runs
from peft_bench.method_api import registry

GIB = 2**30


def configs(*pairs, backbone="tiny", device="cpu"):
    return [resolve_config({"method": m, "dataset": d, "backbone": backbone, "device": device}) for m, d in pairs]


EMBEDDED = [
    ("full_ft", "synthetic-appearance"),
    ("st_adapter", "synthetic-appearance"),
    ("full_ft", "synthetic-motion"),
    ("st_adapter", "synthetic-motion"),
]


# --- the plan ---------------------------------------------------------------------------------------


def test_tiny_on_cpu_runs_one_per_core_on_one_thread_each():
    plan = plan_runs(configs(*EMBEDDED), cores=2, memory_bytes=16 * GIB)
    assert (plan.jobs, plan.threads) == (2, 1)
    assert plan_runs(configs(*EMBEDDED), cores=16, memory_bytes=64 * GIB) == plan_runs(
        configs(*EMBEDDED), jobs=4, cores=16
    )
    assert plan_runs(configs(*EMBEDDED), cores=16, memory_bytes=64 * GIB).threads == 4  # 4 runs, 16 cores


def test_big_backbones_and_short_memory_run_one_after_another():
    big = plan_runs(configs(("linear_probe", "k400"), ("adapter", "k400"), backbone="clip_vitb16"), cores=2)
    assert (big.jobs, big.threads) == (1, 0)  # one run on torch's default threads, as before
    assert plan_runs(configs(*EMBEDDED), cores=8, memory_bytes=3.2 * GIB).jobs == 2  # 1.5 GiB a run
    assert plan_runs(configs(*EMBEDDED), jobs=1, cores=8).jobs == 1
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        plan_runs(configs(*EMBEDDED), jobs=0)


def test_longest_runs_start_first_so_short_ones_fill_the_end():
    order = longest_first(configs(*EMBEDDED))  # motion trains 12 epochs, appearance 2
    assert order == [2, 3, 0, 1]


# --- the estimate -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_left_comes_from_each_methods_measured_speed():
    clock = FakeClock()
    runs = [
        RunState("slow on motion", "slow", epochs=10),
        RunState("fast on motion", "fast", epochs=10),
        RunState("slow on appearance", "slow", epochs=5),
        RunState("new on appearance", "new", epochs=5),
    ]
    progress = CommandProgress(runs, parallel=2, clock=clock)
    assert progress.seconds_left() is None and "time left: measuring" in progress.line()
    progress.start(0), progress.start(1)
    progress.step(0, 0, 100), progress.step(1, 0, 100)
    clock.now = 10.0
    progress.step(0, 10, 100)  # 1 s a step
    progress.step(1, 40, 100)  # 0.25 s a step
    # left: slow 90 steps x 1 s, fast 60 x 0.25 s; waiting runs of 5 epochs of 10 steps (as the running
    # ones): slow at its 1 s, new at the median method's (of 1 and 0.25 s), each plus 10% for setup and
    # evaluation until a run has finished; two runs at a time.
    expected = (90 * 1.0 + 60 * 0.25 + 50 * 1.0 * 1.1 + 50 * 0.625 * 1.1) / 2
    assert expected > 90  # more than the slow run alone needs
    assert progress.seconds_left() == pytest.approx(expected)
    line = progress.line()
    assert line.startswith(
        f"peft-bench run: 0 of 4 runs done, about {int(expected // 60)}:"
        f"{round(expected % 60):02d} left (0:10 elapsed) · running "
    )
    assert "slow on motion (epoch 2/10)" in line and "fast on motion (epoch 5/10)" in line


def test_time_left_adds_the_measured_setup_and_evaluation_of_a_run():
    clock = FakeClock()
    runs = [RunState("a", "m", epochs=1), RunState("b", "m", epochs=1)]
    progress = CommandProgress(runs, clock=clock)
    progress.start(0)
    clock.now = 4.0
    progress.step(0, 0, 10)  # 4 s of setup before the first step
    clock.now = 14.0
    progress.step(0, 10, 10)  # 1 s a step
    clock.now = 20.0
    progress.finish(0)  # 6 s of evaluation: 10 s outside the steps
    assert progress.seconds_left() == pytest.approx(10 * 1.0 + 10.0)
    assert "1 of 2 runs done" in progress.line()


# --- the line ---------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_rewritten_in_place_and_cleared_for_other_output(capsys):
    stream = Terminal()
    status = StatusLine(stream)
    status.show("first", force=True)
    status.show("second", force=True)
    status.print_above("a result")
    assert stream.getvalue() == "\rfirst\x1b[K\rsecond\x1b[K\r\x1b[K"
    assert capsys.readouterr().out == "a result\n"


def test_in_a_log_file_the_line_comes_now_and_then(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    stream = io.StringIO()
    status = StatusLine(stream)
    for second in range(0, 150, 1):  # a refresh every second for 2.5 minutes
        clock.now = float(second)
        status.show(f"at {second}")
    assert stream.getvalue().splitlines() == ["at 0", "at 60", "at 120"]
    assert StatusLine(io.StringIO(), enabled=False).show("x", force=True) is None


def runs_in(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])


# --- side by side, end to end -----------------------------------------------------------------------

FAST = [
    "--pretrained",
    "none",
    "--set",
    "train.epochs=1",
    "--set",
    "train.warmup_epochs=0",
    "--set",
    "train.val_subset=16",
    "--set",
    "train.batch_size=16",
    "--set",
    "method.width=8",
]


@pytest.mark.slow
def test_runs_side_by_side_land_in_tracking_and_a_failure_costs_only_its_run(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # empty: the command creates it before the runs start
    # The k400 runs have no videos and fail in their workers; the synthetic ones beside them still run.
    args = [
        "run",
        "--methods",
        "st_adapter,adapter",
        "--dataset",
        "k400,synthetic-motion",
        "--jobs",
        "2",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "runs"),
        *FAST,
    ]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "4 runs, 2 at a time on 1 thread each" in out.out
    assert "st_adapter on k400 (tiny, seed 0): FAILED (FileNotFoundError: dataset 'k400' needs a root" in out.out
    assert "st_adapter on synthetic-motion (tiny, seed 0): top-1" in out.out
    assert "adapter on synthetic-motion (tiny, seed 0): top-1" in out.out
    assert "[4/4]" in out.out and "| st_adapter" in out.out and "| adapter" in out.out  # the table
    assert "peft-bench run: 4 of 4 runs done" in out.err  # the progress line; not a terminal: plain lines
    assert "FAILED st_adapter-tiny-k400-s0" in out.err and "FAILED adapter-tiny-k400-s0" in out.err
    trained = {r.getMessage().split(":")[0] for r in caplog.records if "trainable of" in r.getMessage()}
    assert trained == {"st_adapter-tiny-synthetic-motion-s0", "adapter-tiny-synthetic-motion-s0"}  # workers' logs
    finished = [r.data.tags["peft_bench.method"] for r in runs_in(uri) if r.info.status == "FINISHED"]
    assert sorted(finished) == ["adapter", "st_adapter"]


DIES = """
import os, signal
from dataclasses import dataclass
from pathlib import Path
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import register_method

@dataclass
class DiesConfig:
    pass

@register_method("dies", config=DiesConfig, group="Linear probe", architecture="SA", models_time=False)
def build(backbone, context, cfg):
    marker = os.environ.get("DIES_MARKER")
    if marker and not Path(marker).exists():  # the first build of the command, and only that one
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return VideoClassifier(backbone, context)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_that_run_and_the_waiting_ones_still_run(tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "dies.py"
    plugin.write_text(DIES)
    monkeypatch.setenv("DIES_MARKER", str(tmp_path / "died"))
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # "dies" leaves with this test
    args = [
        "run",
        "--plugin",
        str(plugin),
        "--methods",
        "linear_probe,dies",
        "--jobs",
        "2",
        "--dataset",
        "synthetic-motion,synthetic-appearance",
        "--no-table",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--output-dir",
        str(tmp_path / "runs"),
        *FAST[:-2],
    ]
    assert main(args) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 4 and lines[-1].startswith("[4/4]")
    died = "FAILED (its worker process died (killed, or out of memory?))"
    assert any(line.endswith(f"dies on synthetic-motion (tiny, seed 0): {died}") for line in lines)
    assert all(died in line or ": top-1" in line for line in lines)
    # The runs that had not begun when the pool broke went to a fresh pool, where nothing dies.
    assert any("synthetic-appearance (tiny, seed 0): top-1" in line for line in lines)


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_sigterm_stops_the_command_and_its_workers_and_marks_the_runs_killed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "peft_bench.cli",
        "run",
        "--methods",
        "st_adapter,adapter",
        "--jobs",
        "2",
        "--dataset",
        "synthetic-motion",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "runs"),
        *FAST,
        "--set",
        "train.epochs=200",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    started = 0
    for line in process.stderr:  # the workers' log records, forwarded by the command
        started += "trainable of" in line
        if started == 2:
            break
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    process.stderr.close()
    assert not [
        pid
        for pid in workers
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    ]
    assert sorted(r.info.status for r in runs_in(uri)) == ["KILLED", "KILLED"]
