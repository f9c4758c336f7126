"""Tracking that loses nothing when the tracking server is away: every record is written locally first.

:class:`JournaledTracker` has :class:`~peft_bench.track.tracking.RunTracker`'s interface. Each call becomes an
entry appended to ``tracking.jsonl`` in the run folder (params, tags, metrics, the config artifact, the
final status). A background thread sends the entries to mlflow, so training never waits on a network
call or a database: a server that refuses or does not answer within a few seconds counts as unreachable
(mlflow's own client would retry it for minutes), and a SQLite store is created safely first
(``tracking.prepare_store``). While mlflow cannot be reached the entries stay in the journal and are
sent later, in order, by the run itself once the server answers again (every 30 s), or by
``peft-bench sync RUN_DIR...`` / ``sweep sync`` / ``sweep status`` after the run. ``tracking-sync.json``
beside it holds the mlflow run id and how many entries mlflow has, so nothing is sent twice.

The entries use mlflow's own timestamps and steps, so a synced run is the run mlflow would have had.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

JOURNAL = "tracking.jsonl"
SYNC_STATE = "tracking-sync.json"
RETRY_AFTER_S = 30.0  # while mlflow is unreachable, try again at most this often
FINAL_SEND_S = 30.0  # at the end of a run, how long the last records may take to arrive before the journal keeps them
UNREACHABLE_WAIT_S = 1.0  # ... and how long when tracking has not been answering: the last try goes on meanwhile
TERMINAL = ("FINISHED", "FAILED", "KILLED")
ERROR_TAG = "peft_bench.error"


class TrackingUnreachable(ConnectionError):
    """The tracking server did not answer, or the store cannot be opened or created."""


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

    def repair(self) -> None:
        """Drop a last line cut short by a kill, so that what is appended after it can be read."""
        if not self.path.is_file():
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

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

    from peft_bench.track.tracking import quiet_mlflow_logging

    quiet_mlflow_logging()
    return MlflowClient(uri)


def _experiment_id(client, uri: str, name: str) -> str:
    from peft_bench.track.tracking import get_or_create_experiment

    try:
        return get_or_create_experiment(client, uri, name)
    except Exception:
        found = client.get_experiment_by_name(name)  # another job created it a moment before us
        if found is None:
            raise
        return found.experiment_id


def _send(client, run_id: str, entry: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    from peft_bench.track.tracking import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, chunks

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
    elif op == "delete_tag":
        _delete_tag(client, run_id, entry["key"])
    elif op == "status":
        if entry["status"] in TERMINAL:
            client.set_terminated(run_id, entry["status"], end_time=entry.get("time"))
        else:
            client.update_run(run_id, status=entry["status"])
    elif op != "start":
        raise ValueError(f"unknown journal entry {op!r}")


def _delete_tag(client, run_id: str, key: str) -> None:
    from mlflow.exceptions import MlflowException

    if key not in client.get_run(run_id).data.tags:
        return
    try:
        client.delete_tag(run_id, key)
    except MlflowException as err:  # gone already (a sync and the run's own sender met)
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


# The file lock excludes other processes; these, other threads of this one (one lock per journal, so that a
# send stuck on a hung server does not hold up another run's).
_flushing: dict[Path, threading.Lock] = {}
_flushing_guard = threading.Lock()


def flush(journal: Journal, extra: Iterable[dict] = ()) -> str:
    """Send what mlflow does not have yet, in order, then ``extra`` (entries the journal could not take);
    returns the mlflow run id. Raises :class:`TrackingUnreachable` quickly when tracking is away.

    Under a lock on the run folder: the run's own sender and a `peft-bench sync` may meet. A POSIX lock,
    because DataLoader workers forked meanwhile would inherit (and hold) a ``flock``.
    """
    with _flushing_guard:
        in_process = _flushing.setdefault(journal.path.resolve(), threading.Lock())
    with in_process, journal.path.with_name(".tracking.lock").open("a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        return _flush_locked(journal, list(extra))


def _reachable_client(uri: str):
    from peft_bench.track.tracking import prepare_store, tracking_answers

    if not tracking_answers(uri):
        raise TrackingUnreachable(f"{uri} does not answer")
    try:
        prepare_store(uri)
    except OSError as err:
        raise TrackingUnreachable(f"cannot create the store of {uri}: {err}") from err
    return _client(uri)


def _flush_locked(journal: Journal, extra: list[dict]) -> str:
    entries, state = journal.entries(), journal.sync_state()
    header = journal.header()
    client = _reachable_client(header["tracking_uri"])
    if state["run_id"] is None:
        experiment_id = _experiment_id(client, header["tracking_uri"], header["experiment"])
        run = client.create_run(experiment_id, run_name=header["run_name"], start_time=header.get("time"))
        state = {"run_id": run.info.run_id, "synced": state["synced"]}
        journal.save_sync_state(state)
    for i in range(state["synced"], len(entries)):
        _send(client, state["run_id"], entries[i])
        state["synced"] = i + 1
        journal.save_sync_state(state)
    for entry in extra:
        _send(client, state["run_id"], entry)
    return state["run_id"]


def journals_in(run_dir: Path) -> list[Journal]:
    """The run folder's journal and the ones kept from earlier runs in the same folder (``--rerun``)."""
    return [Journal(p) for p in sorted(Path(run_dir).glob("tracking*.jsonl"))]


def sync_run_dir(run_dir: Path) -> bool:
    """Send the unsynced entries of the folder's runs; True if anything was sent.

    A run still going (or killed without an end) sends what it has so far; the lock keeps it and its own
    sender from sending an entry twice.
    """
    sent = False
    for journal in journals_in(run_dir):
        if journal.unsynced():
            flush(journal)
            sent = True
    return sent


def run_dirs_under(folder: Path) -> list[Path]:
    """Every run folder (one holding a tracking journal) at or below ``folder``."""
    folder = Path(folder)
    return sorted({p.parent for p in folder.rglob("tracking*.jsonl")} if folder.is_dir() else set())


def unfinished_journal(run_dir: Path) -> bool:
    """Whether the run folder's journal belongs to a run that never recorded its end (killed, or still going)."""
    journal = Journal(Path(run_dir) / JOURNAL)
    return journal.path.is_file() and journal.status() not in TERMINAL


def read_record(run_dir: Path) -> dict | None:
    """{"status", "run_id", "unsynced"} of the run folder's current journal, or None without one."""
    journal = Journal(Path(run_dir) / JOURNAL)
    if not journal.path.is_file():
        return None
    return {"status": journal.status(), "run_id": journal.sync_state()["run_id"], "unsynced": journal.unsynced()}


# --- the tracker -------------------------------------------------------------------------------------

class JournaledTracker:
    """RunTracker's interface; the journal first, mlflow from a background thread when it answers.

    ``resume_run_id`` (from a checkpoint) continues the run folder's journal, hence the same mlflow run,
    even one that was never reached; without it a new journal starts, and an older one is kept beside it.
    """

    def __init__(self, run_dir: Path, tracking_uri: str, experiment: str, run_name: str,
                 resume_run_id: str | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.resume = resume or resume_run_id is not None
        self.journal = Journal(self.run_dir / JOURNAL)
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
        self._reached_at_end = False
        self._failure: str | None = None  # why the last send failed, while it fails
        self._unjournaled: list[dict] = []  # entries the journal could not take (a full disk): sent from memory

    # -- context manager --------------------------------------------------------------------------

    def __enter__(self) -> JournaledTracker:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal.repair()
        if self.journal.path.is_file() and not self.resume:
            self._keep_earlier_journal()
        if not self.journal.path.is_file():
            self._record({"op": "start", "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                          "run_name": self.run_name, "time": _now_ms()})
        else:
            self._record({"op": "status", "status": "RUNNING"})
            if any(ERROR_TAG in e.get("tags", {}) for e in self.journal.entries()):
                self._record({"op": "delete_tag", "key": ERROR_TAG})  # the stop it recorded is over
        self._sender = threading.Thread(target=self._send_loop, name=f"tracking {self.run_name}", daemon=True)
        self._sender.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if exc_type is None:
            status = "FINISHED"
        else:
            # Ctrl-C, a stop signal, or a preempted job exiting to be requeued: stopped, not broken.
            status = "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
            from peft_bench.track.tracking import error_tag_text

            self._record({"op": "tags", "tags": {ERROR_TAG: error_tag_text(exc_type, exc)}})
        self._record({"op": "status", "status": status, "time": _now_ms()})
        self._closing = True
        self._wake.set()
        wait = FINAL_SEND_S if self._failure is None else UNREACHABLE_WAIT_S
        if self._sender is not None:
            # Not waited for longer, the last try goes on in the background (the records stay in the journal).
            self._sender.join(wait)
        if not self._reached_at_end:
            why = self._failure or f"not answering within {wait:.0f} s"
            log.warning("%s: tracking at %s unreachable (%s); the run's records are kept in %s and "
                        "`peft-bench sync %s` sends them", self.run_name, self.tracking_uri, why,
                        self.journal.path, self.run_dir)
        return False

    def _keep_earlier_journal(self) -> None:
        if self.journal.status() not in TERMINAL:  # killed without a word: mlflow must not show it RUNNING forever
            self.journal.append({"op": "tags", "tags": {ERROR_TAG: "ended without a record (killed?); a new run "
                                                                   "started in its folder"}})
            self.journal.append({"op": "status", "status": "KILLED", "time": _now_ms()})
        stamp = time.strftime("%Y%m%d-%H%M%S")  # kept beside the new one; the sender sends what it still holds
        for old in (self.journal.path, self.journal.sync_path):
            if old.is_file():
                os.replace(old, old.with_name(f"{old.stem}-{stamp}{old.suffix}"))

    # -- recording and sending --------------------------------------------------------------------

    def _record(self, entry: dict) -> None:
        """Append to the journal (or, if it cannot be written, keep in memory) and wake the sender."""
        try:
            self.journal.append(entry)
        except OSError as err:
            if not self._unjournaled:
                log.warning("%s: cannot write %s (%s); records are sent from memory only", self.run_name,
                            self.journal.path, err)
            self._unjournaled.append(entry)
        self._wake.set()

    def _send_earlier_journals(self) -> None:
        for journal in journals_in(self.run_dir):
            if journal.path != self.journal.path and journal.unsynced():
                try:
                    flush(journal)
                except Exception as err:
                    log.warning("an earlier run in %s is not synced yet (%s); its journal is kept for "
                                "`peft-bench sync`", self.run_dir, err)

    def _send_loop(self) -> None:
        self._send_earlier_journals()
        retry_at = 0.0  # after a failure, the next try waits until then (unless the run ends)
        while True:
            self._wake.wait(None if not retry_at else max(0.0, retry_at - time.monotonic()))
            self._wake.clear()
            closing = self._closing
            if not closing and time.monotonic() < retry_at:
                continue  # a new record while waiting out a failure: it keeps
            sent = self._try_flush()
            if closing:
                self._reached_at_end = sent
                return
            retry_at = 0.0 if sent else time.monotonic() + RETRY_AFTER_S

    def _try_flush(self) -> bool:
        pending = len(self._unjournaled)  # the run may add more meanwhile: only these are cleared below
        try:
            flush(self.journal, self._unjournaled[:pending])
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            if self._failure is None:
                log.warning("%s: tracking unreachable (%s); recording in %s, retrying every %.0f s", self.run_name,
                            reason, self.journal.path, RETRY_AFTER_S)
            self._failure = reason
            return False
        self._failure = None
        del self._unjournaled[:pending]
        return True

    @property
    def run_id(self) -> str | None:
        """The mlflow run id, or None while mlflow has not been reached (the journal then stands for it)."""
        return self.journal.sync_state()["run_id"]

    def log_config(self, config: Mapping[str, Any]) -> None:
        from peft_bench.track.tracking import canonical_json, config_hash, flatten_config

        self._record({"op": "params", "params": flatten_config(config)})
        self._record({"op": "dict", "name": "config.json", "data": json.loads(canonical_json(config))})
        self.set_tags({"config_hash": config_hash(config)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from peft_bench.track.tracking import tag_key

        self._record({"op": "tags", "tags": {tag_key(k): str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = _now_ms()
        self._record({"op": "metrics", "metrics": [[k, float(v), ts, step or 0] for k, v in metrics.items()]})

    def log_environment(self, device: Any = None) -> None:
        from peft_bench.track.tracking import describe_device, describe_host, git_state, package_versions

        commit, dirty = git_state()
        self.set_tags({"git_commit": commit, "git_dirty": dirty, "device": describe_device(device),
                       "host": describe_host()})
        self._record({"op": "params", "params": package_versions()})

    def log_dict(self, name: str, data: Mapping[str, Any]) -> None:
        """A JSON artifact of the run (the result record), through the journal like everything else."""
        self._record({"op": "dict", "name": name, "data": data})


def _now_ms() -> int:
    return int(time.time() * 1000)
