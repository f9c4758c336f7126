"""The runs of one ``peft-bench run`` command: side by side where cores would idle, with one progress line.

A run on ``tiny`` multiplies matrices of a few hundred thousand entries, which one thread keeps busy; a
second thread mostly waits at its barriers (and under load from other processes a two-thread run of
tiny took 8x the CPU time of a one-thread run, measured: ``benchmarks/embedded_default.py``'s notes).
So on CPU the command runs as many tiny runs at once as the process may use cores, each on one thread,
in worker processes forked from this one; elsewhere (a GPU, real backbones, torchrun) one run after the
other, as before. ``--jobs`` overrides the choice.

What the runs share is made once before they start, not by two of them at once: the synthetic datasets
(written with every core) and the tracking store (created in a short-lived child, so that no database
connection crosses a fork). Results, failures and log records of the workers come back to this process,
which prints them above the progress line (:mod:`peft_bench.launch.progress`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from mlflow.tracking import MlflowClient

from peft_bench.config import RunConfig
from peft_bench.data.build import prepare_dataset
from peft_bench.errors import UserError
from peft_bench.launch.progress import CommandProgress, RunState, StatusLine
from peft_bench.system import usable_cpu_count
from peft_bench.track.tracking import default_tracking_uri, get_or_create_experiment, quiet_mlflow_logging
from peft_bench.train import distributed, preemption
from peft_bench.train.runner import RunResult, resolve_device, run

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

# Backbones small enough that one thread per run and several runs at once beat one run on every core.
SMALL_BACKBONES = ("tiny",)
MEMORY_PER_JOB_BYTES = 1.5 * 2**30  # a tiny run's resident set (torch, mlflow, decoded synthetic clips), rounded up
REPORT_EVERY_S = 0.5  # a worker sends its step count at most this often
STOP_GRACE_S = 15.0  # an interrupted worker's time to record its run as KILLED before it is terminated


@dataclass(frozen=True)
class Plan:
    jobs: int  # runs at once
    threads: int  # torch threads per run; 0 = torch's default (every core)

    def describe(self, runs: int) -> str:
        if self.jobs == 1:
            return f"{runs} run{'s' if runs != 1 else ''}, one after the other"
        return f"{runs} runs, {self.jobs} at a time on {self.threads} thread{'s' if self.threads != 1 else ''} each"


@dataclass
class Outcome:
    index: int
    result: object | None = None  # RunResult
    error: str | None = None


def plan_runs(
    configs: list[RunConfig], jobs: int | None = None, cores: int | None = None, memory_bytes: float | None = None
) -> Plan:
    """How many runs at once (``jobs`` when given) and how many threads each."""
    cores = cores or usable_cpu_count()
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if jobs is None:
        small_on_cpu = all(
            cfg.backbone in SMALL_BACKBONES and resolve_device(cfg.device).type == "cpu" for cfg in configs
        )
        jobs = cores if small_on_cpu and not distributed.is_distributed() else 1
        memory_bytes = memory_bytes if memory_bytes is not None else available_memory()
        if memory_bytes:
            jobs = min(jobs, max(1, int(memory_bytes // MEMORY_PER_JOB_BYTES)))
    jobs = max(1, min(jobs, len(configs)))
    return Plan(jobs, max(1, cores // jobs) if jobs > 1 else 0)


def available_memory() -> float | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def prepare_shared_inputs(configs: list[RunConfig], plan: Plan) -> None:
    """Make what several runs read before any of them starts (the first would, but two at once race)."""
    stores = []
    if plan.jobs > 1:  # SQLite files only (a server creates its own tables), in children while the videos are written
        stores = [
            _start_tracking_store(uri, experiment)
            for uri, experiment in dict.fromkeys((_tracking_uri(cfg), cfg.experiment) for cfg in configs)
            if uri.startswith("sqlite:")
        ]
    for dataset in dict.fromkeys(cfg.dataset for cfg in configs):
        prepare_dataset(dataset)
    for uri, child in stores:
        child.join()
        if child.exitcode:
            log.warning("could not prepare the tracking store %s (exit %s); the runs will retry", uri, child.exitcode)


def _tracking_uri(cfg: RunConfig) -> str:
    return cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir))


def _start_tracking_store(uri: str, experiment: str):
    """Create the store and experiment in a child process: runs starting together on an empty SQLite file
    would race to create its tables, and no database connection may cross the fork of the workers.
    Unreachable tracking is left to the runs' journals."""
    child = multiprocessing.get_context("fork").Process(target=_create_store, args=(uri, experiment), daemon=True)
    child.start()
    return uri, child


def _create_store(uri: str, experiment: str) -> None:
    quiet_mlflow_logging()
    get_or_create_experiment(MlflowClient(uri), uri, experiment)


# --- running -----------------------------------------------------------------------------------------


def run_all(
    configs: list[RunConfig],
    plan: Plan,
    *,
    resume: bool,
    status: StatusLine,
    on_outcome: Callable[[Outcome], None],
    started: float | None = None,
) -> None:
    """Every run, ``plan.jobs`` at a time; ``on_outcome`` hears of each as it ends (in this process).
    ``started`` (time.monotonic) is when the command began, for the elapsed time it shows."""
    runs = [RunState(f"{cfg.method} on {cfg.dataset}", cfg.method, cfg.train.epochs) for cfg in configs]
    progress = CommandProgress(runs, parallel=plan.jobs, started=started)
    root = logging.getLogger()
    clear = status.clear_before_logging()
    for handler in root.handlers:
        handler.addFilter(clear)
    try:
        if plan.jobs == 1:
            _one_after_another(configs, resume, progress, status, on_outcome)
        else:
            _side_by_side(configs, plan, resume, progress, status, on_outcome)
    finally:
        for handler in root.handlers:
            handler.removeFilter(clear)
        status.clear()


def _one_after_another(configs, resume, progress: CommandProgress, status: StatusLine, on_outcome) -> None:
    for index, cfg in enumerate(configs):
        signum = preemption.received()
        if signum is not None:  # a stop signal between two runs: the next one does not start
            raise preemption.Preempted(f"stopped by {signum.name} before {cfg.run_name()}", signum)
        progress.start(index)
        status.show(progress.line(), force=True)

        def report(done: int, total: int, index: int = index) -> None:
            progress.step(index, done, total)
            status.show(progress.line())

        try:
            outcome = Outcome(index, result=run(cfg, progress=False, resume=resume, report=report))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one failing method must not cost the others their runs
            log.error("%s failed: %s", cfg.run_name(), err, exc_info=log.isEnabledFor(logging.DEBUG))
            outcome = Outcome(index, error=f"{type(err).__name__}: {err}")
        progress.finish(index, failed=outcome.error is not None)
        on_outcome(outcome)


def longest_first(configs: list[RunConfig]) -> list[int]:
    """Indices in the order to start them: most epochs first, so short runs fill the gaps at the end."""
    return sorted(range(len(configs)), key=lambda i: -configs[i].train.epochs)


def _side_by_side(configs, plan: Plan, resume: bool, progress: CommandProgress, status: StatusLine, on_outcome) -> None:
    todo = longest_first(configs)
    previous_sigterm = _exit_on_sigterm()
    try:
        while todo:
            left = _in_one_pool(configs, todo, plan, resume, progress, status, on_outcome)
            if len(left) == len(todo):  # the pool broke before any run began: it would again
                for index in left:
                    progress.start(index)
                    progress.finish(index, failed=True)
                    on_outcome(Outcome(index, error="the worker processes died before the run began"))
                left = []
            todo = left
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _in_one_pool(
    configs, todo: list[int], plan: Plan, resume: bool, progress: CommandProgress, status: StatusLine, on_outcome
) -> list[int]:
    """Run ``todo`` in one pool of workers; returns the runs that never began because a worker died
    (killed, out of memory): they go to a fresh pool, while the run it was doing is reported failed."""
    context = multiprocessing.get_context("fork")  # no re-import of torch and the registry per worker
    events, stop = context.Queue(), context.Event()
    pool = ProcessPoolExecutor(
        plan.jobs,
        mp_context=context,
        initializer=_start_worker,
        initargs=(events, stop, plan.threads, logging.getLogger().level),
    )
    futures: dict[Future, int] = {pool.submit(_run_in_worker, i, configs[i], resume): i for i in todo}
    pending, never_began = set(futures), []
    try:
        while pending:
            _handle_events(events, progress, timeout=REPORT_EVERY_S)
            finished, pending = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
            for future in finished:
                _handle_events(events, progress, timeout=0)  # its last records come before its result line
                index = futures[future]
                try:
                    outcome = Outcome(index, result=future.result())
                except BrokenProcessPool:
                    if progress.runs[index].started is None:
                        never_began.append(index)
                        continue
                    outcome = Outcome(index, error="its worker process died (killed, or out of memory?)")
                except Exception as err:  # noqa: BLE001  -- a failed run is recorded as failed; the others go on
                    outcome = Outcome(index, error=str(err) or type(err).__name__)
                if progress.runs[index].started is None:
                    progress.start(index)
                progress.finish(index, failed=outcome.error is not None)
                on_outcome(outcome)
            status.show(progress.line(), force=bool(finished))
        _handle_events(events, progress, timeout=0)
    except BaseException:
        _stop_workers(pool, stop)
        raise
    pool.shutdown()
    return sorted(never_began, key=todo.index)


def _exit_on_sigterm():
    """SIGTERM (a scheduler's, or `kill`) ends the command as Ctrl-C does, so its workers are stopped
    too rather than left training; returns the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def _stop_workers(pool: ProcessPoolExecutor, stop) -> None:
    """Interrupt every worker as Ctrl-C would (each run stops, keeps its checkpoint and is marked
    KILLED), let none start another run, and terminate those that do not end within a few seconds."""
    stop.set()
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()


def _handle_events(events, progress: CommandProgress, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic())) if timeout else events.get_nowait()
        except queue.Empty:
            return
        if isinstance(event, logging.LogRecord):
            logging.getLogger(event.name).handle(event)
        elif event[0] == "start":
            progress.start(event[1])
        elif event[0] == "step":
            progress.step(*event[1:])
        timeout = 0  # drain what is there, without waiting again


# --- in a worker process -----------------------------------------------------------------------------

_events: Queue | None = None  # the queue to the parent
_stop: Event | None = None  # set by the parent when the command is interrupted


def _start_worker(events: Queue, stop: Event, threads: int, log_level: int) -> None:
    global _events, _stop
    _events, _stop = events, stop
    _die_with_parent()
    if threads:
        torch.set_num_threads(threads)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(events)]  # printed by the parent, above its line
    root.setLevel(log_level)


def _die_with_parent() -> None:
    """Linux: a worker whose command was killed outright (SIGKILL) gets SIGTERM instead of training on."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # best effort: no libc, or no prctl in it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_in_worker(index: int, cfg: RunConfig, resume: bool) -> RunResult | None:
    assert _events is not None and _stop is not None  # _start_worker, the pool's initializer, set them
    events = _events
    if _stop.is_set():  # the command is stopping: no new run
        return None
    events.put(("start", index))
    last_sent = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0 or done == total or now - last_sent[0] >= REPORT_EVERY_S:
            last_sent[0] = now
            events.put(("step", index, done, total))

    try:
        return run(cfg, progress=False, resume=resume, report=report)
    except Exception as err:
        log.error("%s failed: %s", cfg.run_name(), err, exc_info=log.isEnabledFor(logging.DEBUG))
        raise RuntimeError(f"{type(err).__name__}: {err}") from None  # whatever it was, it crosses back pickled
