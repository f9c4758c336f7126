"""Runs -> one DataFrame: the tracking store's runs (``load_runs``) or the result records' (``runs_from_records``)
as rows of the same columns (``RUN_COLUMNS``), and which of them a table is made of (``RunSelection``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from peft_bench.config import config_digest
from peft_bench.errors import UserError
from peft_bench.track.records import (
    COST_METRICS,
    FoundRecords,
    cost_metrics,
    read_records,
    tracking_params,
)
from peft_bench.track.tracking import TAG_PREFIX, quiet_mlflow_logging

# A run is identified by these; reruns of the same key replace each other (latest_per_key).
RUN_KEY = ["method", "backbone", "dataset", "seed"]
# What a run is (its tags), and where it came from.
IDENTITY_TAGS = ["method", "backbone", "dataset", "seed", "models_time", "group", "architecture", "pretrained"]
PROVENANCE_TAGS = ["config_hash", "git_commit", "git_dirty", "device", "host", "decoder_version", "ffmpeg"]
TAG_COLUMNS = IDENTITY_TAGS + PROVENANCE_TAGS
METRIC_COLUMNS = ["top1", "top5", "trainable_params", "gflops", "gflops_per_view", "total_params", *COST_METRICS]
# Read from a run's params: its recipe (config without seed and output places), library versions, frames.
PARAM_COLUMNS = ["recipe_hash", "versions", "num_frames"]
# One row per run: where it is, what it is (tags), what it measured, when and how it ended.
RUN_COLUMNS = [
    "run_id",
    "experiment",
    *IDENTITY_TAGS,
    *METRIC_COLUMNS,
    *PROVENANCE_TAGS,
    *PARAM_COLUMNS,
    "start_time",
    "status",
]
# Config keys that say where a run's outputs go or how fast it loads, not what it computes (as
# RunConfig.digest leaves them out), plus the seed: two seeds of one recipe share a recipe_hash.
NOT_RECIPE_PARAMS = {
    "seed",
    "config_digest",
    "experiment",
    "tracking_uri",
    "results_dir",
    "output_dir",
    "device",
    "train.num_workers",
    "train.checkpoint_every",
    "decoder",
    "data.decoder",
    "data.decode_device",
}
VERSION_PARAM_PREFIX = "version."
RANDOM_INIT_SUFFIX = " (random init)"  # appended to the backbone of runs from random weights


# -- reading the store ----------------------------------------------------------------------------------


def load_runs(tracking_uri: str, experiment: str | None = None, *, finished_only: bool = True) -> pd.DataFrame:
    """One row per run (columns ``RUN_COLUMNS``) of ``experiment``, or of every active experiment.

    Missing tags are missing values, missing metrics NaN. ``seed`` is an integer (nullable).
    An experiment that does not exist (yet) has no runs: the result is empty, as for an empty store.
    """
    quiet_mlflow_logging()
    experiments = experiment_names_by_id(MlflowClient(tracking_uri), experiment)
    if not experiments:
        return empty_runs_frame()
    with tracking_uri_set(tracking_uri):
        raw = mlflow.search_runs(
            experiment_ids=list(experiments),
            filter_string="attributes.status = 'FINISHED'" if finished_only else "",
            output_format="pandas",
        )
    if raw.empty:
        return empty_runs_frame()
    return runs_frame(raw, experiments)


def experiment_names_by_id(client: MlflowClient, experiment: str | None) -> dict[str, str]:
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        return {} if found is None else {found.experiment_id: found.name}
    names: dict[str, str] = {}
    page_token = None
    while True:
        page = client.search_experiments(page_token=page_token)
        names.update({found.experiment_id: found.name for found in page})
        page_token = page.token
        if not page_token:
            return names


@contextmanager
def tracking_uri_set(tracking_uri: str) -> Iterator[None]:
    """mlflow.search_runs reads the global tracking URI; set it for the call, then put back the old one."""
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        # None unsets it again (and the env var mlflow set)
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # mlflow takes None, its annotation says not


def runs_frame(raw: pd.DataFrame, experiments: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(index=raw.index)
    frame["run_id"] = raw["run_id"]
    frame["experiment"] = raw["experiment_id"].map(experiments)
    for name in TAG_COLUMNS:
        frame[name] = column_or_missing(raw, f"tags.{TAG_PREFIX}{name}")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    # Runs from random weights are a different backbone as far as results go: keep them in their own
    # column, so a smoke test can never take the place of a pre-trained result.
    random_init = frame["pretrained"] == "none"
    frame.loc[random_init, "backbone"] = frame.loc[random_init, "backbone"] + RANDOM_INIT_SUFFIX
    for name in METRIC_COLUMNS:
        frame[name] = pd.to_numeric(column_or_missing(raw, f"metrics.{name}"), errors="coerce").astype(float)
    params = raw[[column for column in raw.columns if column.startswith("params.")]]
    params.columns = [column[len("params.") :] for column in params.columns]
    frame["recipe_hash"] = [recipe_hash(row) for _, row in params.iterrows()]
    frame["versions"] = [versions_text(row) for _, row in params.iterrows()]
    frame["num_frames"] = pd.to_numeric(column_or_missing(params, "num_frames"), errors="coerce").astype("Int64")
    frame["start_time"] = raw["start_time"]
    frame["status"] = raw["status"]
    return frame[RUN_COLUMNS].reset_index(drop=True)


def runs_from_records(found: FoundRecords, experiment: str | None = None) -> pd.DataFrame:
    """The result records as ``load_runs`` gives their mlflow runs (same columns, same values), plus
    ``record_path``; only those of ``experiment`` if given. Records are of finished runs only."""
    rows = [
        record_row(path, record)
        for path, record in found.records
        if experiment is None or record["run"]["experiment"] == experiment
    ]
    if not rows:
        return empty_runs_frame().assign(record_path=pd.Series(dtype=object))
    raw = pd.DataFrame(rows)
    frame = runs_frame(raw, {name: name for name in raw["experiment_id"].unique()})
    frame["record_path"] = raw["record_path"].to_numpy()
    return frame


def record_row(path: Path, record: dict) -> dict:
    """One record as a row of ``mlflow.search_runs`` (tags., metrics., params. columns) would hold its run."""
    result, description, environment = record["results"][0], record["description"], record["environment"]
    tags = {
        "method": record["method"],
        "backbone": record["backbone"],
        "dataset": record["dataset"],
        "seed": str(record["seed"]),
        **description,
        "config_hash": record["run"]["config_hash"],
        **{key: environment[key] for key in ("git_commit", "git_dirty", "device", "host")},
    }
    decoder = record["data"]["decoder"]
    if "used" in decoder:  # what the runner tags (records from before torchcodec lack it)
        tags.update(
            decoder=decoder["used"],
            decode_device=decoder["device"],
            decoder_version=decoder["version"],
            ffmpeg=decoder["libraries"]["ffmpeg"],
        )
    metrics = {
        "top1": result["top1"],
        "top5": result["top5"],
        "trainable_params": record["params"]["trainable"],
        "total_params": record["params"]["total"],
        "gflops": record["flops"]["gflops"],
        "gflops_per_view": record["flops"]["gflops_per_view"],
        **cost_metrics(record),
    }
    return {
        "run_id": record["run"]["mlflow_run_id"] or f"record:{path}",
        "experiment_id": record["run"]["experiment"],
        **{f"tags.{TAG_PREFIX}{key}": value for key, value in tags.items() if key != "feature_cache"},
        **{f"metrics.{key}": value for key, value in metrics.items()},
        **{f"params.{key}": value for key, value in tracking_params(record).items()},
        "start_time": pd.Timestamp(record["run"]["started_at"]).tz_convert("UTC"),
        "status": record["run"]["status"],
        "record_path": str(path),
    }


def recipe_hash(params: pd.Series) -> str | None:
    """The config digest of what a run computes: its config params without the seed, output places and
    versions. Two seeds of one recipe share it; the table's footer warns when a cell mixes several.

    Read from the params rather than a tag so that runs logged before this existed have one too (it is
    computed when a table is made, never stored).
    """
    recipe = {
        str(key): str(value)
        for key, value in params.items()
        if not pd.isna(value) and key not in NOT_RECIPE_PARAMS and not str(key).startswith(VERSION_PARAM_PREFIX)
    }
    if not recipe:
        return None
    return config_digest(recipe)


def versions_text(params: pd.Series) -> str | None:
    """ "python 3.11.4, torch 2.5.1, ...": the library versions a run logged (``version.*`` params)."""
    versions = [
        f"{str(key)[len(VERSION_PARAM_PREFIX) :]} {value}"
        for key, value in sorted(params.items())
        if str(key).startswith(VERSION_PARAM_PREFIX) and not pd.isna(value)
    ]
    python = [text for text in versions if text.startswith("python ")]
    others = [text for text in versions if not text.startswith("python ")]
    return ", ".join(python + others) or None


def column_or_missing(raw: pd.DataFrame, column: str) -> pd.Series:
    # search_runs only has a column for a tag or metric that at least one run logged.
    if column in raw.columns:
        return raw[column]
    return pd.Series([None] * len(raw), index=raw.index, dtype=object)


def empty_runs_frame() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype=object) for name in RUN_COLUMNS})
    frame["seed"] = frame["seed"].astype("Int64")
    frame["num_frames"] = frame["num_frames"].astype("Int64")
    for name in METRIC_COLUMNS:
        frame[name] = frame[name].astype(float)
    frame["start_time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame


# -- choosing runs --------------------------------------------------------------------------------------


@dataclass
class RunSelection:
    """Which runs a table is made of. Empty lists and None mean "no filter"."""

    backbones: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # prefixes of commit ids, as git abbreviates them
    since: str | None = None  # ISO date or time (UTC unless it says otherwise); runs started at or after
    until: str | None = None  # runs started at or before; a bare date includes that whole day
    every_run: bool = False  # unfinished runs and reruns too, instead of the latest finished run per key

    def describe(self) -> str:
        parts = [
            f"backbone in {self.backbones}" if self.backbones else "",
            f"dataset in {self.datasets}" if self.datasets else "",
            f"commit starting with {self.commits}" if self.commits else "",
            f"started since {self.since}" if self.since else "",
            f"started until {self.until}" if self.until else "",
        ]
        return ", ".join(part for part in parts if part) or "no filter"


def select_runs(runs: pd.DataFrame, selection: RunSelection) -> pd.DataFrame:
    """The runs matching every filter of ``selection`` (status and reruns are the table's business)."""
    keep = pd.Series(True, index=runs.index)
    if selection.backbones:
        # "clip_vitb16" also picks its random-init column: the filter names a backbone, not a column.
        base_backbone = runs["backbone"].astype(str).str.replace(RANDOM_INIT_SUFFIX, "", regex=False)
        keep &= base_backbone.isin(selection.backbones)
    if selection.datasets:
        keep &= runs["dataset"].isin(selection.datasets)
    if selection.commits:
        commits = runs["git_commit"].fillna("").astype(str).str.lower()
        keep &= pd.concat([commits.str.startswith(prefix.lower()) for prefix in selection.commits], axis=1).any(axis=1)
    start = pd.to_datetime(runs["start_time"], utc=True)
    if selection.since:
        keep &= start >= date_bound(selection.since, "--since")
    if selection.until:
        bound = date_bound(selection.until, "--until")
        keep &= start < bound + pd.Timedelta(days=1) if is_bare_date(selection.until) else start <= bound
    return runs[keep].reset_index(drop=True)


def date_bound(text: str, flag: str) -> pd.Timestamp:
    try:
        moment = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise UserError(f"{flag} {text!r} is not a date; expected YYYY-MM-DD or an ISO 8601 time") from None
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def is_bare_date(text: str) -> bool:
    return len(text.strip()) == len("YYYY-MM-DD")


def store_uri(tracking_uri: str | None, results_dir: Path) -> str:
    """The store to read: --tracking-uri, MLFLOW_TRACKING_URI, or results/mlflow.db, which must exist.

    Reading must not create an empty sqlite store where the user mistyped a path.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        uri = f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path parses to the path "//abs/path"; one slash is the same file, and reads better.
        text = unquote(parsed.path)
        path = Path("/" + text.lstrip("/")) if text.startswith("//") else Path(text)
        if str(path) not in ("", "/", ":memory:") and not path.is_file():
            raise FileNotFoundError(f"no tracking store at {path}: run `peft-bench run` first, or pass --tracking-uri")
    return uri


def selected_runs(uri: str, experiment: str | None, selection: RunSelection) -> pd.DataFrame:
    """The store's runs (finished only unless every_run) after the filters; an error if none is left."""
    quiet_mlflow_logging()
    client = MlflowClient(uri)
    if experiment is not None and not experiment_names_by_id(client, experiment):
        known = sorted(experiment_names_by_id(client, None).values())
        raise UserError(
            f"no experiment '{experiment}' in {uri}; it has: {', '.join(known) or 'none'} "
            "(--experiment NAME, or --all-experiments)"
        )
    runs = load_runs(uri, experiment, finished_only=not selection.every_run)
    where = f"{uri}" + (f" (experiment '{experiment}')" if experiment else "")
    if runs.empty:
        state = "runs" if selection.every_run else "finished runs"
        raise UserError(f"no {state} in {where}")
    return filtered(runs, where, selection)


def selected_records(folder: Path, experiment: str | None, selection: RunSelection) -> pd.DataFrame:
    """The result records under ``folder`` as runs, after the filters; an error if none is left."""
    found = read_records(folder)
    runs = runs_from_records(found, experiment)
    where = f"the records under {folder}" + (f" (experiment '{experiment}')" if experiment else "")
    if runs.empty:
        experiments = sorted({record["run"]["experiment"] for _, record in found.records})
        hint = (
            f"; they are of experiments {', '.join(experiments)} (--experiment NAME, or --all-experiments)"
            if experiments
            else f"; {len(found.skipped)} skipped as unusable"
            if found.skipped
            else ""
        )
        raise UserError(f"no result record in {where}{hint}")
    return filtered(runs, where, selection)


def filtered(runs: pd.DataFrame, where: str, selection: RunSelection) -> pd.DataFrame:
    chosen = select_runs(runs, selection)
    if chosen.empty:
        raise UserError(f"no run in {where} matches {selection.describe()} ({len(runs)} runs before filtering)")
    return chosen
