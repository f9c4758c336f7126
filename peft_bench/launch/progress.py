"""How far a ``peft-bench run`` command is, and about how long is left: one line for a newcomer.

:class:`CommandProgress` keeps the state of every run of the command (waiting, running at step k of n,
done) and estimates the time left from the work done so far: seconds per optimizer step measured per
run and per method (the methods differ up to six-fold), the median method's for one not seen yet, and
the measured time each run spends outside its steps (setup, evaluation), divided over the runs going at
once.
:class:`StatusLine` shows it: one line rewritten in place on a terminal, an occasional plain line
otherwise (logs and CI), so that logs are not flooded.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

NON_TTY_EVERY_S = 60.0  # a plain line at most this often when the output is not a terminal
TTY_EVERY_S = 0.5


@dataclass
class RunState:
    label: str  # "st_adapter on synthetic-motion"
    method: str
    epochs: int
    steps_done: int = 0
    resumed_from: int = 0  # steps a resumed run had done before this command
    steps_total: int | None = None  # known once the run has built its data
    started: float | None = None
    first_step_at: float | None = None  # when training (not setup) began
    training_s: float = 0.0
    finished: float | None = None
    failed: bool = False

    @property
    def running(self) -> bool:
        return self.started is not None and self.finished is None


@dataclass
class CommandProgress:
    runs: list[RunState]
    parallel: int = 1  # runs at once
    started: float | None = None  # the clock when the command's runs began

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    clock: Callable[[], float] = time.monotonic

    # --- events -----------------------------------------------------------------------------------

    def start(self, index: int) -> None:
        self.runs[index].started = self.clock()

    def step(self, index: int, done: int, total: int) -> None:
        run, now = self.runs[index], self.clock()
        if run.first_step_at is None:
            run.first_step_at, run.resumed_from = now, done  # a resumed run starts part-way
        else:
            run.training_s = now - run.first_step_at
        run.steps_done, run.steps_total = done, total

    def finish(self, index: int, failed: bool = False) -> None:
        run = self.runs[index]
        run.finished, run.failed = self.clock(), failed

    # --- estimates --------------------------------------------------------------------------------

    def _seconds_per_step(self) -> tuple[dict[str, float], float | None]:
        """Measured seconds per step by run label and by method, and the median over methods (for a
        method not seen yet; the median, as one cached linear probe steps a hundred times faster)."""
        sums: dict[str, list[float]] = {}
        for run in self.runs:
            trained = run.steps_done - run.resumed_from
            if trained > 0 and run.training_s > 0:
                for key in (run.label, run.method):  # a method may be cached on one dataset only
                    seconds, steps = sums.get(key, (0.0, 0))
                    sums[key] = [seconds + run.training_s, steps + trained]
        rates = {key: seconds / steps for key, (seconds, steps) in sums.items()}
        by_method = [rate for key, rate in rates.items() if any(key == run.method for run in self.runs)]
        return rates, (statistics.median(by_method) if by_method else None)

    def _overhead_s(self) -> float | None:
        """Mean seconds a finished run spent outside its training steps (setup, data, evaluation)."""
        spent = [
            run.finished - run.started - run.training_s
            for run in self.runs
            if run.finished is not None and not run.failed and run.started is not None
        ]
        return sum(spent) / len(spent) if spent else None

    def _steps_per_epoch(self) -> float | None:
        known = [run.steps_total / run.epochs for run in self.runs if run.steps_total]
        return sum(known) / len(known) if known else None

    def seconds_left(self) -> float | None:
        """About how long the command still needs, or None before any step was measured."""
        rates, typical_rate = self._seconds_per_step()
        steps_per_epoch = self._steps_per_epoch()
        if typical_rate is None or steps_per_epoch is None:
            return None
        overhead = self._overhead_s()
        work, longest_running = 0.0, 0.0
        for run in self.runs:
            if run.finished is not None:
                continue
            rate = rates.get(run.label, rates.get(run.method, typical_rate))
            total = run.steps_total or run.epochs * steps_per_epoch
            left = (total - run.steps_done) * rate
            if not run.running:
                left += overhead if overhead is not None else 0.1 * left
            elif overhead is not None:
                assert run.started is not None  # it is running
                left += max(0.0, overhead - (self.clock() - run.started - run.training_s))
            work += left
            if run.running:
                longest_running = max(longest_running, left)
        return max(work / max(1, self.parallel), longest_running)

    # --- text -------------------------------------------------------------------------------------

    def line(self) -> str:
        """Runs done and the time left first (a narrow terminal cuts the end), then what is running."""
        done = sum(run.finished is not None for run in self.runs)
        text = f"peft-bench run: {done} of {len(self.runs)} runs done"
        if done < len(self.runs):
            left = self.seconds_left()
            text += f", about {_clock(left)} left" if left is not None else ", time left: measuring"
        assert self.started is not None  # set in __post_init__
        text += f" ({_clock(self.clock() - self.started)} elapsed)"
        running = [run for run in self.runs if run.running]
        if running:
            text += " · running " + ", ".join(_describe(run) for run in running)
        return text


def _describe(run: RunState) -> str:
    if not run.steps_total:
        return f"{run.label} (starting)"
    if run.steps_done >= run.steps_total:
        return f"{run.label} (evaluating)"
    epoch = min(run.epochs, run.steps_done * run.epochs // run.steps_total + 1)
    return f"{run.label} (epoch {epoch}/{run.epochs})"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class StatusLine:
    """One line kept at the bottom of a terminal (rewritten in place), or printed now and then elsewhere.

    ``print_above`` and log records (through :meth:`clear_before_logging`) first wipe the line, so that
    other output never lands in the middle of it; the next :meth:`show` draws it again.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._drawn = False
        self._last_shown = -float("inf")

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        every = TTY_EVERY_S if self.tty else NON_TTY_EVERY_S
        if not force and now - self._last_shown < every:
            return
        self._last_shown = now
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            text = text if len(text) <= width else text[: width - 1] + "…"
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
            self._last_shown = -float("inf")  # redraw at the next show

    def print_above(self, text: str, stream: TextIO | None = None) -> None:
        self.clear()
        print(text, file=stream or sys.stdout, flush=True)

    def clear_before_logging(self) -> logging.Filter:
        """A filter for the root logger's handlers: it wipes the line before a record is written."""
        status = self

        class ClearStatusLine(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                status.clear()
                return True

        return ClearStatusLine()
