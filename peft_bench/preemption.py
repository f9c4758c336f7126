"""A preemption signal becomes a checkpoint at the next optimizer step, then the job hands over.

SLURM warns a job before it preempts or times it out (``--signal=USR2@90``, what submitit asks for).
Saving inside the signal handler could catch the model between a backward and an optimizer step, so
the handler only notes the request; the runner checks :func:`requested` after each step, saves a
consistent checkpoint and calls :func:`hand_over`. That calls the handler that was there before
(submitit's: it requeues the job through its checkpointing and exits); where there was none (a plain
``peft-bench run`` or ``torchrun``) it raises :class:`Preempted`.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """The run saved its checkpoint after a preemption signal and stops; ``--resume`` continues it."""


def preemption_signal() -> signal.Signals:
    # The same environment variable submitit reads, so both agree on the signal.
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


class PreemptionGuard:
    """While active, the preemption signal is noted instead of acted on at once."""

    _active: PreemptionGuard | None = None

    def __init__(self) -> None:
        self.signum = preemption_signal()
        self.requested = False
        self._previous = None

    def __enter__(self) -> PreemptionGuard:
        self._previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)
        PreemptionGuard._active = self
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _note(self, signum, frame) -> None:
        log.warning("received %s: checkpointing at the next optimizer step", signal.Signals(signum).name)
        self.requested = True

    def _restore(self) -> None:
        if PreemptionGuard._active is self:
            signal.signal(self.signum, self._previous)
            PreemptionGuard._active = None

    def hand_over(self) -> None:
        previous = self._previous
        self._restore()
        if callable(previous):
            previous(self.signum, None)  # submitit's handler: requeue, then exit (rank 0)
        raise Preempted(f"preempted ({self.signum.name}); the checkpoint is saved, resume to continue")


def requested() -> bool:
    guard = PreemptionGuard._active
    return guard is not None and guard.requested


def hand_over() -> None:
    guard = PreemptionGuard._active
    if guard is None:
        raise Preempted("preempted")
    guard.hand_over()
