"""Every peft-bench run is an mlflow run: the store it goes to, and what it holds.

The tracker that writes them is :class:`peft_bench.track.journal.JournaledTracker` (a local journal first,
then mlflow); this module has the store (created and checked safely, probed before use), the run's
names and texts (tags, flattened params, the config hash) and the description of where it ran.

The default store is a sqlite file inside the results folder (``default_tracking_uri``); artifacts of a
sqlite store go to ``mlartifacts/`` beside the database file rather than to mlflow's default
``./mlruns`` under whatever the working directory happens to be.

Schema of a peft-bench run (``peft_bench.report.table`` reads exactly these names)

Tags (strings):
    peft_bench.method         method name, e.g. "st_adapter" (the paper table's ``method`` column)
    peft_bench.backbone       backbone name, e.g. "clip_vitb16"
    peft_bench.dataset        dataset name, e.g. "k400", "ssv2"; "k400[200 classes]" with a class subset
    peft_bench.seed           the random seed, as a decimal string
    peft_bench.models_time    "yes" / "no": whether the method models time (the paper's "TM?" column)
    peft_bench.pretrained     path of the pre-trained weights, or "none" for a random initialisation
    peft_bench.group          the paper's group, e.g. "Full fine-tuning"
    peft_bench.architecture   e.g. "SA", "SA+TA"
    peft_bench.config_hash    first 12 hex digits of the sha256 of the canonical config JSON (``log_config``)
    peft_bench.git_commit     commit of the peft-bench checkout, or "unknown" (``log_environment``)
    peft_bench.git_dirty      "yes" / "no" / "unknown": tracked files modified in that checkout
    peft_bench.device         e.g. "cpu (2 cores)" or "NVIDIA H200"
    peft_bench.host           the machine around the device: OS, architecture, CPU model ("Linux x86_64, AMD EPYC")
    peft_bench.decoder        what decoded the videos: "pyav", "torchcodec", "decord", or "pyav (auto)" (the runner)
    peft_bench.decode_device  "cpu" or "cuda"
    peft_bench.decoder_version  the decoder's package and version, e.g. "av 18.1.0"
    peft_bench.ffmpeg         the FFmpeg it decodes with, e.g. "FFmpeg 8.1.2 (libavcodec 62.28.102), bundled with PyAV"
    peft_bench.error          set when the run ends FAILED or KILLED: the exception (its middle cut beyond 2000
                              characters); removed when the run is resumed
    peft_bench.classes        with ``dataset.classes``: "200 of 400" (the subset's size, the dataset's classes)

Params: the run's config flattened to dotted keys (``optim.lr``), plus ``version.<package>`` for python
and the libraries whose versions change results. The whole config is also the artifact ``config.json``.

Metrics, per epoch (``step`` = epoch): train_loss, train_top1, val_top1, val_top5.
Final metrics (no step): top1, top5 (percent, 0-100, as the paper prints them), trainable_params,
total_params, wall_time_s, decode_failures (video reads that failed and were replaced by another video);
{train,val}_{missing,unreadable,short}_videos (distinct videos met in the run of each kind; short ones are
used with repeated frames); optional gflops (all test views together, as the paper counts them).

Run status (``states.RunStatus``): FINISHED on normal exit of the tracker's block, FAILED on an exception,
KILLED on Ctrl-C or a stop signal (SIGTERM, the preemption signal).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import platform
import re
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from peft_bench.config import config_digest
from peft_bench.errors import UserError
from peft_bench.system import cpu_model_name, usable_cpu_count

TAG_PREFIX = "peft_bench."

# Libraries whose version can change a result; logged as version.<name> params.
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "fvcore",
    "decord",
    "av",
    "torchcodec",
    "mlflow",
    "pandas",
)

# mlflow's limits on one log_batch call and on one param value (mlflow.utils.validation).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000
MAX_ERROR_TAG_CHARS = 2000
PROBE_TIMEOUT_S = 3.0  # how long a tracking server may take to answer before it counts as unreachable


class StoreError(UserError):
    """The tracking store cannot be used as it is; the message says how to recover."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store (or an in-memory one)."""
    if not tracking_uri.startswith("sqlite:///"):  # SQLAlchemy's form: three slashes, then the path
        return None
    path = unquote(tracking_uri[len("sqlite:///") :].split("?")[0])
    return None if path in ("", ":memory:") else Path(path)


_prepared: set[Path] = set()
_creating = threading.Lock()  # the file lock excludes other processes; this, other threads of this one


def prepare_store(tracking_uri: str) -> None:
    """Make a SQLite store safe to use (other stores need nothing), creating it if it is not there.

    A missing store is created and migrated in a temporary file beside it, under a file lock, and renamed
    into place: a run killed while creating it leaves no half-made store, and concurrent first runs create
    it once. Then :func:`check_store`. OSError when it cannot be created (a read-only folder).
    """
    path = sqlite_path(tracking_uri)
    if path is None or (path in _prepared and path.is_file()):
        return
    if not _has_tables(path):
        _create_store(path)
    check_store(tracking_uri)


def check_store(tracking_uri: str) -> None:
    """Raise :class:`StoreError`, saying how to recover, for an existing SQLite store that is half-made (a
    kill inside mlflow's own creation of it) or of another schema; mlflow would fail on it with a
    SQLAlchemy traceback, or silently leave every run to its journal."""
    path = sqlite_path(tracking_uri)
    if path is None or path in _prepared or not _has_tables(path):
        return
    problem = _store_problem(path)
    if problem is not None:
        raise StoreError(
            f"the tracking store {path} cannot be used: {problem}. A store left half-made by a run killed while "
            f"creating it is moved aside and the next run makes a new one: `mv {path} {path}.damaged`, then "
            f"`peft-bench sync runs` (your --output-dir) sends the runs recorded in their run folders. A store made "
            f"by an older mlflow is upgraded instead: back it up, then `mlflow db upgrade sqlite:///{path}`."
        )
    _prepared.add(path)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)


def _has_tables(path: Path) -> bool:
    """False for a missing file and for one with no tables (the start of a creation that never finished)."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(_connect_read_only(path)) as db:
            return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
    except sqlite3.DatabaseError:
        return True  # something is there: _store_problem says what


def _store_problem(path: Path) -> str | None:
    try:
        with contextlib.closing(_connect_read_only(path)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = (
                db.execute("SELECT version_num FROM alembic_version").fetchone()
                if "alembic_version" in tables
                else None
            )
    except sqlite3.DatabaseError as err:
        return f"it is not a readable SQLite database ({err})"
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        return f"mlflow's schema migration stopped half-way (its temporary table {leftovers[0]} is left)"
    if version is None:
        return "it has tables but no schema version (its creation stopped half-way)"
    head = _schema_head()
    if head is not None and version[0] != head:
        return f"its schema is at revision {version[0]}, mlflow {mlflow.__version__} needs {head}"
    return None


@functools.lru_cache(maxsize=1)
def _schema_head() -> str | None:
    try:
        # mlflow's internals, which a release may move: imported here, where the fallback below catches that
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config  # (the same reason)

        return ScriptDirectory.from_config(_get_alembic_config("")).get_current_head()
    except Exception:  # noqa: BLE001  -- mlflow moved its internals: the leftover-table check above still stands
        return None


def _create_store(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _creating, open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # a POSIX lock: loader workers forked meanwhile do not inherit it
        if _has_tables(path):  # another process made it while we waited
            return
        for stale in path.parent.glob(f".{path.name}.creating-*"):  # from creators killed before us
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        try:
            _migrate_new_store(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _migrate_new_store(path: Path) -> None:
    quiet_mlflow_logging()
    uri = f"sqlite:///{path}"
    try:
        # mlflow's internals, which a release may move: the fallback below then creates the tables
        from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine
    except ImportError:  # mlflow moved them: let its client create the tables (it caches an engine for this file)
        MlflowClient(uri).search_experiments()
        return
    engine = create_sqlalchemy_engine(uri)
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def tracking_answers(tracking_uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a tracking server answers at all within ``timeout`` (any HTTP status counts). mlflow's own
    client would instead retry a refused or silent server for minutes. Non-HTTP stores: True."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return True
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if not with a health page
    except (OSError, ValueError):
        return False


def default_tracking_uri(results_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a sqlite store ``<results_dir>/mlflow.db`` (folder created)."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env
    results_dir = Path(results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results_dir / 'mlflow.db'}"


def quiet_mlflow_logging() -> None:
    """Hide the INFO lines mlflow prints when it creates or migrates a sqlite store; warnings still show."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.db_migrations"):
        logging.getLogger(name).setLevel(logging.WARNING)


def config_hash(config: Mapping[str, Any]) -> str:
    """The ``config_hash`` tag: the config digest (``peft_bench.config``) of the config as logged, compact."""
    return config_digest(config, compact=True)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; lists and other values become their JSON (or str) text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = param_text(value)
    return flat


def param_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = str(value)
    # The full value is kept in config.json; the param only has to be recognisable.
    if len(text) > MAX_PARAM_VALUE_CHARS:
        text = text[: MAX_PARAM_VALUE_CHARS - 3] + "..."
    return text


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """``version.<pkg>`` -> installed version or "absent"; ``version.python`` too."""
    versions = {"version.python": platform.python_version()}
    for package in packages:
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"version.{package}"] = "absent"
    return versions


def git_state(source_dir: Path | None = None) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding peft-bench's source, or ("unknown", "unknown").

    The check that this very file is tracked matters: an installed copy under a virtual environment
    that lives inside some other checkout must not report that checkout's commit.
    """
    source_dir = source_dir or Path(__file__).resolve().parent
    tracked = run_git(source_dir, "ls-files", "--error-unmatch", Path(__file__).name)
    commit = run_git(source_dir, "rev-parse", "HEAD")
    if tracked is None or commit is None:
        return "unknown", "unknown"
    # Untracked files (results, caches) do not change the code that ran; modified tracked files do.
    status = run_git(source_dir, "status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else ("yes" if status.strip() else "no")
    return commit.strip(), dirty


def run_git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def describe_device(device: Any = None) -> str:
    """ "cpu (N cores)" or the CUDA device name; ``device`` (a torch.device or str) overrides detection."""
    wanted = str(device) if device is not None else None
    if wanted is None or wanted.startswith("cuda"):
        cuda_name = cuda_device_name(wanted)
        if cuda_name is not None:
            return cuda_name
    elif not wanted.startswith("cpu"):
        return wanted  # e.g. "mps": no better description is available portably
    return f"cpu ({usable_cpu_count()} cores)"


def describe_host() -> str:
    """OS, architecture and CPU model: a CPU run's speed and even its floating-point results depend on them."""
    parts = [f"{platform.system()} {platform.machine()}".strip()]
    cpu = cpu_model_name()
    if cpu:
        parts.append(cpu)
    return ", ".join(part for part in parts if part) or "unknown"


def cuda_device_name(wanted: str | None) -> str | None:
    try:
        import torch  # deferred: importing torch costs seconds and is only needed here
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.device(wanted).index if wanted else None
    if index is None:
        index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    count = torch.cuda.device_count()
    return f"{name} (x{count} visible)" if count > 1 else name


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store beside its database file; other stores keep mlflow's default."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = Path(unquote(parsed.path))
    if str(db_path) in ("", "/", ":memory:"):
        return None
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "experiment"
    return (db_path.parent / "mlartifacts" / safe_name).resolve().as_uri()


def get_or_create_experiment(client: MlflowClient, tracking_uri: str, name: str) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri, name))


def error_tag_text(exc_type: type[BaseException], exc: BaseException | None) -> str:
    """ "DataError: ..." within mlflow's tag limit, cut in the middle: the start and the end (often the reason) stay."""
    text = f"{exc_type.__name__}: {exc}" if exc is not None else exc_type.__name__
    if len(text) <= MAX_ERROR_TAG_CHARS:
        return text
    half = (MAX_ERROR_TAG_CHARS - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def tag_key(key: str) -> str:
    """ "method" -> "peft_bench.method"; keys with a dot are taken as already namespaced."""
    return key if "." in key else f"{TAG_PREFIX}{key}"
