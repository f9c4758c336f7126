"""Tracking that loses nothing when the tracking server is away: every record is written locally first.

:class:`JournaledTracker` has :class:`~peft_bench.tracking.RunTracker`'s interface. Each call becomes an
entry appended to ``tracking.jsonl`` in the run folder (params, tags, metrics, the config artifact, the
final status), and is then sent to mlflow. When mlflow cannot be reached the run goes on; the entries
stay in the journal and are sent later, in order, by the run itself once the server answers again, or
by ``peft-bench sweep sync`` / ``sweep status`` after the run. ``tracking-sync.json`` beside it holds
the mlflow run id and how many entries mlflow has, so nothing is sent twice.

The entries use mlflow's own timestamps and steps, so a synced run is the run mlflow would have had.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

JOURNAL = "tracking.jsonl"
SYNC_STATE = "tracking-sync.json"
RETRY_AFTER_S = 30.0  # while mlflow is unreachable, try again at most this often (mlflow retries inside too)
TERMINAL = ("FINISHED", "FAILED", "KILLED")


class Journal:
    """The append-only list of tracking entries of one run, and how far mlflow has them."""

    def __init__(self, path: Path):
        self.path = path
        self.sync_path = path.with_name(path.stem.replace("tracking", "tracking-sync") + ".json")

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: everything before it stands
                break
        return entries

    def append(self, entry: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def sync_state(self) -> dict:
        if self.sync_path.is_file():
            return json.loads(self.sync_path.read_text())
        return {"run_id": None, "synced": 0}

    def save_sync_state(self, state: dict) -> None:
        tmp = self.sync_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.sync_path)

    def header(self) -> dict:
        entries = self.entries()
        if not entries or entries[0].get("op") != "start":
            raise ValueError(f"{self.path}: not a tracking journal (no start entry)")
        return entries[0]

    def status(self) -> str | None:
        statuses = [e["status"] for e in self.entries() if e.get("op") == "status"]
        return statuses[-1] if statuses else None

    def unsynced(self) -> int:
        return len(self.entries()) - self.sync_state()["synced"]


# --- sending entries to mlflow ----------------------------------------------------------------------

def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from .tracking import quiet_mlflow_logging

    quiet_mlflow_logging()
    return MlflowClient(uri)


def _experiment_id(client, uri: str, name: str) -> str:
    from .tracking import get_or_create_experiment

    try:
        return get_or_create_experiment(client, uri, name)
    except Exception:
        found = client.get_experiment_by_name(name)  # another job created it a moment before us
        if found is None:
            raise
        return found.experiment_id


def _send(client, run_id: str, entry: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    from .tracking import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, chunks

    op = entry["op"]
    if op == "params":
        for batch in chunks([Param(k, v) for k, v in entry["params"].items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=batch)
    elif op == "tags":
        for batch in chunks([RunTag(k, v) for k, v in entry["tags"].items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=batch)
    elif op == "metrics":
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in entry["metrics"]]
        for batch in chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch)
    elif op == "dict":
        client.log_dict(run_id, entry["data"], entry["name"])
    elif op == "status":
        if entry["status"] in TERMINAL:
            client.set_terminated(run_id, entry["status"], end_time=entry.get("time"))
        else:
            client.update_run(run_id, status=entry["status"])
    elif op != "start":
        raise ValueError(f"unknown journal entry {op!r}")


def flush(journal: Journal) -> str:
    """Send what mlflow does not have yet, in order; returns the mlflow run id. Raises if unreachable.

    Under a lock on the run folder: the run's own last flush and a `sweep sync` may meet.
    """
    import fcntl

    with journal.path.with_name(".tracking.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _flush_locked(journal)


def _flush_locked(journal: Journal) -> str:
    entries, state = journal.entries(), journal.sync_state()
    header = journal.header()
    client = _client(header["tracking_uri"])
    if state["run_id"] is None:
        experiment_id = _experiment_id(client, header["tracking_uri"], header["experiment"])
        run = client.create_run(experiment_id, run_name=header["run_name"], start_time=header.get("time"))
        state = {"run_id": run.info.run_id, "synced": state["synced"]}
        journal.save_sync_state(state)
    for i in range(state["synced"], len(entries)):
        _send(client, state["run_id"], entries[i])
        state["synced"] = i + 1
        journal.save_sync_state(state)
    return state["run_id"]


def journals_in(run_dir: Path) -> list[Journal]:
    """The run folder's journal and the ones kept from earlier runs in the same folder (``--rerun``)."""
    return [Journal(p) for p in sorted(Path(run_dir).glob("tracking*.jsonl"))]


def sync_run_dir(run_dir: Path) -> bool:
    """Send the ended runs' unsynced entries; True if anything was sent. A run still going sends its own."""
    sent = False
    for journal in journals_in(run_dir):
        if journal.unsynced() and journal.status() in TERMINAL:
            flush(journal)
            sent = True
    return sent


def read_record(run_dir: Path) -> dict | None:
    """{"status", "run_id", "unsynced"} of the run folder's current journal, or None without one."""
    journal = Journal(Path(run_dir) / JOURNAL)
    if not journal.path.is_file():
        return None
    return {"status": journal.status(), "run_id": journal.sync_state()["run_id"], "unsynced": journal.unsynced()}


# --- the tracker -------------------------------------------------------------------------------------

class JournaledTracker:
    """RunTracker's interface; the journal first, mlflow when it answers.

    ``resume_run_id`` (from a checkpoint) continues the run folder's journal, hence the same mlflow run,
    even one that was never reached; without it a new journal starts, and an older one is kept beside it.
    """

    def __init__(self, run_dir: Path, tracking_uri: str, experiment: str, run_name: str,
                 resume_run_id: str | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.resume = resume or resume_run_id is not None
        self.journal = Journal(self.run_dir / JOURNAL)
        self._last_failure: float | None = None

    # -- context manager --------------------------------------------------------------------------

    def __enter__(self) -> JournaledTracker:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.journal.path.is_file() and not self.resume:
            self._keep_earlier_journal()
        if not self.journal.path.is_file():
            self._record({"op": "start", "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                          "run_name": self.run_name, "time": _now_ms()})
        else:
            self._record({"op": "status", "status": "RUNNING"})
        self._try_flush()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if exc_type is None:
            status = "FINISHED"
        else:
            # Ctrl-C, or a preempted job exiting to be requeued: stopped, not broken.
            status = "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
            from .tracking import MAX_ERROR_TAG_CHARS, tag_key

            text = f"{exc_type.__name__}: {exc}" if exc is not None else exc_type.__name__
            self._record({"op": "tags", "tags": {tag_key("error"): text[:MAX_ERROR_TAG_CHARS]}})
        self._record({"op": "status", "status": status, "time": _now_ms()})
        self._last_failure = None  # one more try at the end, whatever happened before
        if not self._try_flush() and exc_type is None:
            log.warning("%s: tracking at %s unreachable; the results are kept in %s and sent by "
                        "`peft-bench sweep sync`", self.run_name, self.tracking_uri, self.journal.path)
        return False

    def _keep_earlier_journal(self) -> None:
        try:
            sync_run_dir(self.run_dir)
        except Exception as err:
            log.warning("an earlier run in %s is not synced yet (%s); its journal is kept", self.run_dir, err)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for old in (self.journal.path, self.journal.sync_path):
            if old.is_file():
                os.replace(old, old.with_name(f"{old.stem}-{stamp}{old.suffix}"))

    # -- recording --------------------------------------------------------------------------------

    def _record(self, entry: dict) -> None:
        self.journal.append(entry)
        self._try_flush()

    def _try_flush(self) -> bool:
        if self._last_failure is not None and time.time() - self._last_failure < RETRY_AFTER_S:
            return False
        if self.journal.unsynced() == 0 and self.journal.sync_state()["run_id"] is not None:
            return True
        try:
            flush(self.journal)
        except Exception as err:
            if self._last_failure is None:
                log.warning("%s: tracking unreachable (%s); recording locally in %s", self.run_name,
                            type(err).__name__, self.journal.path)
            self._last_failure = time.time()
            return False
        self._last_failure = None
        return True

    @property
    def run_id(self) -> str | None:
        """The mlflow run id, or None while mlflow has not been reached (the journal then stands for it)."""
        return self.journal.sync_state()["run_id"]

    def log_config(self, config: Mapping[str, Any]) -> None:
        from .tracking import canonical_json, config_hash, flatten_config

        self._record({"op": "params", "params": flatten_config(config)})
        self._record({"op": "dict", "name": "config.json", "data": json.loads(canonical_json(config))})
        self.set_tags({"config_hash": config_hash(config)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from .tracking import tag_key

        self._record({"op": "tags", "tags": {tag_key(k): str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = _now_ms()
        self._record({"op": "metrics", "metrics": [[k, float(v), ts, step or 0] for k, v in metrics.items()]})

    def log_environment(self, device: Any = None) -> None:
        from .tracking import describe_device, describe_host, git_state, package_versions

        commit, dirty = git_state()
        self.set_tags({"git_commit": commit, "git_dirty": dirty, "device": describe_device(device),
                       "host": describe_host()})
        self._record({"op": "params", "params": package_versions()})

    def log_dict(self, name: str, data: Mapping[str, Any]) -> None:
        """A JSON artifact of the run (the result record), through the journal like everything else."""
        self._record({"op": "dict", "name": name, "data": data})


def _now_ms() -> int:
    return int(time.time() * 1000)
