"""Frozen-feature cache: a frozen backbone's output tokens, computed once and trained from many times.

For a method whose trainable parts all sit after the backbone (``VideoClassifier.backbone_is_frozen``),
every epoch recomputes the same backbone forward on (nearly) the same clips. The cache stores what the
method's head reads from the backbone (``VideoClassifier.reads``): the final tokens (B, V, T, L, D), or,
for a head that also reads intermediate blocks and their attention q/k, those too, packed as
(B, V, T, S, L, D) by ``VideoClassifier.pack_features``. It is stored per (backbone, what the head
reads, dataset, sampling and augmentation, view) and the run trains the method's pooling and head from
it. A method the cache cannot serve (its backbone trains, or its head reads the clip itself) is refused
with the reason (:func:`feature_cache_refusal`) and trains on clips.

* **Key**: a hash of everything that changes the stored numbers: the backbone's weights and structure,
  what the head reads (blocks, q/k, frame stride), the dataset's samples (path, label, file size and mtime), its
  recipe and transform, its seed, the augmentation epoch of the copy, the cache dtype and the precision it is
  computed in (``train.precision`` on the device: by default bf16 autocast on GPU, fp32 on CPU). A changed
  config gives a new key; nothing stale is ever read.
* **Augmentation** is explicit: ``SpeedConfig.augmented_copies`` copies of the training set, copy k
  drawn exactly as uncached epoch k draws its clips; epoch e reads copy e mod k. Evaluation views are
  deterministic and stored once.
* **Format**: ``tokens.npy`` and ``labels.npy`` (NumPy's .npy, memory-mapped, read with
  ``allow_pickle=False``) and ``meta.json``. An entry is written to a temporary folder and renamed
  into place when complete; an unreadable or inconsistent entry is logged and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from peft_bench.data.dataset import VideoClipDataset
from peft_bench.method_api.model import VideoClassifier
from peft_bench.precision import autocast, resolve_precision
from peft_bench.system import usable_cpu_count

log = logging.getLogger(__name__)

# Bump when what is stored, or how it is computed, changes.
CACHE_FORMAT_VERSION = 1
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class CacheEntryError(RuntimeError):
    """A cache entry on disk is missing a file, unreadable, or does not match its own description."""


def default_feature_cache_dir() -> Path:
    """`$PEFT_BENCH_FEATURE_CACHE`, else `$PEFT_BENCH_CACHE/features`, by default ~/.cache/peft_bench/features."""
    if os.environ.get("PEFT_BENCH_FEATURE_CACHE"):  # a cache of its own, e.g. for a from-empty benchmark
        return Path(os.environ["PEFT_BENCH_FEATURE_CACHE"])
    return Path(os.environ.get("PEFT_BENCH_CACHE", Path.home() / ".cache" / "peft_bench")) / "features"


def feature_cache_refusal(model: nn.Module) -> str | None:
    """Why the cache cannot serve ``model`` (None when it can): it must be a VideoClassifier whose backbone
    has no trainable parameter (detected, not listed) and whose head reads nothing but backbone features."""
    if not isinstance(model, VideoClassifier):
        return f"{type(model).__name__} is not a VideoClassifier"
    if not model.backbone_is_frozen():
        return "the backbone trains"
    if model.reads.video:
        return "its head reads the clip itself"
    return None


def supports_feature_cache(model: nn.Module) -> bool:
    return feature_cache_refusal(model) is None


class HeadOnCachedFeatures(nn.Module):
    """What follows the backbone (``VideoClassifier.head_from_tokens``) as a module whose forward reads cached
    features: what DDP wraps for a run trained from the cache, as DDP reduces gradients only for what runs
    through its forward."""

    def __init__(self, model: VideoClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.model.head_from_tokens(packed)


# --- keys --------------------------------------------------------------------------------------------


def backbone_fingerprint(backbone: nn.Module) -> str:
    """Hash of the backbone's structure (its repr names every wrapper a method put in) and every weight."""
    digest = hashlib.sha256(repr(backbone).encode())
    for name, tensor in backbone.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:  # NumPy has no bf16: hash its bits
            data = data.view(torch.int16)
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(memoryview(data.numpy()).cast("B"))
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> dict:
    """What of a clip dataset decides its items: samples and their files, recipe, transform, seed."""
    if isinstance(dataset, Subset):
        inner = dataset_fingerprint(dataset.dataset)
        inner["subset"] = hashlib.sha256(json.dumps([int(i) for i in dataset.indices]).encode()).hexdigest()
        return inner
    if not isinstance(dataset, VideoClipDataset):
        raise TypeError(f"the feature cache serves clips of a VideoClipDataset, not {type(dataset).__name__}")
    files = hashlib.sha256()
    for sample in dataset.samples:
        stat = Path(sample.path).stat()
        files.update(f"{sample.path}\t{sample.label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {
        "samples": files.hexdigest(),
        "count": len(dataset.samples),
        "train": dataset.train,
        "recipe": json.loads(json.dumps(dataclasses.asdict(dataset.recipe))),
        "transform": repr(dataset._transform),
        "seed": dataset.seed,
        "decoder": dataset.decoder,
    }


def entry_key(
    backbone_hash: str,
    dataset_hash: dict,
    epoch: int | None,
    dtype: str,
    device: torch.device,
    reads=None,
    precision: str = "auto",
) -> str:
    """``epoch``: the augmentation epoch of a training copy; None for evaluation views. ``reads``: the
    model's FeatureRequest; the final tokens alone (the default) leave it out of the key, as before."""
    description = {
        "version": CACHE_FORMAT_VERSION,
        "backbone": backbone_hash,
        "dataset": dataset_hash,
        "epoch": epoch,
        "dtype": dtype,
        "compute": resolve_precision(precision, device),
    }
    if reads is not None and not reads.tokens_only:
        description["reads"] = dataclasses.asdict(reads)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


# --- entries on disk ---------------------------------------------------------------------------------


@dataclass
class CacheEntry:
    tokens: np.ndarray  # (N, V, T, L, D) or, packed with intermediates, (N, V, T, S, L, D); memory-mapped
    labels: np.ndarray  # (N,) int64
    failed_count: int  # videos that failed to decode while it was built
    hit: bool  # read from disk (True) or built by this call (False)


def read_entry(folder: Path, key: str) -> CacheEntry:
    """A complete entry, checked against its meta.json; CacheEntryError when anything is off."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.load(folder / "tokens.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError) as err:  # missing file, bad JSON, bad .npy header, truncated data
        raise CacheEntryError(f"{folder}: {err}") from None
    if meta.get("key") != key or meta.get("version") != CACHE_FORMAT_VERSION:
        raise CacheEntryError(f"{folder}: meta.json describes another entry")
    if (
        list(tokens.shape) != meta.get("shape")
        or str(tokens.dtype) != meta.get("dtype")
        or labels.shape != tokens.shape[:1]
    ):
        raise CacheEntryError(f"{folder}: stored arrays do not match meta.json")
    return CacheEntry(tokens, labels.astype(np.int64), int(meta.get("failed_count", 0)), hit=True)


@torch.no_grad()
def write_entry(
    folder: Path,
    key: str,
    model: VideoClassifier,
    dataset: VideoClipDataset | Subset,
    epoch: int | None,
    dtype: str,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    precision: str = "auto",
) -> None:
    """Run ``model``'s backbone over ``dataset`` (augmentation epoch ``epoch``) and store what its head
    reads (``pack_features``) at ``folder``."""
    if epoch is not None:
        set_augmentation_epoch(dataset, epoch)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Extraction is decoding plus a forward pass without autograd, so decoding is its bottleneck: every core decodes.
    workers = max(num_workers, usable_cpu_count())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    tokens, labels, start = None, np.empty(len(dataset), dtype=np.int64), 0
    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()
    try:
        for batch in loader:
            video = batch["video"].to(device, non_blocking=True)  # (B, V, T, C, H, W)
            b, v = video.shape[:2]
            with autocast(device, precision):
                packed = model.pack_features(model.forward_features(video.flatten(0, 1)))
            out = packed.float().view(b, v, *packed.shape[1:]).cpu().numpy()
            if tokens is None:  # the token shape is known after the first batch
                tokens = np.lib.format.open_memmap(
                    tmp / "tokens.npy", mode="w+", dtype=NUMPY_DTYPES[dtype], shape=(len(dataset), *out.shape[1:])
                )
            tokens[start : start + b] = out
            labels[start : start + b] = batch["label"].numpy()
            start += b
    finally:
        backbone.train(was_training)
    if tokens is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("the feature cache was given no clips to extract features from (an empty dataset)")
    tokens.flush()
    np.save(tmp / "labels.npy", labels, allow_pickle=False)
    failed = getattr(dataset, "failed_count", 0)
    meta = {
        "key": key,
        "version": CACHE_FORMAT_VERSION,
        "shape": list(tokens.shape),
        "dtype": str(tokens.dtype),
        "epoch": epoch,
        "failed_count": failed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    del tokens
    try:
        os.replace(tmp, folder)  # atomic: a killed extraction leaves only a .tmp folder
    except OSError:  # another process finished the same entry first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)


def set_augmentation_epoch(dataset: Dataset, epoch: int) -> None:
    """Make ``dataset`` (or the dataset a Subset views) draw epoch ``epoch``'s augmentation."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def get_or_build(
    cache_dir: Path,
    model: VideoClassifier,
    dataset: VideoClipDataset | Subset,
    epoch: int | None,
    dtype: str,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    backbone_hash: str | None = None,
    precision: str = "auto",
) -> CacheEntry:
    """The entry for (``model``'s backbone and what its head reads, dataset, epoch, dtype, device, precision):
    read when present, else built; an entry that cannot be read is logged and rebuilt."""
    reason = feature_cache_refusal(model)
    if reason is not None:
        raise ValueError(f"the feature cache cannot serve this model: {reason}")
    backbone_hash = backbone_hash or backbone_fingerprint(model.backbone)
    key = entry_key(backbone_hash, dataset_fingerprint(dataset), epoch, dtype, device, model.reads, precision)
    folder = Path(cache_dir) / key
    if folder.exists():
        try:
            return read_entry(folder, key)
        except CacheEntryError as err:
            log.warning("feature cache entry unusable, rebuilding it: %s", err)
            shutil.rmtree(folder, ignore_errors=True)
    started = time.time()
    write_entry(folder, key, model, dataset, epoch, dtype, device, batch_size, num_workers, precision)
    entry = read_entry(folder, key)
    entry.hit = False
    log.info(
        "feature cache: stored %s %s in %.1f s (%s)",
        "x".join(map(str, entry.tokens.shape)),
        dtype,
        time.time() - started,
        folder,
    )
    return entry


# --- datasets the runner trains and evaluates from ---------------------------------------------------


class CachedFeatures(Dataset):
    """Items dict(tokens=float32 (V, T, L, D) or packed (V, T, S, L, D), label) read from cache entries; with
    several entries (augmented copies), ``set_epoch(e)`` selects copy e mod copies."""

    loader_workers = 0  # reading a memory map needs no worker processes

    def __init__(self, entries: list[CacheEntry]):
        if not entries:
            raise ValueError("CachedFeatures needs at least one cache entry")
        self.entries = entries
        self.copy = 0
        self.failed_count = sum(e.failed_count for e in entries)

    def __len__(self) -> int:
        return len(self.entries[0].labels)

    def set_epoch(self, epoch: int) -> None:
        self.copy = epoch % len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[self.copy]
        tokens = torch.from_numpy(np.array(entry.tokens[index], dtype=np.float32))  # a copy: the map is read-only
        return {"tokens": tokens, "label": int(entry.labels[index])}


@dataclass
class FeatureCacheReport:
    copies: int
    hits: int
    misses: int
    seconds: float

    @property
    def description(self) -> str:
        """What the run trained on, for its mlflow tag."""
        return f"on: {self.copies} augmented cop{'y' if self.copies == 1 else 'ies'} of the training set"


def cached_datasets(
    model: VideoClassifier,
    train_set: VideoClipDataset | Subset,
    val_set: VideoClipDataset | Subset,
    epochs: int,
    speed,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    cache_dir: Path | None = None,
    precision: str = "auto",
) -> tuple[CachedFeatures, CachedFeatures, FeatureCacheReport]:
    """Training copies and evaluation views of what ``model``'s head reads, from the cache or built now."""
    started = time.time()
    cache_dir = Path(cache_dir) if cache_dir else default_feature_cache_dir()
    backbone_hash = backbone_fingerprint(model.backbone)
    copies = min(speed.augmented_copies, epochs)  # more copies than epochs would never be read

    def entry(dataset, epoch):
        return get_or_build(
            cache_dir,
            model,
            dataset,
            epoch,
            speed.cache_dtype,
            device,
            batch_size,
            num_workers,
            backbone_hash,
            precision,
        )

    train_entries = [entry(train_set, epoch) for epoch in range(copies)]
    val_entry = entry(val_set, None)
    hits = sum(e.hit for e in [*train_entries, val_entry])
    report = FeatureCacheReport(copies, hits, len(train_entries) + 1 - hits, time.time() - started)
    return CachedFeatures(train_entries), CachedFeatures([val_entry]), report
