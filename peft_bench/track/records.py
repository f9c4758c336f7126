"""A result record per finished run: one JSON file that says what ran, what it scored and what it cost.

The record (``result.json`` in the run folder, and the same file as an mlflow artifact) is what a run
leaves for others to compare with: the config and its digest; method, backbone, dataset and seed; top-1 /
top-5 with the view protocol they were measured under; parameters, GFLOPs and the FLOP convention;
training and evaluation time, device-hours, clips/s and peak memory; the size of the trainable state;
how many videos each split listed, used and skipped and a hash of the samples used; the decoder; the
commit, library versions and hardware. Its schema is ``result_schema.json`` beside this file, documented
in ``docs/result-schema.md``; ``peft-bench table --records DIR`` reads a folder of records the way it
reads mlflow.

While a run goes, :class:`RunMeter` keeps the time, clips and peak memory; it is saved with every
checkpoint (``meter.json``), so a run that is killed and resumed reports the work it kept across its
segments, as an unbroken run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypedDict

import jsonschema

from peft_bench.config import canonical_json, tracked_config
from peft_bench.track.states import RunStatus
from peft_bench.track.tracking import (
    TAG_PREFIX,
    config_hash,
    describe_device,
    describe_host,
    flatten_config,
    git_state,
    package_versions,
)

log = logging.getLogger(__name__)

SCHEMA_ID = "peft-bench/result"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("result_schema.json")
RECORD_NAME = "result.json"  # in the run folder, and the mlflow artifact's name
METER_NAME = "meter.json"
FLOP_CONVENTION = "1 multiply-add = 1 FLOP"
# Metrics a record adds to its mlflow run, so that a table from mlflow and one from records agree.

# --- the record's shape: result_schema.json's, as types for the code that builds it -------------------------
# (Records read back from files or mlflow are plain dicts, checked against the schema, not these types.)


class RunInfo(TypedDict):
    name: str
    experiment: str
    mlflow_run_id: str | None  # None when tracking was never reached
    config_hash: str  # 12 hex digits
    started_at: str  # ISO 8601 with its time zone
    finished_at: str
    segments: int  # processes that worked on the run: 1 for an unbroken run
    status: Literal[RunStatus.FINISHED]


class Description(TypedDict):
    group: str
    architecture: str
    models_time: str  # "yes", "no" or ""
    pretrained: str
    feature_cache: str


class ViewProtocol(TypedDict):
    """The test views top-1 and top-5 were measured under."""

    frames: int
    crops: int
    clips: int
    views: int  # crops x clips


class Result(TypedDict):
    protocol: ViewProtocol
    top1: float  # percent
    top5: float
    videos: int


class Params(TypedDict):
    trainable: int
    total: int
    trainable_state_bytes: int


class Flops(TypedDict):
    gflops: float  # all views
    gflops_per_view: float
    views: int
    frames: int
    input_size: int
    convention: str  # FLOP_CONVENTION
    counter: str


class PeakMemory(TypedDict):
    device: str
    allocated_bytes: int | None
    reserved_bytes: int | None
    resident_bytes: int | None
    resident_scope: str  # "run" or "process"


class Cost(TypedDict):
    wall_time_s: float
    train_time_s: float
    eval_time_s: float
    devices: int
    device_hours: float
    train_clips: int
    eval_clips: int
    train_clips_per_s: float | None  # None when the phase took no measurable time
    eval_clips_per_s: float | None
    peak_memory: PeakMemory


class SplitSummary(TypedDict):
    listed: int
    missing: int
    left_out: int
    used: int
    decode_failures: int
    sample_list_sha256: str


class DecoderInfo(TypedDict):
    requested: str  # "auto", "pyav", "torchcodec" or "decord"
    used: str
    version: str
    device: str  # "cpu" or "cuda"
    libraries: dict[str, str]


class DataInfo(TypedDict):
    train: SplitSummary
    val: SplitSummary
    decoder: DecoderInfo


class Environment(TypedDict):
    git_commit: str
    git_dirty: str  # "yes", "no" or "unknown"
    versions: dict[str, str]
    device: str
    host: str
    torch_cuda: str | None


class ResultRecord(TypedDict):
    """One finished run's record, as ``build_record`` makes it (``result_schema.json``, docs/result-schema.md)."""

    schema: str  # SCHEMA_ID
    schema_version: int  # SCHEMA_VERSION
    run: RunInfo
    config: dict[str, Any]
    config_digest: str
    method: str
    backbone: str
    dataset: str
    seed: int
    description: Description
    results: list[Result]
    params: Params
    flops: Flops
    cost: Cost
    data: DataInfo
    environment: Environment


COST_METRICS = (
    "train_time_s",
    "eval_time_s",
    "device_hours",
    "train_clips_per_s",
    "eval_clips_per_s",
    "peak_memory_bytes",
    "trainable_state_bytes",
)


# --- measuring a run ---------------------------------------------------------------------------------


@dataclass
class MeterState:
    """What the meter has counted over the run's segments so far (seconds, clips, bytes)."""

    started_at: float = 0.0  # unix time the first segment started
    segments: int = 0  # processes that worked on the run: 1 for an unbroken run
    wall_s: float = 0.0  # earlier segments, each up to its last save
    train_s: float = 0.0
    train_clips: int = 0
    eval_s: float = 0.0
    eval_clips: int = 0
    peak: dict[str, int] = field(default_factory=dict)  # allocated / reserved (GPU), resident (CPU), bytes


class RunMeter:
    """Time, clips and peak memory of a run, cheaply: clocks around the phases, the allocator's and the
    kernel's high-water marks (``torch.cuda.max_memory_*``, the process's peak resident set).

    >>> meter = RunMeter.open(run_dir, device, resuming=False, since=time.time())
    >>> with meter.timing("train"):
    ...     stats = train_one_epoch(...)
    >>> meter.count("train", stats["clips"])

    ``save()`` writes the state with the running phase and segment folded in; a resumed run opens the
    saved state and goes on from it. Time spent after a segment's last save is not counted: that work
    was lost and is done again by the next segment, where it is counted.
    """

    def __init__(self, path: Path, device: Any, state: MeterState, since: float):
        self.path, self.device, self.state = Path(path), device, state
        self.device_type = str(getattr(device, "type", device)).split(":")[0]  # "cuda", "cpu", ...
        self._segment_start = since
        self._open: dict[str, float] = {}
        self.resident_scope = "run" if reset_peak_memory(self.device) else "process"

    @classmethod
    def open(cls, run_dir: Path, device: Any, resuming: bool, since: float | None = None) -> RunMeter:
        """A fresh meter, or (``resuming``) the run folder's saved one, one segment further."""
        since = time.time() if since is None else since
        path = Path(run_dir) / METER_NAME
        state = MeterState(started_at=since)
        if resuming and path.is_file():
            try:
                state = MeterState(**json.loads(path.read_text()))
            except (ValueError, TypeError) as err:  # a damaged meter costs the cost figures, not the run
                log.warning("%s is unreadable (%s): the record counts this segment only", path, err)
        state.segments += 1
        return cls(path, device, state, since)

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        """Adds the block's wall time to ``phase`` ("train" or "eval"), also when a save happens inside it."""
        self._open[phase] = time.perf_counter()
        try:
            yield
        finally:
            started = self._open.pop(phase)
            self._add_seconds(self.state, phase, time.perf_counter() - started)

    def count(self, phase: str, clips: float) -> None:
        setattr(self.state, f"{phase}_clips", getattr(self.state, f"{phase}_clips") + int(clips))

    def snapshot(self) -> MeterState:
        """The state as of now: running phases and this segment's wall time folded in, peaks updated."""
        now = time.perf_counter()
        state = MeterState(**asdict(self.state))
        for phase, started in self._open.items():
            self._add_seconds(state, phase, now - started)
        state.wall_s += time.time() - self._segment_start
        state.peak = {key: max(value, self.state.peak.get(key, 0)) for key, value in self._peaks().items()}
        return state

    def save(self) -> None:
        write_json_atomically(self.path, asdict(self.snapshot()))

    def _peaks(self) -> dict[str, int]:
        peaks = {"resident": peak_resident_bytes()}
        if self.device_type == "cuda":
            import torch  # torch only where a run is measured: the tables read records without it

            peaks["allocated"] = int(torch.cuda.max_memory_allocated(self.device))
            peaks["reserved"] = int(torch.cuda.max_memory_reserved(self.device))
        return peaks

    @staticmethod
    def _add_seconds(state: MeterState, phase: str, seconds: float) -> None:
        setattr(state, f"{phase}_s", getattr(state, f"{phase}_s") + seconds)


def reset_peak_memory(device: Any) -> bool:
    """Start the high-water marks afresh for this run; True if the resident set's could be reset.

    A process may run several configs in a row (``peft-bench run`` runs every method), so the process
    lifetime's peak would be the largest run's. Linux resets the peak resident set through
    ``/proc/self/clear_refs``; elsewhere the record says the figure covers the whole process.
    """
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch  # torch only where a run is measured: the tables read records without it

        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    """The process's peak resident set: VmHWM on Linux (resettable), getrusage elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


# --- the data a run used -----------------------------------------------------------------------------


def split_summary(dataset, used: int | None = None) -> SplitSummary:
    """Counts and the sample-list hash of one split; ``used``: the first N samples only (val_subset)."""
    samples = list(dataset.samples)
    chosen = samples if used is None else samples[:used]
    missing = int(getattr(dataset, "missing_count", 0))
    return {
        "listed": len(samples) + missing,
        "missing": missing,  # listed in the annotations, not found on disk: skipped before training
        "left_out": len(samples) - len(chosen),  # present, but beyond train.val_subset
        "used": len(chosen),
        "decode_failures": 0,  # filled in at the end of the run
        "sample_list_sha256": sample_list_hash(chosen, dataset.class_names),
    }


def sample_list_hash(samples: Sequence, class_names: Sequence[str]) -> str:
    """sha256 of the sorted "relative/path<TAB>class name" lines of ``samples``.

    Paths are relative to the folder all of them share, so two copies of a dataset in different places
    hash the same, and a copy that lost or gained a video does not.
    """
    paths = [Path(sample.path) for sample in samples]
    root = Path(os.path.commonpath([str(path.parent) for path in paths])) if paths else Path()
    lines = sorted(
        f"{path.relative_to(root).as_posix()}\t{class_names[sample.label]}"
        for path, sample in zip(paths, samples, strict=True)
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def decoder_description(requested: str, device: str = "cpu", tags: dict[str, str] | None = None) -> DecoderInfo:
    """The decoder the run asked for, the one that decodes (``auto``'s choice), the device, and the versions
    of the libraries behind it. The run's tags already hold what decoded (the runner's ``decoder_provenance``):
    taken from there, so the record says what mlflow says."""
    keys = ("decoder", "decoder_version", "ffmpeg")
    if tags and all(key in tags for key in keys):
        provenance = {key: tags[key] for key in keys}
    else:
        from peft_bench.data.decode import decoder_provenance  # it loads torch: the tables read records without

        provenance = decoder_provenance(requested, device)
    libraries = {
        "av": _version("av"),
        "torchcodec": _version("torchcodec"),
        "decord": _version("decord"),
        "ffmpeg": provenance["ffmpeg"],
    }
    return {
        "requested": requested,
        "used": provenance["decoder"],
        "version": provenance["decoder_version"],
        "device": device,
        "libraries": libraries,
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


# --- the record --------------------------------------------------------------------------------------


def build_record(
    *,
    config: dict,
    config_digest: str,
    run_name: str,
    mlflow_run_id: str | None,
    tags: dict[str, str],
    protocol: ViewProtocol,
    final: dict[str, float],
    trainable_params: int,
    total_params: int,
    trainable_state_bytes: int,
    gflops_per_view: float,
    input_size: int,
    meter: MeterState,
    world_size: int,
    splits: dict[str, SplitSummary],
    decoder: str,
    device_type: str,
    resident_scope: str,
    decode_device: str = "cpu",
) -> ResultRecord:
    """The record of a finished run (see docs/result-schema.md) from its figures; the environment is read here."""
    logged_config = {**config, "config_digest": config_digest}  # what log_config sends to mlflow
    commit, dirty = git_state()
    views = protocol["views"]
    train_rate = meter.train_clips / meter.train_s if meter.train_s > 0 else None
    eval_rate = meter.eval_clips / meter.eval_s if meter.eval_s > 0 else None
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": run_name,
            "experiment": config["experiment"],
            "mlflow_run_id": mlflow_run_id,
            "config_hash": config_hash(logged_config),
            "started_at": iso_time(meter.started_at),
            "finished_at": iso_time(time.time()),
            "segments": meter.segments,
            "status": RunStatus.FINISHED,
        },
        "config": json.loads(canonical_json(config)),
        "config_digest": config_digest,
        "method": config["method"],
        "backbone": config["backbone"],
        "dataset": config["dataset"],
        "seed": int(config["seed"]),
        "description": {
            "group": tags.get("group", ""),
            "architecture": tags.get("architecture", ""),
            "models_time": tags.get("models_time", ""),
            "pretrained": tags.get("pretrained", ""),
            "feature_cache": tags.get("feature_cache", "off"),
        },
        "results": [
            {
                "protocol": protocol,
                "top1": float(final["top1"]),
                "top5": float(final["top5"]),
                "videos": int(final["clips"]),
            }
        ],
        "params": {
            "trainable": int(trainable_params),
            "total": int(total_params),
            "trainable_state_bytes": int(trainable_state_bytes),
        },
        "flops": {
            "gflops": gflops_per_view * views,
            "gflops_per_view": gflops_per_view,
            "views": views,
            "frames": protocol["frames"],
            "input_size": input_size,
            "convention": FLOP_CONVENTION,
            "counter": f"fvcore {_version('fvcore')} with peft-bench's attention and grouped-convolution handlers",
        },
        "cost": {
            "wall_time_s": meter.wall_s,
            "train_time_s": meter.train_s,
            "eval_time_s": meter.eval_s,
            "devices": world_size,
            "device_hours": meter.wall_s * world_size / 3600,
            "train_clips": meter.train_clips,
            "eval_clips": meter.eval_clips,
            "train_clips_per_s": train_rate,
            "eval_clips_per_s": eval_rate,
            "peak_memory": {
                "device": device_type,
                "allocated_bytes": meter.peak.get("allocated"),
                "reserved_bytes": meter.peak.get("reserved"),
                "resident_bytes": meter.peak.get("resident"),
                "resident_scope": resident_scope,
            },
        },
        "data": {
            "train": splits["train"],
            "val": splits["val"],
            "decoder": decoder_description(decoder, decode_device, tags),
        },
        "environment": {
            "git_commit": commit,
            "git_dirty": dirty,
            "versions": {key.removeprefix("version."): value for key, value in package_versions().items()},
            "device": describe_device(),  # as the run's log_environment describes it
            "host": describe_host(),
            "torch_cuda": _torch_cuda(),
        },
    }


def record_finished_run(
    tracker,
    meter: RunMeter,
    cfg,
    *,
    model,
    tags: dict[str, str],
    counts,
    gflops_per_view: float,
    val_set,
    final: dict,
    splits: dict[str, SplitSummary],
    clip_sets: dict,
    input_size: int,
    world_size: int,
) -> ResultRecord | None:
    """The end of a run: its record written beside it, logged to mlflow as an artifact with its cost metrics.

    A failure here is logged, never raised: the run's results are already tracked, and an error now would
    mark a finished run as failed.
    """
    try:
        return _record_finished_run(
            tracker,
            meter,
            cfg,
            model=model,
            tags=tags,
            counts=counts,
            gflops_per_view=gflops_per_view,
            val_set=val_set,
            final=final,
            splits=splits,
            clip_sets=clip_sets,
            input_size=input_size,
            world_size=world_size,
        )
    except Exception:  # the docstring says why
        log.exception("%s: the result record could not be written; the run's tracked results stand", cfg.run_name())
        return None


def _record_finished_run(
    tracker,
    meter: RunMeter,
    cfg,
    *,
    model,
    tags: dict[str, str],
    counts,
    gflops_per_view: float,
    val_set,
    final: dict,
    splits: dict[str, SplitSummary],
    clip_sets: dict,
    input_size: int,
    world_size: int,
) -> ResultRecord:
    for split, dataset in clip_sets.items():
        splits[split]["decode_failures"] = int(getattr(dataset, "failed_count", 0))
    recipe = getattr(val_set, "recipe", None)
    protocol: ViewProtocol = {
        "frames": cfg.num_frames,
        "crops": int(getattr(recipe, "test_crops", 1)),
        "clips": int(getattr(recipe, "test_clips", 1)),
        "views": int(getattr(val_set, "num_views", 1)),
    }
    from peft_bench.method_api.model import trainable_state_dict  # torch: see decoder_description

    state_bytes = sum(t.numel() * t.element_size() for t in trainable_state_dict(model).values())
    record = build_record(
        config=tracked_config(cfg),
        config_digest=cfg.digest(),
        run_name=cfg.run_name(),
        mlflow_run_id=tracker.run_id,
        tags={key.removeprefix(TAG_PREFIX): value for key, value in tags.items()},
        protocol=protocol,
        final=final,
        trainable_params=counts.trainable,
        total_params=counts.total,
        trainable_state_bytes=state_bytes,
        gflops_per_view=gflops_per_view,
        input_size=input_size,
        meter=meter.snapshot(),
        world_size=world_size,
        splits=splits,
        decoder=cfg.data.decoder,
        decode_device=cfg.data.decode_device,
        device_type=meter.device_type,
        resident_scope=meter.resident_scope,
    )
    write_record(cfg.run_dir(), record)
    tracker.log_metrics(cost_metrics(record))
    tracker.log_dict(RECORD_NAME, record)
    return record


def _torch_cuda() -> str | None:
    import torch  # torch only where a run is measured: the tables read records without it

    return torch.version.cuda


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


def cost_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's cost figures as mlflow metrics (``COST_METRICS``; absent ones left out)."""
    cost = record["cost"]
    values = {
        "train_time_s": cost["train_time_s"],
        "eval_time_s": cost["eval_time_s"],
        "device_hours": cost["device_hours"],
        "train_clips_per_s": cost["train_clips_per_s"],
        "eval_clips_per_s": cost["eval_clips_per_s"],
        "peak_memory_bytes": peak_memory_bytes(record),
        "trainable_state_bytes": record["params"]["trainable_state_bytes"],
    }
    return {key: float(value) for key, value in values.items() if value is not None}


def peak_memory_bytes(record: Mapping[str, Any]) -> int | None:
    """The memory the run needed on its device: GPU allocated at peak, or the CPU's peak resident set."""
    peak = record["cost"]["peak_memory"]
    return peak["allocated_bytes"] if peak["device"] == "cuda" else peak["resident_bytes"]


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validation_errors(record: Any) -> list[str]:
    """What is wrong with ``record`` against the schema ("path: message"); empty when it is valid."""
    validator = jsonschema.Draft202012Validator(schema())
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    ]


def write_record(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """``<run_dir>/result.json``, atomically. A record that breaks the schema is still written (the run's
    results must not be lost to a bug here), with an error in the log."""
    errors = validation_errors(record)
    if errors:
        log.error("the result record of %s breaks its schema: %s", record["run"]["name"], "; ".join(errors[:5]))
    path = Path(run_dir) / RECORD_NAME
    write_json_atomically(path, record)
    return path


def write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- reading records back ----------------------------------------------------------------------------


@dataclass
class FoundRecords:
    records: list[tuple[Path, dict]]  # (file, record), valid ones only
    skipped: list[str]  # "file: why", for records that could not be used


def read_records(folder: Path) -> FoundRecords:
    """Every result record under ``folder`` (recursively). JSON files that are not records are ignored;
    records that are unreadable, of a newer schema or invalid are skipped and named in ``skipped``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} to read result records from")
    found, skipped = [], []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            if path.name == RECORD_NAME:
                skipped.append(f"{path}: not readable JSON ({err})")
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
            continue  # config.json, tracking-sync.json, ...: not records
        if not isinstance(data.get("schema_version"), int) or data["schema_version"] > SCHEMA_VERSION:
            skipped.append(
                f"{path}: schema version {data.get('schema_version')!r}; this peft-bench reads up to "
                f"{SCHEMA_VERSION} (upgrade it)"
            )
            continue
        errors = validation_errors(data)
        if errors:
            skipped.append(f"{path}: not a valid record ({'; '.join(errors[:3])})")
            continue
        found.append((path, data))
    for reason in skipped:
        log.warning("skipping %s", reason)
    return FoundRecords(found, skipped)


def tracking_params(record: dict) -> dict[str, str]:
    """The params mlflow holds for the record's run: the flattened config and ``version.*``."""
    params = flatten_config({**record["config"], "config_digest": record["config_digest"]})
    params.update({f"version.{key}": value for key, value in record["environment"]["versions"].items()})
    return params
