"""The tracker: every record of a run is written to a local journal first, then sent to mlflow.

:class:`JournaledTracker` is peft-bench's one tracker. Each call becomes an entry appended to
``tracking.jsonl`` in the run folder (params, tags, metrics, a JSON artifact, the run's status): the
journal is the tracker's write-ahead log. A background thread sends the entries to mlflow, in order, so
training never waits on a network call or a database: a server that refuses or does not answer within a
few seconds counts as unreachable (mlflow's own client would retry it for minutes), and a SQLite store is
created safely first (``tracking.prepare_store``). While mlflow cannot be reached the entries stay in the
journal and are sent later, by the run itself once the server answers again (every 30 s), by the next run
in the same folder, or by ``peft-bench sync RUN_DIR...`` / ``sweep sync`` / ``sweep status`` after the run.
``tracking-sync.json`` beside it holds the mlflow run id and how many entries mlflow has, so nothing is
sent twice.

An entry is one JSON object with an ``op`` (:class:`Op`) and that op's fields; it carries mlflow's own
timestamps and steps, so a synced run is the run mlflow would have had, every tag included. What the
entries hold is the schema in :mod:`peft_bench.track.tracking`.
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
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from peft_bench.config import canonical_json
from peft_bench.track.states import RunStatus, TextEnum
from peft_bench.track.tracking import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    chunks,
    config_hash,
    describe_device,
    describe_host,
    error_tag_text,
    flatten_config,
    get_or_create_experiment,
    git_state,
    package_versions,
    prepare_store,
    quiet_mlflow_logging,
    tag_key,
    tracking_answers,
)

log = logging.getLogger(__name__)

JOURNAL = "tracking.jsonl"
RETRY_AFTER_S = 30.0  # while mlflow is unreachable, try again at most this often
FINAL_SEND_S = 30.0  # at the end of a run, how long the last records may take to arrive before the journal keeps them
UNREACHABLE_WAIT_S = 1.0  # ... and how long when tracking has not been answering: the last try goes on meanwhile
FIRST_CONTACT_S = 10.0  # how long ``run_id`` waits for the sender's first try (a hung server: its probe's 3 s)
ERROR_TAG = "peft_bench.error"


class Op(TextEnum):
    """What one journal entry does, and its fields."""

    START = "start"  # tracking_uri, experiment, run_name, time: the journal's first entry, where the run goes
    PARAMS = "params"  # params: {key: text}
    TAGS = "tags"  # tags: {key: text}, keys already namespaced (tracking.tag_key)
    METRICS = "metrics"  # metrics: [[key, value, timestamp ms, step], ...]
    DICT = "dict"  # name, data: a JSON artifact
    DELETE_TAG = "delete_tag"  # key
    STATUS = "status"  # status (RunStatus), time (ms; with a terminal status)


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
        if not entries or entries[0].get("op") != Op.START:
            raise ValueError(f"{self.path}: not a tracking journal (no start entry)")
        return entries[0]

    def status(self) -> RunStatus | None:
        statuses = [e["status"] for e in self.entries() if e.get("op") == Op.STATUS]
        return RunStatus(statuses[-1]) if statuses else None

    def unsynced(self) -> int:
        return len(self.entries()) - self.sync_state()["synced"]


# --- sending entries to mlflow ----------------------------------------------------------------------


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    try:
        return get_or_create_experiment(client, uri, name)
    except Exception:
        found = client.get_experiment_by_name(name)  # another job created it a moment before us
        if found is None:
            raise
        return found.experiment_id


def _send(client: MlflowClient, run_id: str, entry: dict) -> None:
    op = Op(entry["op"])
    if op is Op.PARAMS:
        for batch in chunks([Param(k, v) for k, v in entry["params"].items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=batch)
    elif op is Op.TAGS:  # tags share the params' batch limit
        for batch in chunks([RunTag(k, v) for k, v in entry["tags"].items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=batch)
    elif op is Op.METRICS:
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in entry["metrics"]]
        for batch in chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch)
    elif op is Op.DICT:
        client.log_dict(run_id, entry["data"], entry["name"])
    elif op is Op.DELETE_TAG:
        _delete_tag(client, run_id, entry["key"])
    elif op is Op.STATUS:
        status = RunStatus(entry["status"])
        if status.terminal:
            client.set_terminated(run_id, status.value, end_time=entry.get("time"))
        else:
            client.update_run(run_id, status=status.value)


def _delete_tag(client: MlflowClient, run_id: str, key: str) -> None:
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


def _reachable_client(uri: str) -> MlflowClient:
    if not tracking_answers(uri):
        raise TrackingUnreachable(f"{uri} does not answer")
    try:
        prepare_store(uri)
    except OSError as err:
        raise TrackingUnreachable(f"cannot create the store of {uri}: {err}") from err
    quiet_mlflow_logging()
    return MlflowClient(uri)


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
    if not journal.path.is_file():
        return False
    status = journal.status()
    return status is None or not status.terminal


def read_record(run_dir: Path) -> dict | None:
    """{"status", "run_id", "unsynced"} of the run folder's current journal, or None without one."""
    journal = Journal(Path(run_dir) / JOURNAL)
    if not journal.path.is_file():
        return None
    return {"status": journal.status(), "run_id": journal.sync_state()["run_id"], "unsynced": journal.unsynced()}


def sync_unsent(run_dirs: Iterable[Path]) -> tuple[int, int]:
    """Send what each run folder kept and mlflow lacks: (folders sent, folders left). One that cannot be sent
    now (tracking away, the store busy) is logged and left to ``peft-bench sync``, never raised."""
    sent = left = 0
    for run_dir in run_dirs:
        try:
            sent += sync_run_dir(run_dir)
        except Exception as err:  # noqa: BLE001  -- the docstring says why: its records stay in the journal
            log.warning(
                "%s: results not sent to tracking yet (%s); `peft-bench sync %s` sends them",
                Path(run_dir).name,
                err,
                run_dir,
            )
            left += 1
    return sent, left


# --- the tracker -------------------------------------------------------------------------------------


class JournaledTracker:
    """One mlflow run, as a context manager: the journal first, mlflow from a background thread.

    >>> with JournaledTracker(run_dir, uri, "peft-bench", "st_adapter-clip_vitb16-k400-s0") as tracker:
    ...     tracker.log_config(config)
    ...     tracker.log_environment()
    ...     tracker.log_metrics({"val_top1": 41.2}, step=1)

    The run ends FINISHED, FAILED on an exception (the ``error`` tag says which) or KILLED on Ctrl-C, a stop
    signal or a preempted job's hand-over; the exception always propagates. ``resume_run_id`` (from a
    checkpoint) or ``resume`` continues the run folder's journal, hence the same mlflow run, even one that
    was never reached; without them a new journal starts, and an older one is kept beside it and sent too.
    """

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        resume_run_id: str | None = None,
        resume: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.resume = resume or resume_run_id is not None
        self.journal = Journal(self.run_dir / JOURNAL)
        self._wake = threading.Event()
        self._first_try = threading.Event()  # the sender tried to reach mlflow once (whatever came of it)
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
            self._record(
                {
                    "op": Op.START,
                    "tracking_uri": self.tracking_uri,
                    "experiment": self.experiment,
                    "run_name": self.run_name,
                    "time": _now_ms(),
                }
            )
        else:
            self._record({"op": Op.STATUS, "status": RunStatus.RUNNING})
            if any(ERROR_TAG in e.get("tags", {}) for e in self.journal.entries()):
                self._record({"op": Op.DELETE_TAG, "key": ERROR_TAG})  # the stop it recorded is over
        self._sender = threading.Thread(target=self._send_loop, name=f"tracking {self.run_name}", daemon=True)
        self._sender.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            status = RunStatus.FINISHED
        else:
            # Ctrl-C, a stop signal, or a preempted job exiting to be requeued: stopped, not broken.
            status = RunStatus.KILLED if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else RunStatus.FAILED
            self._record({"op": Op.TAGS, "tags": {ERROR_TAG: error_tag_text(exc_type, exc)}})
        self._record({"op": Op.STATUS, "status": status, "time": _now_ms()})
        self._closing = True
        self._wake.set()
        wait = FINAL_SEND_S if self._failure is None else UNREACHABLE_WAIT_S
        if self._sender is not None:
            # Not waited for longer, the last try goes on in the background (the records stay in the journal).
            self._sender.join(wait)
        if not self._reached_at_end:
            why = self._failure or f"not answering within {wait:.0f} s"
            log.warning(
                "%s: tracking at %s unreachable (%s); the run's records are kept in %s and "
                "`peft-bench sync %s` sends them",
                self.run_name,
                self.tracking_uri,
                why,
                self.journal.path,
                self.run_dir,
            )
        return False  # never swallow the exception

    def _keep_earlier_journal(self) -> None:
        status = self.journal.status()
        if status is None or not status.terminal:  # killed without a word: mlflow must not show it RUNNING forever
            self.journal.append(
                {
                    "op": Op.TAGS,
                    "tags": {ERROR_TAG: "ended without a record (killed?); a new run started in its folder"},
                }
            )
            self.journal.append({"op": Op.STATUS, "status": RunStatus.KILLED, "time": _now_ms()})
        # Kept beside the new one under a name of its own; the sender sends what it still holds.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        taken = {p.name for p in self.run_dir.glob("tracking*")}
        suffix, n = stamp, 1
        while f"{self.journal.path.stem}-{suffix}{self.journal.path.suffix}" in taken:
            n += 1
            suffix = f"{stamp}-{n}"  # two runs started in one second (a script, a test)
        for old in (self.journal.path, self.journal.sync_path):
            if old.is_file():
                os.replace(old, old.with_name(f"{old.stem}-{suffix}{old.suffix}"))

    # -- recording and sending --------------------------------------------------------------------

    def _record(self, entry: dict) -> None:
        """Append to the journal (or, if it cannot be written, keep in memory) and wake the sender."""
        try:
            self.journal.append(entry)
        except OSError as err:
            if not self._unjournaled:
                log.warning(
                    "%s: cannot write %s (%s); records are sent from memory only", self.run_name, self.journal.path, err
                )
            self._unjournaled.append(entry)
        self._wake.set()

    def _send_earlier_journals(self) -> None:
        for journal in journals_in(self.run_dir):
            if journal.path != self.journal.path and journal.unsynced():
                try:
                    flush(journal)
                except Exception as err:  # noqa: BLE001  -- this run goes on; the earlier one waits for a sync
                    log.warning(
                        "an earlier run in %s is not synced yet (%s); its journal is kept for `peft-bench sync`",
                        self.run_dir,
                        err,
                    )

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
            self._first_try.set()
            if closing:
                self._reached_at_end = sent
                return
            retry_at = 0.0 if sent else time.monotonic() + RETRY_AFTER_S

    def _try_flush(self) -> bool:
        pending = len(self._unjournaled)  # the run may add more meanwhile: only these are cleared below
        try:
            flush(self.journal, self._unjournaled[:pending])
        except Exception as err:  # noqa: BLE001  -- whatever stops the send, the records wait in the journal
            reason = f"{type(err).__name__}: {err}"
            if self._failure is None:
                log.warning(
                    "%s: tracking unreachable (%s); recording in %s, retrying every %.0f s",
                    self.run_name,
                    reason,
                    self.journal.path,
                    RETRY_AFTER_S,
                )
            self._failure = reason
            return False
        self._failure = None
        del self._unjournaled[:pending]
        return True

    @property
    def run_id(self) -> str | None:
        """The mlflow run id, or None while mlflow has not been reached (the journal then stands for it).

        Inside the block it first waits (at most ``FIRST_CONTACT_S``) for the sender's first try, so that
        a reachable store gives the id from the start, as mlflow's own ``start_run`` would.
        """
        run_id = self.journal.sync_state()["run_id"]
        if run_id is None and self._sender is not None and not self._closing and not self._first_try.is_set():
            self._first_try.wait(FIRST_CONTACT_S)
            run_id = self.journal.sync_state()["run_id"]
        return run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened params (sent in batches within mlflow's limits), ``config.json`` and the config-hash tag."""
        self._record({"op": Op.PARAMS, "params": flatten_config(config)})
        self._record({"op": Op.DICT, "name": "config.json", "data": json.loads(canonical_json(config))})
        self.set_tags({"config_hash": config_hash(config)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags, under the ``peft_bench.`` prefix unless a key already carries a namespace (``mlflow.note``)."""
        self._record({"op": Op.TAGS, "tags": {tag_key(k): str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = _now_ms()
        self._record({"op": Op.METRICS, "metrics": [[k, float(v), ts, step or 0] for k, v in metrics.items()]})

    def log_environment(self, device: Any = None) -> None:
        """Git state, device, host and library versions; ``device`` names the one the run uses, if known."""
        commit, dirty = git_state()
        self.set_tags(
            {"git_commit": commit, "git_dirty": dirty, "device": describe_device(device), "host": describe_host()}
        )
        self._record({"op": Op.PARAMS, "params": package_versions()})

    def log_dict(self, name: str, data: Mapping[str, Any]) -> None:
        """A JSON artifact of the run (the result record), through the journal like everything else."""
        self._record({"op": Op.DICT, "name": name, "data": data})


class OffRankTracker:
    """What a DDP process other than rank 0 holds: rank 0 alone records the run.

    The training loop logs its (all-reduced) metrics on every rank; here they are dropped, since rank 0
    logs the same figures. Anything else (config, tags, artifacts) is rank 0's alone: calling it here is a
    bug, and fails (AttributeError) instead of vanishing.
    """

    run_id = None

    def __enter__(self) -> OffRankTracker:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Rank 0 logs these."""


def _now_ms() -> int:
    return int(time.time() * 1000)
