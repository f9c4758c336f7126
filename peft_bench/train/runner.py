"""The one runner every method shares: frozen backbone + method -> train -> multi-view evaluation.

The method decides what it adds and what trains (``requires_grad``); the runner gives gradients and
optimizer state to those parameters only. AdamW without decay on 1-D parameters and on what the model
declares in ``no_weight_decay()``, with the method's own parameter groups, linear warm-up from lr 0
then cosine (per step), no gradient clipping unless asked, ``train.precision`` (bf16 autocast on GPU and fp32
on CPU by default; fp16 as released: see precision.py), top-1/top-5 over softmax-averaged views.
Checkpoints hold the trainable state, optimizer, scheduler, RNG states, the position within the epoch
and the mlflow run id, so that ``--resume`` continues the same run from the step it stopped at. They are
written at each epoch's end, every ``train.checkpoint_every`` steps, and when a preemption signal comes
(``preemption.py``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import pickle
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from peft_bench.train import distributed
from peft_bench.train import preemption
from peft_bench.backbones import create_backbone
from peft_bench.config import RunConfig, tracked_config
from peft_bench.data import build_dataset
from peft_bench.data.decode import decoder_provenance
from peft_bench.train.efficiency import apply_speed_options
from peft_bench.method_api.model import count_parameters, load_trainable_state_dict, trainable_state_dict
from peft_bench.method_api.optim import make_optimizer
from peft_bench.method_api.checks import measures_time
from peft_bench.precision import DTYPES, autocast, grad_scaler, hold_frozen_in, resolve_precision
from peft_bench.track.records import RunMeter, record_finished_run, split_summary
from peft_bench.method_api.registry import RunContext, get_method

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"  # the one before, kept for when the latest is damaged
CHECKPOINT_KEYS = ("trainable", "optimizer", "scheduler", "epoch", "rng_torch", "rng_python", "mlflow_run_id")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and says what to do."""


@dataclass
class RunResult:
    run_id: str
    top1: float
    top5: float
    trainable_params: int
    total_params: int
    wall_time_s: float
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} was asked for but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run_context(cfg: RunConfig, num_classes: int | None = None, class_names=None) -> RunContext:
    """What the method may know about this run (its config's ``from_context`` fields are filled from it)."""
    return RunContext(num_classes=num_classes, num_frames=cfg.num_frames, dataset=cfg.dataset,
                      class_names=tuple(class_names) if class_names is not None else None,
                      head_dropout=cfg.train.head_dropout)


def build_model(cfg: RunConfig, num_classes: int, backbone=None, class_names=None) -> nn.Module:
    """The backbone, frozen, with the method's additions; only what the method trains has requires_grad.
    The head, and its dropout, are the run's (``train.head_dropout``), the same whatever the method."""
    spec = get_method(cfg.method)
    backbone = backbone if backbone is not None else create_backbone(cfg.backbone, cfg.pretrained)
    return spec.create(backbone, run_context(cfg, num_classes, class_names), cfg.method_args)


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_ratio: float, from_zero: bool = True):
    """Linear warm-up over ``warmup_steps``, then cosine to ``min_ratio`` of the lr at ``total_steps``.

    ``from_zero``: step s of the warm-up runs at s / warmup_steps of the lr, so the first at 0, as the released
    code's lr_func (main.py: epoch / warmup_epochs); otherwise at (s + 1) / warmup_steps.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step if from_zero else step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, probs.shape[1])
    return (probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, progress: bool = False,
             precision: str = "auto") -> dict[str, float]:
    """Multi-view accuracy: softmax per view, then the mean over views, then top-1/top-5."""
    model.eval()
    correct1 = correct5 = seen = 0
    for batch in _progress(loader, progress, "eval"):
        forward, video = model_inputs(model, batch)
        video, labels = video.to(device, non_blocking=True), batch["label"].to(device)
        b, v = video.shape[:2]
        with autocast(device, precision):
            logits = forward(video.flatten(0, 1))
        probs = logits.float().softmax(dim=-1).view(b, v, -1).mean(dim=1)
        correct1 += topk_correct(probs, labels, 1)
        correct5 += topk_correct(probs, labels, 5)
        seen += b
    correct1, correct5, seen = distributed.sum_over_ranks([correct1, correct5, seen])  # each rank saw a share
    return {"top1": 100.0 * correct1 / max(seen, 1), "top5": 100.0 * correct5 / max(seen, 1), "clips": seen}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def model_inputs(model: nn.Module, batch: dict):
    """(what to call, its input): the model on clips, or only what follows the backbone on cached tokens."""
    if "tokens" in batch:  # from the feature cache: the backbone already ran
        return model.head_from_tokens, batch["tokens"]
    return model, batch["video"]


def _loader(dataset, batch_size: int, cfg: RunConfig, sampler: "EpochSampler | None" = None) -> DataLoader:
    """Training (with the epoch sampler; incomplete last batch dropped) or evaluation (in order, all clips)."""
    workers = getattr(dataset, "loader_workers", cfg.train.num_workers)  # cached features need none
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=sampler is not None,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(cfg.seed),
                      worker_init_fn=_leave_stop_signals_to_the_trainer)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C reaches the terminal's whole process group and SLURM signals every process of a job: a loader
    # worker must neither die of them nor note them; the training process saves and stops the run.
    for sig in (signal.SIGINT, preemption.preemption_signal()):
        signal.signal(sig, signal.SIG_IGN)


class EpochSampler(torch.utils.data.Sampler):
    """The epoch's shuffle, from (seed, epoch) alone; this rank's share of it; from a given clip on.

    A run resumed mid-epoch starts at the first clip it has not trained on, without loading those before.
    Under DDP each rank takes every world_size-th clip of the same permutation, so the ranks together
    see what one process would.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def _share(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        usable = self.size // self.world_size * self.world_size  # equal shares: no rank waits on another
        return order[self.rank:usable:self.world_size].tolist()

    def __iter__(self):
        return iter(self._share()[self.start:])

    def __len__(self) -> int:
        return self.size // self.world_size - self.start


@dataclass
class EpochPosition:
    """Where training stands: epochs completed, optimizer steps into the next one, and its running sums."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0


# --- checkpoints -------------------------------------------------------------------------------------

def save_checkpoint(path: Path, model, optimizer, scheduler, position: EpochPosition, run_id: str | None,
                    digest: str, scaler: torch.amp.GradScaler | None = None) -> None:
    state = {
        "trainable": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": position.epoch,  # epochs completed
        "step_in_epoch": position.step,  # optimizer steps into the next epoch (0 at an epoch's end)
        "epoch_sums": [position.loss_sum, position.correct, position.seen],
        "mlflow_run_id": run_id,
        "config_digest": digest,
        "rng_torch": torch.get_rng_state(),
        "rng_python": random.getstate(),
    }
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale it has found
        state["grad_scaler"] = scaler.state_dict()
    write_checkpoint(path, state)


class _WriteErrors:
    """A file wrapper that remembers the OSError a write raised: torch reports a full disk only as
    "unexpected pos 5824 vs 5718", dropping the errno that says what happened."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def write_checkpoint(path: Path, state: dict) -> None:
    """Atomically, keeping the one before: a kill at any moment leaves a whole latest or previous checkpoint,
    and a failed write (a full disk) leaves no temporary file and the previous checkpoint as it was."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    out = None
    try:
        with open(tmp, "wb") as f:
            out = _WriteErrors(f)
            torch.save(state, out)
            f.flush()
            os.fsync(f.fileno())
    except Exception as err:
        cause = out.error if out is not None and out.error is not None else err
        tmp.unlink(missing_ok=True)
        reason = f"{cause.strerror} (errno {cause.errno})" if isinstance(cause, OSError) and cause.strerror else cause
        kept = "the previous checkpoint is kept as it was" if path.is_file() else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write the checkpoint {path}: {reason}; {kept}") from None
    if path.is_file():
        previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
        try:  # a second name for the current file: at every moment one of the two is whole
            link = previous.with_name(f"{previous.name}.tmp{os.getpid()}")
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, previous)
        except OSError:  # no hard links on this file system: moved instead (a kill now keeps the previous one)
            os.replace(path, previous)
    os.replace(tmp, path)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Checkpoint files half-written by a process killed while saving (one run writes a folder at a time)."""
    for stale in run_dir.glob("checkpoint*.tmp*"):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state (tensors and plain data only: ``weights_only=True``); CheckpointError names the
    file and what is wrong with it."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"the checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:
        # torch's message opens with how to turn the safety off; what it refused is further down.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line),
                     lines[0] if lines else type(err).__name__)
        raise CheckpointError(f"the checkpoint {path} holds more than tensors and plain data and was refused "
                              f"(checkpoints load with weights_only=True): {first}") from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"the checkpoint {path} is damaged (cut short or corrupt): {first}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a peft-bench checkpoint (it has no {missing[0]!r})")
    return state


def resume_state(run_dir: Path) -> tuple[dict, Path] | None:
    """(state, file) of the latest readable checkpoint of a run folder, or None when it has none.

    A damaged latest checkpoint is named in a warning and the previous one is used; when that is damaged
    or absent too, CheckpointError says what to do.
    """
    latest, previous = Path(run_dir) / CHECKPOINT_NAME, Path(run_dir) / PREVIOUS_CHECKPOINT_NAME
    if not latest.is_file() and not previous.is_file():
        return None
    problems = []
    for path in (latest, previous):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            log.warning("%s; resuming from the previous checkpoint, %s", problems[0], path)
        return state, path
    raise CheckpointError(f"{'; '.join(problems)}; no readable earlier checkpoint is kept. Run without --resume to "
                          f"start this run over (its checkpoints are replaced), or put a good {CHECKPOINT_NAME} back")


def checkpoint_position(state: dict) -> EpochPosition:
    loss_sum, correct, seen = state.get("epoch_sums", (0.0, 0.0, 0.0))
    if distributed.rank() != 0:  # the saved sums are over all ranks: one rank carries them, or they count twice
        loss_sum = correct = seen = 0.0
    return EpochPosition(state["epoch"], state.get("step_in_epoch", 0), loss_sum, correct, seen)


def rank_batch_sizes(cfg: RunConfig, world_size: int) -> tuple[int, int]:
    """(clips per forward pass, passes per optimizer step) of one rank; train.batch_size is the global batch."""
    batch = cfg.train.batch_size
    if batch % world_size:
        raise ValueError(f"train.batch_size {batch} (the global batch) does not split over {world_size} processes")
    per_rank = batch // world_size
    micro = min(cfg.train.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ValueError(f"train.micro_batch_size {micro} does not divide the per-process batch {per_rank}")
    return micro, per_rank // micro


class NullTracker:
    """What ranks other than 0 track: nothing."""

    run_id = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def step_hook(cfg: RunConfig, save: Callable[[EpochPosition], None],
              checkpoint_path: Path | None = None) -> Callable[[EpochPosition], None]:
    """Called after every optimizer step: a checkpoint every ``checkpoint_every`` steps, and on a stop signal
    a checkpoint and then the hand-over (requeue under submitit, :class:`preemption.Preempted` otherwise)."""
    every = cfg.train.checkpoint_every

    def after_step(position: EpochPosition) -> None:
        stop = distributed.any_rank(preemption.requested())
        if stop or (every and position.step % every == 0):
            save(position)
        if stop:
            preemption.hand_over(resume_hint(position, checkpoint_path))

    return after_step


def resume_hint(position: EpochPosition, checkpoint_path: Path | None) -> str:
    """What the one line at a stop says after the signal's name."""
    where = f"epoch {position.epoch + 1}, step {position.step}" if position.step else f"epoch {position.epoch}'s end"
    saved = f"the checkpoint {checkpoint_path} is saved" if checkpoint_path else "the checkpoint is saved"
    return f" at {where}: {saved}; run the same command with --resume to continue"


class _StopOnSignal:
    """The final evaluation's loader, handing over between batches once a stop signal came (one process)."""

    def __init__(self, loader, position: EpochPosition, checkpoint_path: Path) -> None:
        self.loader, self.position, self.checkpoint_path = loader, position, checkpoint_path

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if preemption.requested():
                preemption.hand_over(resume_hint(self.position, self.checkpoint_path))
            yield batch


def video_problem_metrics(datasets: dict) -> dict[str, int]:
    """``train_missing_videos``, ``val_unreadable_videos``, ...: distinct videos of each kind met so far."""
    metrics = {}
    for split, dataset in datasets.items():
        for kind, count in getattr(dataset, "problem_counts", dict)().items():
            metrics[f"{split}_{kind}_videos"] = count
    return metrics


# --- the run -----------------------------------------------------------------------------------------

def run(cfg: RunConfig, progress: bool = True, resume: bool = False,
        report: Callable[[int, int], None] | None = None) -> RunResult:
    """Train and evaluate one run. ``report(steps_done, steps_total)`` hears of every optimizer step (and
    the start, and the end of training before the final evaluation): the command's progress line.
    SIGTERM, SIGINT and the preemption signal save a checkpoint at the next optimizer step and raise
    :class:`preemption.Preempted` (the mlflow run is then KILLED)."""
    with preemption.guarded():
        return _run(cfg, progress, resume, report)


def _run(cfg: RunConfig, progress: bool, resume: bool, report: Callable[[int, int], None] | None) -> RunResult:
    from peft_bench.track.journal import JournaledTracker, unfinished_journal
    from peft_bench.track.tracking import check_store, default_tracking_uri

    start = time.time()
    check_store(cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir)))  # a damaged one: say so now
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_dir = cfg.run_dir()
    # Time, clips and peak memory for the result record, carried over the segments of a resumed run.
    meter = RunMeter.open(run_dir, device, resuming=resume and (run_dir / CHECKPOINT_NAME).is_file(), since=start)
    spec = get_method(cfg.method)
    backbone = create_backbone(cfg.backbone, cfg.pretrained)  # the datasets need its input size and normalisation
    data_kwargs = dict(root=Path(cfg.data_root) if cfg.data_root else None,
                       annotations=Path(cfg.annotations) if cfg.annotations else None,
                       input_size=backbone.input_size, mean=backbone.mean, std=backbone.std,
                       num_frames=cfg.num_frames, seed=cfg.seed, decoder=cfg.data.decoder,
                       decode_device=cfg.data.decode_device, classes=cfg.classes, recipe=cfg.recipe)
    train_set = build_dataset(cfg.dataset, "train", max_failure_fraction=cfg.train.max_failure_fraction, **data_kwargs)
    val_set = build_dataset(cfg.dataset, "val", max_failure_fraction=cfg.train.max_failure_fraction, **data_kwargs)
    val_items = val_set
    if cfg.train.val_subset:
        val_items = torch.utils.data.Subset(val_set, range(min(cfg.train.val_subset, len(val_set))))
    splits = {"train": split_summary(train_set), "val": split_summary(val_set, len(val_items))}
    # Their counts of missing, unreadable and short videos (the feature cache may stand in for them below).
    clip_sets = {"train": train_set, "val": val_set}

    pretrained = backbone.info.pretrained
    pretrained_ids = {id(p) for p in backbone.parameters()}
    model = build_model(cfg, train_set.num_classes, backbone, getattr(train_set, "class_names", None)).to(device)
    counts = count_parameters(model)
    precision = resolve_precision(cfg.train.precision, device)
    if precision == "fp16":
        if cfg.speed.frozen_bf16:
            raise ValueError("speed.frozen_bf16 and train.precision=fp16 contradict each other: fp16 holds frozen "
                             "weights in fp16; set train.precision=bf16 to keep them in bf16")
        hold_frozen_in(model, DTYPES["fp16"])  # as released (models_adapter.py): frozen weights in fp16
    scaler = grad_scaler(device, precision)
    step_model, applied = apply_speed_options(model, cfg.speed, device)  # step_model: compiled, if asked
    if applied:
        log.info("speed options: %s", ", ".join(applied))

    rank, world = distributed.rank(), distributed.world_size()
    micro, accumulate = rank_batch_sizes(cfg, world)
    train_set, val_items, cache_tag = use_feature_cache(model, train_set, val_items, cfg, device, micro)
    sampler = EpochSampler(len(train_set), cfg.seed, rank, world)
    train_loader = _loader(train_set, micro, cfg, sampler)
    if world > 1:  # each rank evaluates a share; evaluate() sums the counts
        val_items = torch.utils.data.Subset(val_items, range(rank, len(val_items), world))
    val_loader = _loader(val_items, max(1, micro // 2), cfg)
    steps_per_epoch = max(1, len(train_loader) // accumulate)
    if len(train_loader) < accumulate:
        raise ValueError(f"the training set ({len(train_set)} clips) is smaller than one batch ({cfg.train.batch_size})")
    optimizer = make_optimizer(model, cfg.train, pretrained_ids)
    scheduler = warmup_cosine(optimizer, round(cfg.train.warmup_epochs * steps_per_epoch),
                              cfg.train.epochs * steps_per_epoch, cfg.train.min_lr / cfg.train.lr,
                              from_zero=cfg.train.warmup_from_zero)

    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        remove_stale_temporaries(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    position, run_id = EpochPosition(), None
    found = resume_state(run_dir) if resume else None  # a damaged latest checkpoint: the previous one
    resuming = found is not None
    if resuming:
        state, _ = found
        load_trainable_state_dict(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate(_as_python_rng_state(state["rng_python"]))
        position, run_id = checkpoint_position(state), state["mlflow_run_id"]
        log.info("resuming %s from epoch %d, step %d (mlflow run %s)", cfg.run_name(), position.epoch,
                 position.step, run_id)

    uri = cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir))
    # --resume continues the run folder's mlflow run: from its checkpoint, or, killed before it saved one,
    # from the start of training (a finished run without a checkpoint is not reopened).
    continued = resuming or (resume and unfinished_journal(run_dir))
    tracker = (JournaledTracker(run_dir, uri, cfg.experiment, cfg.run_name(), resume_run_id=run_id, resume=continued)
               if rank == 0 else NullTracker())
    with tracker:
        tags, flops = {}, 0.0
        if rank == 0:  # the mlflow run's tags and metrics at its start, and its result record at the end
            with torch.random.fork_rng():  # the check must not shift this run's random stream
                models_time = _measured_models_time(cfg.method, spec.build, json.dumps(cfg.method_args, sort_keys=True),
                                                    cfg.backbone)
            tags = {
                "peft_bench.method": cfg.method, "peft_bench.backbone": cfg.backbone,
                "peft_bench.dataset": cfg.dataset_label(), "peft_bench.seed": str(cfg.seed),
                # Measured (frame-shuffle test on a random tiny backbone), not taken from the declaration.
                "peft_bench.models_time": "yes" if models_time else "no",
                "peft_bench.pretrained": pretrained,
                "peft_bench.group": spec.group, "peft_bench.architecture": spec.architecture,
                # The batch and lr of one optimizer step are the config's whatever the process count.
                "peft_bench.world_size": str(world), "peft_bench.rank_batch": str(micro * accumulate),
                "peft_bench.train.feature_cache": cache_tag,
                # What decoded the clips (decoder, version, FFmpeg): every decoder gives the same frames.
                **{f"peft_bench.{key}": value for key, value in
                   decoder_provenance(cfg.data.decoder, cfg.data.decode_device).items()},
            }
            if cfg.classes:  # a subset of the dataset's classes (Mini-Kinetics style), as asked for
                tags["peft_bench.classes"] = f"{len(cfg.classes)} of {train_set.source_num_classes}"
            flops = count_gflops(model, cfg.num_frames, backbone.input_size)
        if not resuming and rank == 0:
            tracker.log_config(_config_for_tracking(cfg))
            tracker.log_environment()
            tracker.set_tags(tags)
            views = getattr(val_set, "num_views", 1)
            tracker.log_metrics({"trainable_params": counts.trainable, "total_params": counts.total,
                                 "gflops_per_view": flops, "gflops": flops * views})
        log.info("%s: %s trainable of %s parameters", cfg.run_name(), f"{counts.trainable:,}", f"{counts.total:,}")

        def save(at: EpochPosition) -> None:
            # Every rank takes part in the sum; rank 0 alone writes.
            at.loss_sum, at.correct, at.seen = distributed.sum_over_ranks([at.loss_sum, at.correct, at.seen])
            if rank == 0:
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, at, tracker.run_id, cfg.digest(),
                                scaler)
                meter.save()

        after_step = step_hook(cfg, save, checkpoint_path)
        total_steps = cfg.train.epochs * steps_per_epoch
        if report is not None:
            after_step = reporting(after_step, report, steps_per_epoch, total_steps)
            report(position.epoch * steps_per_epoch + position.step, total_steps)
        for epoch in range(position.epoch, cfg.train.epochs):
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            # The epoch's shuffle depends on (seed, epoch) alone, so a resumed run sees the same order.
            sampler.set_position(epoch, position.step * accumulate * micro)
            train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # loader workers' seeds
            with meter.timing("train"):
                stats = train_one_epoch(step_model, train_loader, optimizer, scheduler, device, cfg, accumulate,
                                        progress, desc=f"{cfg.run_name()} epoch {epoch + 1}/{cfg.train.epochs}",
                                        position=position, after_step=after_step, scaler=scaler)
            meter.count("train", stats["clips"])  # the whole epoch's, a resumed epoch's earlier part included
            metrics = {"train_loss": stats["loss"], "train_top1": stats["top1"], "train_clips": stats["clips"],
                       "lr": scheduler.get_last_lr()[0]}
            if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and epoch + 1 < cfg.train.epochs:
                metrics.update({f"val_{k}": v for k, v in evaluate(step_model, val_loader, device,
                                                                      precision=precision).items()
                                if k != "clips"})
            tracker.log_metrics(metrics, step=epoch + 1)
            position = EpochPosition(epoch + 1)
            save(position)
            if distributed.any_rank(preemption.requested()):  # signalled during this epoch's evaluation
                preemption.hand_over(resume_hint(position, checkpoint_path))

        if report is not None:
            report(total_steps, total_steps)
        # A signal now stops the evaluation: the checkpoint of the last epoch's end is what a resume needs.
        final_loader = val_loader if world > 1 else _StopOnSignal(val_loader, position, checkpoint_path)
        with meter.timing("eval"):
            final = evaluate(step_model, final_loader, device, progress, precision)
        meter.count("eval", final["clips"])
        wall = meter.snapshot().wall_s  # every segment's, for a resumed run
        failures = getattr(train_set, "failed_count", 0) + getattr(val_set, "failed_count", 0)
        tracker.log_metrics({"val_top1": final["top1"], "val_top5": final["top5"]}, step=cfg.train.epochs)
        tracker.log_metrics({"top1": final["top1"], "top5": final["top5"], "wall_time_s": wall,
                             "decode_failures": failures, "eval_clips": final["clips"],
                             **video_problem_metrics(clip_sets)})
        if rank == 0:
            record_finished_run(tracker, meter, cfg, model=model, tags=tags, counts=counts, gflops_per_view=flops,
                                val_set=val_set, final=final, splits=splits, clip_sets=clip_sets,
                                input_size=backbone.input_size, world_size=world)
    run_id = tracker.run_id  # after the tracker closed: set once mlflow was reached, None if it never was
    return RunResult(run_id, final["top1"], final["top5"], counts.trainable, counts.total, wall, run_dir)


def reporting(after_step: Callable[[EpochPosition], None], report: Callable[[int, int], None],
              steps_per_epoch: int, total_steps: int) -> Callable[[EpochPosition], None]:
    def after_step_reported(position: EpochPosition) -> None:
        after_step(position)
        report(position.epoch * steps_per_epoch + position.step, total_steps)

    return after_step_reported


@functools.lru_cache(maxsize=None)
def _measured_models_time(method: str, build, method_args: str, backbone: str) -> bool:
    """measures_time of the run's own method config (JSON), once per config and process (keyed by the build
    function too, so a plugin that re-registers the name is measured again): a sweep repeats configs.
    On the small tiny backbone, unless the config names blocks tiny does not have: then on the run's own
    backbone, with random weights."""
    try:
        return measures_time(method, json.loads(method_args))
    except ValueError as err:
        log.info("measuring temporal modelling on %s: %s", backbone, err)
        return measures_time(method, json.loads(method_args), backbone_name=backbone)


def use_feature_cache(model, train_set, val_set, cfg: RunConfig, device, batch_size: int):
    """(train set, val set, tag): cached backbone features when ``speed.feature_cache`` is on and nothing in
    the backbone trains; otherwise the clip datasets unchanged. The tag records the choice with the run."""
    from peft_bench.train.feature_cache import cached_datasets, feature_cache_refusal

    if not cfg.speed.feature_cache:
        return train_set, val_set, "off"
    refusal = feature_cache_refusal(model)
    if refusal is not None:
        log.warning("%s: the feature cache cannot serve it (%s); training on clips", cfg.method, refusal)
        return train_set, val_set, f"off: {refusal}"
    train_set, val_set, report = cached_datasets(model, train_set, val_set, cfg.train.epochs, cfg.speed, device,
                                                 batch_size, cfg.train.num_workers, precision=cfg.train.precision)
    log.info("feature cache: %d entries read, %d built in %.1f s", report.hits, report.misses, report.seconds)
    return train_set, val_set, report.description


def count_gflops(model: nn.Module, num_frames: int, input_size: int) -> float:
    """GFLOPs of one view (1 multiply-add = 1 FLOP), counted on a CPU copy so the run's model is untouched."""
    from peft_bench.measure.accounting import count_video_flops

    counted = count_video_flops(copy.deepcopy(model).cpu().float().eval(), num_frames, input_size)
    if counted.uncounted_ops:
        log.warning("GFLOPs leave out ops with no counter: %s", ", ".join(sorted(counted.uncounted_ops)))
    return counted.total / 1e9


def train_one_epoch(model, loader, optimizer, scheduler, device, cfg: RunConfig, accumulate: int,
                    progress: bool, desc: str, position: EpochPosition | None = None,
                    after_step: Callable[[EpochPosition], None] | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One epoch, or its rest from ``position`` (the loader then starts at that position's clips).

    ``scaler`` (fp16) scales the loss and skips steps whose gradients overflowed, as the released code's
    loss scaler; the scheduler steps either way, as there."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    position = position or EpochPosition()
    total_loss, correct, seen = position.loss_sum, position.correct, position.seen
    optimizer.zero_grad(set_to_none=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for i, batch in enumerate(_progress(loader, progress, desc), start=position.step * accumulate):
        forward, video = model_inputs(model, batch)
        video = video[:, 0].to(device, non_blocking=True)  # training clips carry one view
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, cfg.train.precision):
            logits = forward(video)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.train.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()}: lower train.lr or check the data")
        scaler.scale(loss / accumulate).backward()
        if (i + 1) % accumulate == 0:
            distributed.average_gradients(trainable)
            if cfg.train.grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, max_norm=cfg.train.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
        if (i + 1) % accumulate == 0 and after_step is not None:
            after_step(EpochPosition(position.epoch, (i + 1) // accumulate, total_loss, correct, seen))
    total_loss, correct, seen = distributed.sum_over_ranks([total_loss, correct, seen])
    return {"loss": total_loss / max(seen, 1), "top1": 100.0 * correct / max(seen, 1), "clips": seen}


def _config_for_tracking(cfg: RunConfig) -> dict:
    return {**tracked_config(cfg), "config_digest": cfg.digest()}


def _as_python_rng_state(state):
    # torch.save turns the tuple into lists on the way through weights_only loading; random wants tuples.
    version, internal, gauss = state
    return int(version), tuple(int(x) for x in internal), gauss
