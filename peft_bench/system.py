"""Facts about the machine a process runs on that several parts of the harness need."""

from __future__ import annotations

import os


def usable_cpu_count() -> int:
    """Cores this process may run on: sched_getaffinity honours taskset, cgroup and SLURM pinning, while
    cpu_count reports the whole machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
