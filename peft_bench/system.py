"""Facts about the machine a process runs on that several parts of the harness need."""

from __future__ import annotations

import os
import platform


def usable_cpu_count() -> int:
    """Cores this process may run on: sched_getaffinity honours taskset, cgroup and SLURM pinning, while
    cpu_count reports the whole machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model_name() -> str:
    """The CPU's marketing name ("AMD EPYC 7763 ..."), or "" where the system does not say."""
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo has the marketing name.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor().strip()
