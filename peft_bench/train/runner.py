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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from peft_bench.backbones import VideoBackbone, create_backbone
from peft_bench.config import RunConfig, tracked_config
from peft_bench.data.build import build_dataset
from peft_bench.data.dataset import VideoClipDataset
from peft_bench.data.decode import decoder_provenance
from peft_bench.measure.accounting import count_video_flops
from peft_bench.method_api.checks import measures_time
from peft_bench.method_api.model import (
    ParameterCount,
    VideoClassifier,
    count_parameters,
    load_trainable_state_dict,
    trainable_state_dict,
)
from peft_bench.method_api.optim import make_optimizer
from peft_bench.method_api.registry import MethodSpec, RunContext, get_method
from peft_bench.precision import DTYPES, autocast, grad_scaler, hold_frozen_in, resolve_precision
from peft_bench.track.records import RunMeter, SplitSummary, record_finished_run, split_summary
from peft_bench.train import distributed, preemption
from peft_bench.train.efficiency import apply_speed_options
from peft_bench.train.feature_cache import CachedFeatures, HeadOnCachedFeatures, cached_datasets, feature_cache_refusal

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"  # the one before, kept for when the latest is damaged
CHECKPOINT_KEYS = ("trainable", "optimizer", "scheduler", "epoch", "rng_torch", "rng_python", "mlflow_run_id")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and says what to do."""


@dataclass
class RunResult:
    run_id: str | None  # None when tracking was never reached (the run's journal keeps its results)
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
    return RunContext(
        num_classes=num_classes,
        num_frames=cfg.num_frames,
        dataset=cfg.dataset,
        class_names=tuple(class_names) if class_names is not None else None,
        head_dropout=cfg.train.head_dropout,
    )


def build_model(cfg: RunConfig, num_classes: int, backbone=None, class_names=None) -> VideoClassifier:
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
    return int((probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, float]:
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
    all1, all5, all_seen = distributed.sum_over_ranks([correct1, correct5, seen])  # each rank saw a share
    return {"top1": 100.0 * all1 / max(all_seen, 1), "top5": 100.0 * all5 / max(all_seen, 1), "clips": all_seen}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def model_inputs(model: nn.Module, batch: dict):
    """(what to call, its input): the model on clips; on cached features (the backbone already ran) only what
    follows the backbone: a classifier's ``head_from_tokens``, or the module itself when it is only that part
    already (``HeadOnCachedFeatures``, as DDP wraps it: see ``training_module``)."""
    if "tokens" in batch:
        return getattr(model, "head_from_tokens", model), batch["tokens"]
    return model, batch["video"]


def _loader(dataset, batch_size: int, cfg: RunConfig, sampler: EpochSampler | None = None) -> DataLoader:
    """Training (with the epoch sampler; incomplete last batch dropped) or evaluation (in order, all clips)."""
    workers = getattr(dataset, "loader_workers", cfg.train.num_workers)  # cached features need none
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=sampler is not None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_leave_stop_signals_to_the_trainer,
    )


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
        return order[self.rank : usable : self.world_size].tolist()

    def __iter__(self):
        return iter(self._share()[self.start :])

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


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    position: EpochPosition,
    run_id: str | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """The trainable state, optimizer, schedule, random streams and position of a run, written atomically. (Which
    config it belongs to is its folder's name: ``RunConfig.run_dir`` holds the config digest.)"""
    state = {
        "trainable": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": position.epoch,  # epochs completed
        "step_in_epoch": position.step,  # optimizer steps into the next epoch (0 at an epoch's end)
        "epoch_sums": [position.loss_sum, position.correct, position.seen],
        "mlflow_run_id": run_id,
        "rng_torch": torch.get_rng_state(),
        "rng_python": random.getstate(),
    }
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale it has found
        state["grad_scaler"] = scaler.state_dict()
    write_checkpoint(path, state)


class _WriteErrors:
    """A file wrapper that remembers the OSError a write raised: torch reports a full disk only as
    "unexpected pos 5824 vs 5718", dropping the errno that says what happened."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
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
            torch.save(state, out)  # type: ignore[arg-type]  # torch stubs: it takes any object with write and flush
            f.flush()
            os.fsync(f.fileno())
    except Exception as err:  # noqa: BLE001  -- any failed write: the temporary goes, CheckpointError says why
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
        state = torch.load(path, map_location="cpu", weights_only=True)  # noqa: TID251  -- weights_only: no unpickling
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:
        # torch's message opens with how to turn the safety off; what it refused is further down.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next(
            (line for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line),
            lines[0] if lines else type(err).__name__,
        )
        raise CheckpointError(
            f"the checkpoint {path} holds more than tensors and plain data and was refused "
            f"(checkpoints load with weights_only=True): {first}"
        ) from None
    except Exception as err:  # noqa: BLE001  -- whatever a damaged file makes torch raise, CheckpointError names it
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
    raise CheckpointError(
        f"{'; '.join(problems)}; no readable earlier checkpoint is kept. Run without --resume to "
        f"start this run over (its checkpoints are replaced), or put a good {CHECKPOINT_NAME} back"
    )


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


def step_hook(
    cfg: RunConfig, save: Callable[[EpochPosition], None], checkpoint_path: Path | None = None
) -> Callable[[EpochPosition], None]:
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
#
# run() reads top to bottom as its stages: build (the backbone, the data, the method's model), prepare the
# training (feature cache, loaders, optimizer, the data-parallel wrapper), restore a checkpoint, then, tracked:
# start (tags, GFLOPs), train, evaluate and record. Each stage is a function of what the ones before gave.


def run(
    cfg: RunConfig, progress: bool = True, resume: bool = False, report: Callable[[int, int], None] | None = None
) -> RunResult:
    """Train and evaluate one run. ``report(steps_done, steps_total)`` hears of every optimizer step (and
    the start, and the end of training before the final evaluation): the command's progress line.
    SIGTERM, SIGINT and the preemption signal save a checkpoint at the next optimizer step and raise
    :class:`preemption.Preempted` (the mlflow run is then KILLED)."""
    with preemption.guarded():
        return _run(cfg, progress, resume, report)


def _run(cfg: RunConfig, progress: bool, resume: bool, report: Callable[[int, int], None] | None) -> RunResult:
    # mlflow (and pandas with it) loads when a run starts tracking, not with this module: a process that only
    # builds and steps models (benchmarks/method_speed.py's measured ones) keeps it out of its memory.
    from peft_bench.track.journal import JournaledTracker, OffRankTracker, unfinished_journal
    from peft_bench.track.tracking import check_store, default_tracking_uri  # (the same)

    start = time.time()
    uri = cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir))
    check_store(uri)  # a damaged store: say so now, before any work
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_dir = cfg.run_dir()
    # Time, clips and peak memory for the result record, carried over the segments of a resumed run.
    meter = RunMeter.open(run_dir, device, resuming=resume and (run_dir / CHECKPOINT_NAME).is_file(), since=start)
    spec = get_method(cfg.method)
    backbone = create_backbone(cfg.backbone, cfg.pretrained)  # the datasets need its input size and normalisation
    data = build_data(cfg, backbone)
    built = build_run_model(cfg, spec, backbone, data.train_set, device)
    loop = prepare_training(cfg, built, data)
    open_run_dir(cfg, run_dir)
    restored = restore_checkpoint(cfg, run_dir, built, loop) if resume else None
    position, run_id = restored if restored is not None else (EpochPosition(), None)
    # --resume continues the run folder's mlflow run: from its checkpoint, or, killed before it saved one,
    # from the start of training (a finished run without a checkpoint is not reopened).
    continued = restored is not None or (resume and unfinished_journal(run_dir))
    tracker = (
        JournaledTracker(run_dir, uri, cfg.experiment, cfg.run_name(), resume_run_id=run_id, resume=continued)
        if distributed.rank() == 0
        else OffRankTracker()
    )
    checkpoint_path = run_dir / CHECKPOINT_NAME
    with tracker:
        tags, flops = start_tracking(cfg, tracker, built, data, loop, fresh=restored is None)
        position = train_epochs(cfg, built, loop, tracker, meter, position, checkpoint_path, progress, report)
        final, wall = evaluate_and_record(
            cfg, built, data, loop, tracker, meter, position, checkpoint_path, progress, tags, flops
        )
    run_id = tracker.run_id  # after the tracker closed: set once mlflow was reached, None if it never was
    return RunResult(run_id, final["top1"], final["top5"], built.counts.trainable, built.counts.total, wall, run_dir)


@dataclass
class RunData:
    """The data stage's datasets: the clips, the ones evaluated, and what the result record says of them."""

    train_set: VideoClipDataset
    val_set: VideoClipDataset
    val_items: VideoClipDataset | Subset  # val_set, or its first train.val_subset clips
    splits: dict[str, SplitSummary]
    clip_sets: dict[str, VideoClipDataset]  # their counts of missing, unreadable and short videos


def build_data(cfg: RunConfig, backbone: VideoBackbone) -> RunData:
    """The run's training and validation clips, read and transformed for ``backbone``."""

    def clips(split: str) -> VideoClipDataset:
        return build_dataset(
            cfg.dataset,
            split,
            root=Path(cfg.data_root) if cfg.data_root else None,
            annotations=Path(cfg.annotations) if cfg.annotations else None,
            input_size=backbone.input_size,
            mean=backbone.mean,
            std=backbone.std,
            num_frames=cfg.num_frames,
            seed=cfg.seed,
            decoder=cfg.data.decoder,
            decode_device=cfg.data.decode_device,
            max_failure_fraction=cfg.train.max_failure_fraction,
            classes=cfg.classes,
            recipe=cfg.recipe,
        )

    train_set = clips("train")
    val_set = clips("val")
    val_items: VideoClipDataset | Subset = val_set
    if cfg.train.val_subset:
        val_items = torch.utils.data.Subset(val_set, range(min(cfg.train.val_subset, len(val_set))))
    splits = {"train": split_summary(train_set), "val": split_summary(val_set, len(val_items))}
    return RunData(train_set, val_set, val_items, splits, {"train": train_set, "val": val_set})


@dataclass
class BuiltModel:
    """The build stage's model: the method on the frozen backbone, and how its steps compute."""

    spec: MethodSpec
    backbone: VideoBackbone
    model: VideoClassifier
    step_model: nn.Module  # the model, or its compiled wrapper (speed.compile): what one process steps and evaluates
    counts: ParameterCount
    device: torch.device
    precision: str  # train.precision made concrete for the device
    scaler: torch.amp.GradScaler  # on for fp16 only
    pretrained_ids: set[int]  # the backbone's own weights (lr * backbone_lr_scale, where a method trains them)


def build_run_model(
    cfg: RunConfig, spec: MethodSpec, backbone: VideoBackbone, train_set: VideoClipDataset, device: torch.device
) -> BuiltModel:
    """The method's model on ``backbone`` for the training set's classes, on ``device``, in the run's precision and
    with its speed options."""
    pretrained_ids = {id(p) for p in backbone.parameters()}
    model = build_model(cfg, train_set.num_classes, backbone, getattr(train_set, "class_names", None)).to(device)
    counts = count_parameters(model)
    precision = resolve_precision(cfg.train.precision, device)
    if precision == "fp16":
        if cfg.speed.frozen_bf16:
            raise ValueError(
                "speed.frozen_bf16 and train.precision=fp16 contradict each other: fp16 holds frozen "
                "weights in fp16; set train.precision=bf16 to keep them in bf16"
            )
        hold_frozen_in(model, DTYPES["fp16"])  # as released (models_adapter.py): frozen weights in fp16
    scaler = grad_scaler(device, precision)
    step_model, applied = apply_speed_options(model, cfg.speed, device)  # step_model: compiled, if asked
    if applied:
        log.info("speed options: %s", ", ".join(applied))
    return BuiltModel(spec, backbone, model, step_model, counts, device, precision, scaler, pretrained_ids)


@dataclass
class TrainingLoop:
    """The training stage's inputs besides the model: batches, optimizer, schedule, and what one step calls."""

    train_set: Dataset  # the clips, or the feature cache's copies of their backbone features
    train_loader: DataLoader
    val_loader: DataLoader  # this process's share of the evaluated clips (or of their cached features)
    sampler: EpochSampler
    micro: int  # clips per forward pass
    accumulate: int  # forward passes per optimizer step
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cache_tag: str  # the feature cache's choice, as the run's tag records it
    train_module: nn.Module  # what a training step calls (training_module)


def prepare_training(cfg: RunConfig, built: BuiltModel, data: RunData) -> TrainingLoop:
    """Loaders over this process's share of the clips (or of their cached features), the optimizer and its
    schedule, and the module the steps call."""
    rank, world = distributed.rank(), distributed.world_size()
    micro, accumulate = rank_batch_sizes(cfg, world)
    train_set, val_items, cache_tag = use_feature_cache(
        built.model, data.train_set, data.val_items, cfg, built.device, micro
    )
    sampler = EpochSampler(len(train_set), cfg.seed, rank, world)
    train_loader = _loader(train_set, micro, cfg, sampler)
    if world > 1:  # each rank evaluates a share; evaluate() sums the counts
        val_items = torch.utils.data.Subset(val_items, range(rank, len(val_items), world))
    val_loader = _loader(val_items, max(1, micro // 2), cfg)
    steps_per_epoch = max(1, len(train_loader) // accumulate)
    if len(train_loader) < accumulate:
        raise ValueError(
            f"the training set ({len(train_set)} clips) is smaller than one batch ({cfg.train.batch_size})"
        )
    optimizer = make_optimizer(built.model, cfg.train, built.pretrained_ids)
    scheduler = warmup_cosine(
        optimizer,
        round(cfg.train.warmup_epochs * steps_per_epoch),
        cfg.train.epochs * steps_per_epoch,
        cfg.train.min_lr / cfg.train.lr,
        from_zero=cfg.train.warmup_from_zero,
    )
    module = training_module(built, isinstance(train_set, CachedFeatures), cfg.speed.compile)
    return TrainingLoop(
        train_set,
        train_loader,
        val_loader,
        sampler,
        micro,
        accumulate,
        steps_per_epoch,
        optimizer,
        scheduler,
        cache_tag,
        module,
    )


def training_module(built: BuiltModel, cached: bool, compile_steps: bool) -> nn.Module:
    """What the training steps call. One process: the model (compiled, if asked). Several: DDP over the model,
    or over what follows the backbone when the steps read cached features, compiled over the wrapper if
    asked; DDP reduces only what trains, and evaluation and checkpoints keep the unwrapped model."""
    if distributed.world_size() == 1:
        return built.step_model
    wrapped = distributed.data_parallel(HeadOnCachedFeatures(built.model) if cached else built.model, built.device)
    return cast(nn.Module, torch.compile(wrapped)) if compile_steps else wrapped  # compile(Module): a Module


def open_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """The run folder, with the config it runs; what a process killed mid-save left is removed (rank 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.rank() == 0:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        remove_stale_temporaries(run_dir)


def restore_checkpoint(
    cfg: RunConfig, run_dir: Path, built: BuiltModel, loop: TrainingLoop
) -> tuple[EpochPosition, str | None] | None:
    """(position, mlflow run id) after loading the run folder's checkpoint into the model, optimizer, schedule,
    scaler and random streams; None when there is none. A damaged latest checkpoint: the previous one."""
    found = resume_state(run_dir)
    if found is None:
        return None
    state, _ = found
    load_trainable_state_dict(built.model, state["trainable"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    if "grad_scaler" in state:
        built.scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(state["rng_torch"])
    random.setstate(_as_python_rng_state(state["rng_python"]))
    position, run_id = checkpoint_position(state), state["mlflow_run_id"]
    log.info(
        "resuming %s from epoch %d, step %d (mlflow run %s)", cfg.run_name(), position.epoch, position.step, run_id
    )
    return position, run_id


def start_tracking(
    cfg: RunConfig, tracker, built: BuiltModel, data: RunData, loop: TrainingLoop, fresh: bool
) -> tuple[dict[str, str], float]:
    """(the run's tags, GFLOPs of one view), both measured on rank 0 (empty and 0 elsewhere); a fresh run logs
    them with its config and environment."""
    tags, flops = {}, 0.0
    if distributed.rank() == 0:
        tags = run_tags(cfg, built, data, loop)
        flops = count_gflops(built.model, cfg.num_frames, built.backbone.input_size)
        if fresh:
            tracker.log_config(_config_for_tracking(cfg))
            tracker.log_environment()
            tracker.set_tags(tags)
            views = getattr(data.val_set, "num_views", 1)
            tracker.log_metrics(
                {
                    "trainable_params": built.counts.trainable,
                    "total_params": built.counts.total,
                    "gflops_per_view": flops,
                    "gflops": flops * views,
                }
            )
    log.info(
        "%s: %s trainable of %s parameters", cfg.run_name(), f"{built.counts.trainable:,}", f"{built.counts.total:,}"
    )
    return tags, flops


def run_tags(cfg: RunConfig, built: BuiltModel, data: RunData, loop: TrainingLoop) -> dict[str, str]:
    """The mlflow run's tags: what ran, how, and what was measured of the method."""
    with torch.random.fork_rng():  # the check must not shift this run's random stream
        models_time = _measured_models_time(
            cfg.method, built.spec.build, json.dumps(cfg.method_args, sort_keys=True), cfg.backbone
        )
    tags = {
        "peft_bench.method": cfg.method,
        "peft_bench.backbone": cfg.backbone,
        "peft_bench.dataset": cfg.dataset_label(),
        "peft_bench.seed": str(cfg.seed),
        # Measured (frame-shuffle test on a random tiny backbone), not taken from the declaration.
        "peft_bench.models_time": "yes" if models_time else "no",
        "peft_bench.pretrained": built.backbone.info.pretrained,
        "peft_bench.group": built.spec.group,
        "peft_bench.architecture": built.spec.architecture,
        # The batch and lr of one optimizer step are the config's whatever the process count.
        "peft_bench.world_size": str(distributed.world_size()),
        "peft_bench.rank_batch": str(loop.micro * loop.accumulate),
        "peft_bench.train.feature_cache": loop.cache_tag,
        # What decoded the clips (decoder, version, FFmpeg): every decoder gives the same frames.
        **{
            f"peft_bench.{key}": value
            for key, value in decoder_provenance(cfg.data.decoder, cfg.data.decode_device).items()
        },
    }
    if cfg.classes:  # a subset of the dataset's classes (Mini-Kinetics style), as asked for
        tags["peft_bench.classes"] = f"{len(cfg.classes)} of {data.train_set.source_num_classes}"
    return tags


def train_epochs(
    cfg: RunConfig,
    built: BuiltModel,
    loop: TrainingLoop,
    tracker,
    meter: RunMeter,
    position: EpochPosition,
    checkpoint_path: Path,
    progress: bool,
    report: Callable[[int, int], None] | None,
) -> EpochPosition:
    """From ``position`` to the last epoch's end: each epoch's metrics logged, a checkpoint at each epoch's end
    and every ``train.checkpoint_every`` steps, the hand-over on a stop signal. Returns where training ended."""
    rank = distributed.rank()

    def save(at: EpochPosition) -> None:
        # Every rank takes part in the sum; rank 0 alone writes.
        at.loss_sum, at.correct, at.seen = distributed.sum_over_ranks([at.loss_sum, at.correct, at.seen])
        if rank == 0:
            save_checkpoint(
                checkpoint_path, built.model, loop.optimizer, loop.scheduler, at, tracker.run_id, built.scaler
            )
            meter.save()

    after_step = step_hook(cfg, save, checkpoint_path)
    total_steps = cfg.train.epochs * loop.steps_per_epoch
    if report is not None:
        after_step = reporting(after_step, report, loop.steps_per_epoch, total_steps)
        report(position.epoch * loop.steps_per_epoch + position.step, total_steps)
    for epoch in range(position.epoch, cfg.train.epochs):
        if hasattr(loop.train_set, "set_epoch"):
            loop.train_set.set_epoch(epoch)
        # The epoch's shuffle depends on (seed, epoch) alone, so a resumed run sees the same order.
        loop.sampler.set_position(epoch, position.step * loop.accumulate * loop.micro)
        loop.train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # loader workers' seeds
        with meter.timing("train"):
            stats = train_one_epoch(
                loop.train_module,
                loop.train_loader,
                loop.optimizer,
                loop.scheduler,
                built.device,
                cfg,
                loop.accumulate,
                progress,
                desc=f"{cfg.run_name()} epoch {epoch + 1}/{cfg.train.epochs}",
                position=position,
                after_step=after_step,
                scaler=built.scaler,
            )
        meter.count("train", stats["clips"])  # the whole epoch's, a resumed epoch's earlier part included
        metrics = {
            "train_loss": stats["loss"],
            "train_top1": stats["top1"],
            "train_clips": stats["clips"],
            "lr": loop.scheduler.get_last_lr()[0],
        }
        if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and epoch + 1 < cfg.train.epochs:
            metrics.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate(
                        built.step_model, loop.val_loader, built.device, precision=built.precision
                    ).items()
                    if k != "clips"
                }
            )
        tracker.log_metrics(metrics, step=epoch + 1)
        position = EpochPosition(epoch + 1)
        save(position)
        if distributed.any_rank(preemption.requested()):  # signalled during this epoch's evaluation
            preemption.hand_over(resume_hint(position, checkpoint_path))
    if report is not None:
        report(total_steps, total_steps)
    return position


def evaluate_and_record(
    cfg: RunConfig,
    built: BuiltModel,
    data: RunData,
    loop: TrainingLoop,
    tracker,
    meter: RunMeter,
    position: EpochPosition,
    checkpoint_path: Path,
    progress: bool,
    tags: dict[str, str],
    flops: float,
) -> tuple[dict[str, float], float]:
    """(the final multi-view evaluation, the run's wall time over all its segments), logged, and the result record
    written (rank 0)."""
    world = distributed.world_size()
    # A signal now stops the evaluation: the checkpoint of the last epoch's end is what a resume needs.
    final_loader = loop.val_loader if world > 1 else _StopOnSignal(loop.val_loader, position, checkpoint_path)
    with meter.timing("eval"):
        final = evaluate(built.step_model, final_loader, built.device, progress, built.precision)
    meter.count("eval", final["clips"])
    wall = meter.snapshot().wall_s  # every segment's, for a resumed run
    failures = getattr(loop.train_set, "failed_count", 0) + getattr(data.val_set, "failed_count", 0)
    tracker.log_metrics({"val_top1": final["top1"], "val_top5": final["top5"]}, step=cfg.train.epochs)
    tracker.log_metrics(
        {
            "top1": final["top1"],
            "top5": final["top5"],
            "wall_time_s": wall,
            "decode_failures": failures,
            "eval_clips": final["clips"],
            **video_problem_metrics(data.clip_sets),
        }
    )
    if distributed.rank() == 0:
        record_finished_run(
            tracker,
            meter,
            cfg,
            model=built.model,
            tags=tags,
            counts=built.counts,
            gflops_per_view=flops,
            val_set=data.val_set,
            final=final,
            splits=data.splits,
            clip_sets=data.clip_sets,
            input_size=built.backbone.input_size,
            world_size=world,
        )
    return final, wall


def reporting(
    after_step: Callable[[EpochPosition], None],
    report: Callable[[int, int], None],
    steps_per_epoch: int,
    total_steps: int,
) -> Callable[[EpochPosition], None]:
    def after_step_reported(position: EpochPosition) -> None:
        after_step(position)
        report(position.epoch * steps_per_epoch + position.step, total_steps)

    return after_step_reported


@functools.cache
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
    if not cfg.speed.feature_cache:
        return train_set, val_set, "off"
    refusal = feature_cache_refusal(model)
    if refusal is not None:
        log.warning("%s: the feature cache cannot serve it (%s); training on clips", cfg.method, refusal)
        return train_set, val_set, f"off: {refusal}"
    train_set, val_set, report = cached_datasets(
        model,
        train_set,
        val_set,
        cfg.train.epochs,
        cfg.speed,
        device,
        batch_size,
        cfg.train.num_workers,
        precision=cfg.train.precision,
    )
    log.info("feature cache: %d entries read, %d built in %.1f s", report.hits, report.misses, report.seconds)
    return train_set, val_set, report.description


def count_gflops(model: nn.Module, num_frames: int, input_size: int) -> float:
    """GFLOPs of one view (1 multiply-add = 1 FLOP), counted on a CPU copy so the run's model is untouched."""
    counted = count_video_flops(copy.deepcopy(model).cpu().float().eval(), num_frames, input_size)
    if counted.uncounted_ops:
        log.warning("GFLOPs leave out ops with no counter: %s", ", ".join(sorted(counted.uncounted_ops)))
    return counted.total / 1e9


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    device,
    cfg: RunConfig,
    accumulate: int,
    progress: bool,
    desc: str,
    position: EpochPosition | None = None,
    after_step: Callable[[EpochPosition], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
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
        ends_step = (i + 1) % accumulate == 0
        forward, video = model_inputs(model, batch)
        video = video[:, 0].to(device, non_blocking=True)  # training clips carry one view
        labels = batch["label"].to(device, non_blocking=True)
        # Under DDP the gradients are averaged over the processes in the backward pass of a step's last forward
        # pass; those before it accumulate locally.
        with distributed.gradient_sync(model, ends_step):
            with autocast(device, cfg.train.precision):
                logits = forward(video)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.train.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()}: lower train.lr or check the data")
            scaler.scale(loss / accumulate).backward()
        if ends_step:
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
        if ends_step and after_step is not None:
            after_step(EpochPosition(position.epoch, (i + 1) // accumulate, total_loss, correct, seen))
    total_loss, correct, seen = distributed.sum_over_ranks([total_loss, correct, seen])
    return {"loss": total_loss / max(seen, 1), "top1": 100.0 * correct / max(seen, 1), "clips": seen}


def _config_for_tracking(cfg: RunConfig) -> dict:
    return {**tracked_config(cfg), "config_digest": cfg.digest()}


def _as_python_rng_state(state):
    # torch.save turns the tuple into lists on the way through weights_only loading; random wants tuples.
    version, internal, gauss = state
    return int(version), tuple(int(x) for x in internal), gauss
