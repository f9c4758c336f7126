"""States written to files and to mlflow, as enums whose members are their text everywhere: in JSON, in
mlflow, in f-strings, and equal to the plain strings read back from files written before."""

from __future__ import annotations

import enum


class TextEnum(str, enum.Enum):
    """``str(member)`` and ``f"{member}"`` give the value (Python 3.10's ``str`` mix-in gives the name)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class RunStatus(TextEnum):
    """An mlflow run's status, as the journal records it and mlflow shows it."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # the run's block ended normally
    FAILED = "FAILED"  # an exception
    KILLED = "KILLED"  # Ctrl-C, a stop signal, a preempted job handing over, or a process that died silently

    @property
    def terminal(self) -> bool:
        return self is not RunStatus.RUNNING
