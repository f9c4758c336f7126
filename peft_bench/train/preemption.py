"""A stop signal becomes a checkpoint at the next optimizer step, then the run hands over.

SLURM warns a job before it preempts or times it out (``--signal=USR2@90``, what submitit asks for); a
user stops a run with Ctrl-C (SIGINT) or ``kill`` (SIGTERM). Saving inside the signal handler could catch
the model between a backward and an optimizer step, so the handler only notes the request; the runner
checks :func:`requested` after each step, saves a consistent checkpoint and calls :func:`hand_over`. For
the preemption signal that calls the handler that was there before (submitit's: it requeues the job
through its checkpointing and exits); otherwise (a plain ``peft-bench run``, ``torchrun``, SIGTERM or
Ctrl-C) it raises :class:`Preempted`, which marks the mlflow run KILLED and ends the command with one line.

SIGTERM and SIGINT are taken over only where nobody else handles them: submitit keeps its own SIGTERM
handler. A second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

log = logging.getLogger(__name__)

# What signal.getsignal returns and signal.signal takes back: a function, SIG_DFL or SIG_IGN, or None (a
# handler installed outside Python).
SignalHandler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | signal.Handlers | None"


class Preempted(SystemExit):
    """The run saved its checkpoint after a stop signal and stops; ``--resume`` continues it."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


def preemption_signal() -> signal.Signals:
    # The same environment variable submitit reads, so both agree on the signal.
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


class PreemptionGuard:
    """While active, a stop signal is noted instead of acted on at once."""

    _active: PreemptionGuard | None = None

    def __init__(self) -> None:
        self.signum = preemption_signal()
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, SignalHandler] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> PreemptionGuard:
        for sig in dict.fromkeys((self.signum, signal.SIGTERM, signal.SIGINT)):
            previous = signal.getsignal(sig)
            if sig == self.signum or previous in (signal.SIG_DFL, signal.default_int_handler):
                self._previous[sig] = previous
                signal.signal(sig, self._note)
        PreemptionGuard._active = self
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _note(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.received is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C again: the user will not wait for the next step
        self.received = self.received or sig
        more = " (Ctrl-C again stops at once, without saving)" if sig == signal.SIGINT else ""
        log.warning("received %s: saving a checkpoint at the next optimizer step%s", sig.name, more)

    def _restore(self) -> None:
        if PreemptionGuard._active is self:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            PreemptionGuard._active = None

    def hand_over(self, detail: str = "") -> None:
        received = self.received or self.signum
        previous = self._previous.get(received)
        self._restore()
        if received == self.signum and callable(previous):
            previous(self.signum, None)  # submitit's handler: requeue, then exit (rank 0)
        raise Preempted(f"stopped by {received.name}{detail}", received)


@contextlib.contextmanager
def guarded():
    """A :class:`PreemptionGuard` unless one is active already (a sweep job's) or signals cannot be set here
    (not the main thread)."""
    if PreemptionGuard._active is not None or threading.current_thread() is not threading.main_thread():
        yield PreemptionGuard._active
        return
    with PreemptionGuard() as guard:
        yield guard


def requested() -> bool:
    guard = PreemptionGuard._active
    return guard is not None and guard.requested


def received() -> signal.Signals | None:
    guard = PreemptionGuard._active
    return guard.received if guard is not None else None


def hand_over(detail: str = "") -> None:
    guard = PreemptionGuard._active
    if guard is None:
        raise Preempted(f"preempted{detail}")
    guard.hand_over(detail)
