"""Data-parallel training across the processes of one job: torchrun's or submitit's (one per GPU).

The runner stays a single-process program with a few collective points. The training steps call the model
through ``DistributedDataParallel`` (:func:`data_parallel`), which averages the gradients of what the method
trains over the ranks during the backward pass, overlapping the communication with it; the frozen backbone
has no gradient and stays out of DDP's reducer. With gradient accumulation only a step's last backward pass
communicates (:func:`gradient_sync`). Evaluation, checkpoints and state dicts use the unwrapped model, so
their names are those of a single-process run (no ``module.`` prefix). The epoch's clips are split between
ranks (``EpochSampler``), and training and evaluation counts are summed over ranks, so the logged metrics
are those of the whole data. ``train.batch_size`` stays the global batch of one optimizer step and ``lr``
is for that batch: a run on 8 GPUs optimises exactly as one on 1. Only rank 0 tracks and checkpoints.
NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _submitit_environment() -> dict[str, str] | None:
    """torchrun-style variables from submitit's job environment, when a submitit job has several tasks."""
    try:
        import submitit  # only a SLURM job launched by submitit has its environment; heavy otherwise

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not inside a submitit job
        return None
    if env.num_tasks <= 1:
        return None
    # One port per job, the same on every rank: derived from the job id.
    port = 20_000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20_000
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(port),
    }


@contextlib.contextmanager
def distributed_from_environment() -> Iterator[None]:
    """Join the job's process group if it has several processes (torchrun or submitit); else do nothing."""
    if is_distributed():
        yield
        return
    variables = _submitit_environment()
    if variables is not None:
        os.environ.update(variables)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    log.info("rank %d of %d (%s)", rank(), world_size(), backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sum_over_ranks(values: list[float], device: torch.device | None = None) -> list[float]:
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device or _collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one: all ranks stop at the same step."""
    return sum_over_ranks([1.0 if flag else 0.0])[0] > 0 if is_distributed() else flag


def data_parallel(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``module`` in DDP over the job's processes, reducing only its trainable parameters (DDP leaves out those
    without ``requires_grad``: the frozen backbone). Every method gives each trainable parameter a gradient in
    every step (tests/test_methods.py checks it), so none needs ``find_unused_parameters``."""
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Where a forward and backward pass runs: DDP's ``no_sync`` unless ``sync`` (a step's last micro-batch,
    whose backward pass then reduces the gradients accumulated so far); nothing for an unwrapped module."""
    no_sync = getattr(module, "no_sync", None)  # a compiled DDP module passes it on
    return contextlib.nullcontext() if sync or no_sync is None else no_sync()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
