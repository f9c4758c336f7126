"""``peft-bench table``: the cross-modality and system-level tables, regenerated from this project's own runs.

Every measured number comes from a run in the tracking store. The paper's tables (package data,
``peft_bench/reference/paper_*.csv``) are *reported by others*: they give the order of the rows, and their figures
appear only in columns (``--with-paper``) or rows (``--kind k400|ssv2``) labelled as the paper's, never
in a measured cell. Methods published after the paper (group ``Later methods``) come after the paper's
groups; their authors' figures (``results/followups_clip_vitb16.csv``) appear only in columns labelled
as the authors'. Rendering is ``table_output``'s job, the footer ``provenance``'s, Figure 1 ``plot``'s.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from peft_bench.benchmarks import recipe_folder
from peft_bench.errors import UserError
from peft_bench.track.provenance import provenance
from peft_bench.reference import reference_text
from peft_bench.method_api.registry import LATER_METHODS
from peft_bench.track.records import (
    COST_METRICS,
    FoundRecords,
    cost_metrics,
    read_records,
    tracking_params,
)
from peft_bench.report.table_output import FORMATS, TableReport, render_report
from peft_bench.track.tracking import TAG_PREFIX, quiet_mlflow_logging

# The reported figures are package data (peft_bench/reference; results/*.csv of the same names link to them).
PAPER_TABLE_FILE = "paper_cross_modality.csv"
FOLLOWUPS_FILE = "followups_clip_vitb16.csv"
TABLE_FILE_NAME = "cross_modality.csv"

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
    "run_id", "experiment", *IDENTITY_TAGS, *METRIC_COLUMNS, *PROVENANCE_TAGS, *PARAM_COLUMNS, "start_time", "status",
]
DESCRIPTION_COLUMNS = ["group", "architecture", "models time", "params (M)", "GFLOPs"]
# Where a method's description comes from (run tag -> table column).
DESCRIPTION_TAGS = {"group": "group", "architecture": "architecture", "models time": "models_time"}
# Dataset names that mean Kinetics-400, whose runs the paper's params column counts.
K400_NAMES = {"k400", "kinetics400", "kinetics-400", "kinetics_400"}
SSV2_NAMES = {"ssv2", "something-something-v2", "sthsthv2", "sth-sth-v2"}
# Config keys that say where a run's outputs go or how fast it loads, not what it computes (as
# RunConfig.digest leaves them out), plus the seed: two seeds of one recipe share a recipe_hash.
NOT_RECIPE_PARAMS = {
    "seed", "config_digest", "experiment", "tracking_uri", "results_dir", "output_dir", "device", "train.num_workers",
    "train.checkpoint_every", "decoder", "data.decoder", "data.decode_device",
}
VERSION_PARAM_PREFIX = "version."
RANDOM_INIT_SUFFIX = " (random init)"  # appended to the backbone of runs from random weights


# -- reading the store -----------------------------------------------------------------------------


def load_runs(
    tracking_uri: str, experiment: str | None = None, *, finished_only: bool = True
) -> pd.DataFrame:
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
        mlflow.set_tracking_uri(previous)  # None unsets it again (and the env var mlflow set)


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
        frame[name] = pd.to_numeric(column_or_missing(raw, f"metrics.{name}"), errors="coerce").astype(
            float
        )
    params = raw[[column for column in raw.columns if column.startswith("params.")]]
    params.columns = [column[len("params."):] for column in params.columns]
    frame["recipe_hash"] = [recipe_hash(row) for _, row in params.iterrows()]
    frame["versions"] = [versions_text(row) for _, row in params.iterrows()]
    frame["num_frames"] = pd.to_numeric(column_or_missing(params, "num_frames"), errors="coerce").astype("Int64")
    frame["start_time"] = raw["start_time"]
    frame["status"] = raw["status"]
    return frame[RUN_COLUMNS].reset_index(drop=True)


def runs_from_records(found: FoundRecords, experiment: str | None = None) -> pd.DataFrame:
    """The result records as ``load_runs`` gives their mlflow runs (same columns, same values), plus
    ``record_path``; only those of ``experiment`` if given. Records are of finished runs only."""
    rows = [record_row(path, record) for path, record in found.records
            if experiment is None or record["run"]["experiment"] == experiment]
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
        "method": record["method"], "backbone": record["backbone"], "dataset": record["dataset"],
        "seed": str(record["seed"]), **description, "config_hash": record["run"]["config_hash"],
        **{key: environment[key] for key in ("git_commit", "git_dirty", "device", "host")},
    }
    decoder = record["data"]["decoder"]
    if "used" in decoder:  # what the runner tags (records from before torchcodec lack it)
        tags.update(decoder=decoder["used"], decode_device=decoder["device"], decoder_version=decoder["version"],
                    ffmpeg=decoder["libraries"]["ffmpeg"])
    metrics = {"top1": result["top1"], "top5": result["top5"], "trainable_params": record["params"]["trainable"],
               "total_params": record["params"]["total"], "gflops": record["flops"]["gflops"],
               "gflops_per_view": record["flops"]["gflops_per_view"], **cost_metrics(record)}
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
    """A hash of what a run computes: its config params without the seed, output places and versions.

    Read from the params rather than a tag so that runs logged before this existed have one too.
    """
    recipe = {
        key: str(value)
        for key, value in params.items()
        if not pd.isna(value) and key not in NOT_RECIPE_PARAMS and not key.startswith(VERSION_PARAM_PREFIX)
    }
    if not recipe:
        return None
    text = "\n".join(f"{key}={recipe[key]}" for key in sorted(recipe))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def versions_text(params: pd.Series) -> str | None:
    """"python 3.11.4, torch 2.5.1, ...": the library versions a run logged (``version.*`` params)."""
    versions = [
        f"{key[len(VERSION_PARAM_PREFIX):]} {value}"
        for key, value in sorted(params.items())
        if key.startswith(VERSION_PARAM_PREFIX) and not pd.isna(value)
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


def latest_per_key(df: pd.DataFrame) -> pd.DataFrame:
    """The latest FINISHED run per (method, backbone, dataset, seed); a rerun replaces the earlier one."""
    finished = df[df["status"] == "FINISHED"]
    by_start = finished.sort_values("start_time", kind="stable")
    latest = by_start.drop_duplicates(subset=RUN_KEY, keep="last")
    return latest.sort_values(RUN_KEY, kind="stable").reset_index(drop=True)


# -- the table -------------------------------------------------------------------------------------


def seed_statistics(df: pd.DataFrame, every_run: bool = False, metric: str = "top1") -> pd.DataFrame:
    """``metric`` (top-1) over seeds per (method, backbone, dataset): columns ``n``, ``mean``, ``std``.

    Uses the latest run per seed (``every_run``: every run, so ``n`` counts runs, not seeds). ``n``
    counts runs with a value; ``std`` is the sample standard deviation (ddof=1), NaN for one seed.
    Runs lacking a method, backbone or dataset tag are not peft-bench runs and are left out.
    """
    runs = benchmark_runs(df, every_run)
    grouped = runs.groupby(["method", "backbone", "dataset"], sort=True)[metric]
    stats = grouped.agg(n="count", mean="mean", std="std").reset_index()
    stats["n"] = stats["n"].astype(int)
    return stats


def benchmark_runs(df: pd.DataFrame, every_run: bool = False) -> pd.DataFrame:
    """The runs a table is made of: the latest per key (``every_run``: all of them), with peft-bench tags."""
    runs = df if every_run else latest_per_key(df)
    return runs.dropna(subset=["method", "backbone", "dataset"]).reset_index(drop=True)


def cross_modality_table(
    df: pd.DataFrame, method_order: list[str] | None = None, every_run: bool = False
) -> pd.DataFrame:
    """The cross-modality table of the runs in ``df`` (as from ``load_runs``), all cells text.

    Rows: the methods that have runs, in ``method_order`` (default: the paper's row order), then any
    others alphabetically, then the later methods (group ``Later methods``: the authors' reference file's
    order, then alphabetically). Columns: ``group``, ``architecture``, ``models time`` (from the runs' tags),
    ``params (M)``, then one top-1 column per (backbone, dataset) that has runs, named
    ``"<backbone> / <dataset>"``, sorted by backbone then dataset.

    A top-1 cell is the mean over seeds, written ``"82.0"`` for one seed and ``"82.0 ± 0.3 (n=3)"``
    for several (sample std). A cell with no run stays an empty string.

    ``GFLOPs`` (all test views of one clip) comes from the same run as ``params (M)``.
    ``params (M)`` is trainable_params / 1e6 of the method's run on the first K400 column, because the
    paper counts parameters with the K400 head (400 classes); without a K400 run, of its first column.
    The same rule picks the run whose tags fill ``group``, ``architecture`` and ``models time`` (first
    run that has the tag).
    """
    runs = benchmark_runs(df, every_run)
    order = paper_method_order() if method_order is None else method_order
    later = set(runs.loc[runs["group"] == LATER_METHODS, "method"])
    methods = ordered_methods(runs["method"].unique().tolist(), order, later)
    result_columns = result_column_pairs(runs)
    table = pd.DataFrame(
        "",
        index=pd.Index(methods, name="method"),
        columns=DESCRIPTION_COLUMNS + [column_name(*pair) for pair in result_columns],
        dtype=object,
    )
    for method in methods:
        described = runs_in_description_order(runs[runs["method"] == method], result_columns)
        table.loc[method, DESCRIPTION_COLUMNS] = describe_method(described)
    for cell in seed_statistics(runs, every_run=True).itertuples(index=False):  # runs: already reduced
        table.loc[cell.method, column_name(cell.backbone, cell.dataset)] = format_top1(
            cell.mean, cell.std, cell.n
        )
    return table


def paper_method_order() -> list[str]:
    return paper_table()["method"].tolist()


def ordered_methods(methods: list[str], order: list[str], later=frozenset()) -> list[str]:
    """The paper's rows in ``order``, then other methods alphabetically, then the ``later`` ones after the
    paper's groups (in the authors' reference file's order, then alphabetically)."""
    known = [method for method in order if method in methods]
    others = sorted(method for method in methods if method not in order and method not in later)
    reference = followups_table()["method"].tolist()
    late = sorted((method for method in methods if method in later and method not in order),
                  key=lambda method: rank_in(reference, method))
    return known + others + late


def registered_method_order(methods: list[str]) -> list[str]:
    """``ordered_methods`` for registered methods: the later ones known from the registry."""
    from peft_bench.method_api.registry import get_method

    return ordered_methods(methods, paper_method_order(), {m for m in methods if get_method(m).later})


def result_column_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = runs[["backbone", "dataset"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted((str(backbone), str(dataset)) for backbone, dataset in pairs)


def column_name(backbone: str, dataset: str) -> str:
    return f"{backbone} / {dataset}"


def is_k400(dataset: str) -> bool:
    return str(dataset).lower() in K400_NAMES


def runs_in_description_order(
    method_runs: pd.DataFrame, result_columns: list[tuple[str, str]]
) -> pd.DataFrame:
    """K400 columns first, then the table's column order; within a column the latest run first."""
    position = {pair: index for index, pair in enumerate(result_columns)}

    def rank(row: pd.Series) -> tuple[int, int]:
        pair = (str(row["backbone"]), str(row["dataset"]))
        return (0 if is_k400(row["dataset"]) else 1, position[pair])

    ranks = method_runs.apply(rank, axis=1, result_type="reduce")
    ordered = method_runs.assign(_rank=ranks).sort_values("start_time", ascending=False, kind="stable")
    return ordered.sort_values("_rank", kind="stable").drop(columns="_rank")


def describe_method(described: pd.DataFrame) -> list[str]:
    texts = [first_present(described[tag]) for tag in DESCRIPTION_TAGS.values()]
    params = described["trainable_params"].dropna()
    texts.append(format_millions(params.iloc[0]) if len(params) else "")
    gflops = described["gflops"].dropna()  # all test views together, as the paper's system tables count
    texts.append(format_gflops(gflops.iloc[0]) if len(gflops) else "")
    return texts


def format_millions(count: float) -> str:
    """Two decimals, as the paper prints (7.42); two significant digits below 0.1M (toy models: 0.00078)."""
    millions = count / 1e6
    return f"{millions:.2f}" if millions >= 0.1 else f"{millions:.2g}"


def format_gflops(value: float) -> str:
    """One decimal for real models (455.3); three significant digits for toy ones (0.0612)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


# -- cost columns (--columns) ----------------------------------------------------------------------


def format_bytes(value: float) -> str:
    """Binary units, three significant digits: 1.09 GiB, 105 KiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def format_rate(value: float) -> str:
    """Three significant digits, never in exponent form: 0.0188, 9.70, 1234."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class CostColumn:
    metric: str  # the runs' column (an mlflow metric, or a record's figure)
    label: str
    format: Callable[[float], str]


# What --columns can add after GFLOPs, by name (records.cost_metrics gives the figures).
COST_COLUMNS = {
    "memory": CostColumn("peak_memory_bytes", "peak memory", format_bytes),
    "time": CostColumn("train_time_s", "train time", format_duration),
    "train-speed": CostColumn("train_clips_per_s", "train clips/s", format_rate),
    "eval-speed": CostColumn("eval_clips_per_s", "eval clips/s", format_rate),
    "device-hours": CostColumn("device_hours", "device-hours", format_rate),
    "state": CostColumn("trainable_state_bytes", "saved state", format_bytes),
}
COLUMN_GROUPS = {"cost": list(COST_COLUMNS), "clips/s": ["train-speed", "eval-speed"]}


def cost_column_names(text: str | None) -> list[str]:
    """``--columns memory,time,clips/s`` -> the COST_COLUMNS keys, in the order given; an error for others."""
    names: list[str] = []
    for name in comma_list(text):
        for expanded in COLUMN_GROUPS.get(name, [name]):
            if expanded not in COST_COLUMNS:
                known = ", ".join([*COST_COLUMNS, *COLUMN_GROUPS])
                raise UserError(f"unknown column {expanded!r} for --columns; expected some of {known}")
            if expanded not in names:
                names.append(expanded)
    return names


def with_cost_columns(table: pd.DataFrame, runs: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``table`` with the named cost columns after GFLOPs: per method, the mean over the seeds of the cell its
    params come from (the K400 column where there is one, as the paper counts)."""
    if not names:
        return table
    result_columns = result_column_pairs(runs)
    costs = pd.DataFrame("", index=table.index, columns=[COST_COLUMNS[name].label for name in names], dtype=object)
    for method in table.index:
        described = runs_in_description_order(runs[runs["method"] == method], result_columns)
        if described.empty:
            continue
        first = described.iloc[0]
        cell = described[(described["backbone"] == first["backbone"]) & (described["dataset"] == first["dataset"])]
        for name in names:
            column = COST_COLUMNS[name]
            values = cell[column.metric].dropna() if column.metric in cell else pd.Series(dtype=float)
            costs.loc[method, column.label] = column.format(values.mean()) if len(values) else ""
    at = table.columns.get_loc("GFLOPs") + 1
    return pd.concat([table.iloc[:, :at], costs, table.iloc[:, at:]], axis=1)


def first_present(values: pd.Series) -> str:
    present = values.dropna()
    return str(present.iloc[0]) if len(present) else ""


def format_top1(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return ""
    if n == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f} (n={n})"


def table_from_store(tracking_uri: str, experiment: str | None = None) -> pd.DataFrame:
    """load_runs + cross_modality_table: what ``peft-bench table`` prints."""
    return cross_modality_table(load_runs(tracking_uri, experiment))


# -- choosing runs ---------------------------------------------------------------------------------


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
        parts = [f"backbone in {self.backbones}" if self.backbones else "",
                 f"dataset in {self.datasets}" if self.datasets else "",
                 f"commit starting with {self.commits}" if self.commits else "",
                 f"started since {self.since}" if self.since else "",
                 f"started until {self.until}" if self.until else ""]
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


# -- the paper beside the measurements -------------------------------------------------------------

# The paper's cross-modality columns: (pre-training, dataset) of a ViT-B/16.
PAPER_BACKBONES = {"clip_vitb16": "clip", "in21k_vitb16": "in21k"}
PAPER_SOURCE = "Pan et al., ST-Adapter, NeurIPS 2022"


def paper_column(backbone: str, dataset: str) -> str | None:
    """The paper's column for a harness (backbone, dataset), e.g. clip_k400; None where it reports none."""
    pretraining = PAPER_BACKBONES.get(str(backbone))  # "(random init)" columns map to nothing, as they should
    if pretraining is None:
        return None
    if is_k400(dataset):
        return f"{pretraining}_k400"
    if is_ssv2(dataset):
        return f"{pretraining}_ssv2"
    return None


def is_ssv2(dataset: str) -> bool:
    return str(dataset).lower() in SSV2_NAMES


def authors_column(backbone: str, dataset: str) -> str | None:
    """The later methods' reference column for a harness (backbone, dataset): CLIP ViT-B/16 on K400/SSv2."""
    if str(backbone) != "clip_vitb16":
        return None
    return "k400_top1" if is_k400(dataset) else "ssv2_top1" if is_ssv2(dataset) else None


def with_paper_columns(table: pd.DataFrame, means: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``table`` with "<column> paper" and "<column> Δ" beside every column the paper also reports, and
    "<column> authors" where a later method's authors report a figure for that column.

    ``means`` holds the measured means (same index, the table's result columns). The paper's figures
    only ever go into the columns labelled paper and the later methods' authors' into those labelled
    authors; Δ is the measured mean minus whichever of the two the row has. A measured cell with no run
    stays empty and so does its difference. Returns the table and the columns that got a reported figure.
    """
    paper = paper_table().set_index("method")
    authors = later_authors(table)
    compared = table.copy()
    matched: list[str] = []
    for column in [c for c in table.columns if c not in DESCRIPTION_COLUMNS]:
        backbone, dataset = split_column_name(column)
        source = paper_column(backbone, dataset)
        if source is None:
            continue
        matched.append(column)
        reported = paper[source].reindex(table.index)
        measured = means[column] if column in means else pd.Series(float("nan"), index=table.index)
        at = compared.columns.get_loc(column) + 1
        compared.insert(at, f"{column} paper", reported.map(format_reported))
        by_authors = authors_column(backbone, dataset)
        if by_authors is not None and authors[by_authors].notna().any():
            theirs = authors[by_authors].reindex(table.index)
            at += 1
            compared.insert(at, f"{column} authors", theirs.map(format_reported))
            reported = reported.fillna(theirs)
        compared.insert(at + 1, f"{column} Δ", (measured - reported).map(format_difference))
    if matched:
        at = compared.columns.get_loc("params (M)") + 1
        params = paper["params_m"].reindex(table.index)
        compared.insert(at, "params (M) paper", params.map(lambda v: "" if pd.isna(v) else f"{v:.2f}"))
        if authors["params_m"].notna().any():
            theirs = authors["params_m"].reindex(table.index)
            compared.insert(at + 1, "params (M) authors", theirs.map(lambda v: "" if pd.isna(v) else f"{v:.2f}"))
    return compared, matched


def later_authors(table: pd.DataFrame) -> pd.DataFrame:
    """The authors' figures of the table's later-method rows (indexed by method; empty for other rows)."""
    followups = followups_table().set_index("method")
    later = [m for m in table.index if table.loc[m, "group"] == LATER_METHODS and m in followups.index]
    return followups.loc[later, ["k400_top1", "ssv2_top1", "params_m"]]


def split_column_name(column: str) -> tuple[str, str]:
    backbone, _, dataset = str(column).rpartition(" / ")
    return backbone, dataset


def format_reported(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_difference(value: float) -> str:
    return "" if pd.isna(value) else f"{value:+.1f}"


def mean_top1_frame(runs: pd.DataFrame, index: list[str], every_run: bool) -> pd.DataFrame:
    """Measured top-1 means, one column per table result column: the numbers behind "best" and Δ."""
    stats = seed_statistics(runs, every_run)
    if stats.empty:
        return pd.DataFrame(index=pd.Index(index, name="method"))
    stats["column"] = [column_name(b, d) for b, d in zip(stats["backbone"], stats["dataset"])]
    return stats.pivot(index="method", columns="column", values="mean").reindex(index)


# -- the system-level tables (K400, SSv2) ----------------------------------------------------------

SYSTEM_TABLE_FILES = {"k400": "paper_k400_comparison.csv", "ssv2": "paper_ssv2_comparison.csv"}
SYSTEM_COLUMNS = ["group", "pre-training", "frames × crops × clips", "GFLOPs", "top-1", "top-5", "source"]
REPORTED = "reported by the paper"
MEASURED = "measured here"
MEASURED_GROUP = "peft-bench runs"
PRETRAINING_NAMES = {"clip": "CLIP", "in21k": "IN21K", "tiny": "synthetic stills (peft-bench tiny)"}


def system_paper_table(kind: str) -> pd.DataFrame:
    """The paper's system-level comparison on K400 or SSv2, as reported (not measured here)."""
    if kind not in SYSTEM_TABLE_FILES:
        raise UserError(f"unknown table kind {kind!r}; expected one of {', '.join(TABLE_KINDS)}")
    return read_reference_csv(SYSTEM_TABLE_FILES[kind])


def system_table(
    runs: pd.DataFrame, kind: str, every_run: bool = False, any_dataset: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's rows, then one row per (method, backbone, dataset) measured here.

    Measured rows use the runs on the kind's dataset (``any_dataset``: every run given, e.g. a stand-in
    chosen with --dataset). Returns the text table (index ``model``) and the numbers behind top-1/top-5.
    """
    paper = system_paper_table(kind)
    reported = pd.DataFrame({
        "model": paper["model"],
        "group": paper["group"],
        "pre-training": paper["pretrain"].fillna(""),
        "frames × crops × clips": [
            views_text(*views) for views in zip(paper["frames"], paper["crops"], paper["clips"])
        ],
        "GFLOPs": paper["gflops"].map(lambda v: "" if pd.isna(v) else f"{v:g}"),
        "top-1": paper["top1"].map(format_reported),
        "top-5": paper["top5"].map(format_reported),
        "source": REPORTED,
    })
    numbers = pd.DataFrame({"top-1": paper["top1"].to_numpy(), "top-5": paper["top5"].to_numpy()})
    measured, measured_numbers = measured_system_rows(system_runs(runs, kind, every_run, any_dataset))
    cells = pd.concat([reported, measured], ignore_index=True)
    numbers = pd.concat([numbers, measured_numbers], ignore_index=True)
    cells.index = pd.Index(cells.pop("model"), name="model")
    numbers.index = cells.index
    return cells[SYSTEM_COLUMNS], numbers


def system_runs(runs: pd.DataFrame, kind: str, every_run: bool, any_dataset: bool) -> pd.DataFrame:
    """The runs behind a system table's measured rows: those on the kind's dataset, or all (any_dataset)."""
    used = benchmark_runs(runs, every_run)
    return used if any_dataset else used[on_dataset_of(used, kind)]


def on_dataset_of(runs: pd.DataFrame, kind: str) -> pd.Series:
    return runs["dataset"].map(is_k400 if kind == "k400" else is_ssv2).astype(bool)


def measured_system_rows(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, numbers = [], []
    order = paper_method_order()
    cells = runs.groupby(["method", "backbone", "dataset"], sort=False)
    keys = sorted(cells.groups, key=lambda key: (str(key[1]), str(key[2]), rank_in(order, key[0])))
    for method, backbone, dataset in keys:
        cell = cells.get_group((method, backbone, dataset))
        top1, top5 = cell["top1"].dropna(), cell["top5"].dropna()
        rows.append({
            "model": f"{backbone} + {method} ({dataset})",
            "group": MEASURED_GROUP,
            "pre-training": pretraining_name(str(backbone)),
            "frames × crops × clips": measured_views(cell, str(dataset)),
            "GFLOPs": format_gflops(cell["gflops"].dropna().mean()) if cell["gflops"].notna().any() else "",
            "top-1": format_top1(top1.mean(), top1.std(), len(top1)),
            "top-5": format_top1(top5.mean(), top5.std(), len(top5)),
            "source": MEASURED,
        })
        numbers.append({"top-1": top1.mean() if len(top1) else float("nan"),
                        "top-5": top5.mean() if len(top5) else float("nan")})
    columns = ["model", *SYSTEM_COLUMNS]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(numbers, columns=["top-1", "top-5"], dtype=float)


def rank_in(order: list[str], method: str) -> tuple[int, str]:
    return (order.index(method) if method in order else len(order), str(method))


def pretraining_name(backbone: str) -> str:
    if backbone.endswith(RANDOM_INIT_SUFFIX):
        return "none (random init)"
    prefix = backbone.split("_", 1)[0]
    return PRETRAINING_NAMES.get(prefix, backbone)


def views_text(frames: object, crops: object, clips: object) -> str:
    if any(pd.isna(value) for value in (frames, crops, clips)):
        return ""
    return f"{int(frames)} × {int(crops)} × {int(clips)}"


def measured_views(cell: pd.DataFrame, dataset: str) -> str:
    """Frames from the runs' config; crops × clips from the dataset's recipe, else the views the GFLOPs imply."""
    frames = cell["num_frames"].dropna()
    frame_text = str(int(frames.mode().iloc[0])) if len(frames) else "?"
    recipe = recipe_test_views(dataset)
    if recipe is not None:
        return f"{frame_text} × {recipe[0]} × {recipe[1]}"
    ratio = (cell["gflops"] / cell["gflops_per_view"]).dropna()
    return f"{frame_text} × {round(ratio.iloc[0])} views" if len(ratio) else f"{frame_text} × ?"


def recipe_test_views(dataset: str) -> tuple[int, int] | None:
    """(crops, clips) of the packaged recipe ``benchmarks/recipes/<dataset>.yaml``; None if there is none.

    Read as YAML rather than through peft_bench.data, which would import torch for two numbers.
    """
    import yaml

    resource = recipe_folder() / f"{dataset}.yaml"
    if not resource.is_file():
        return None
    recipe = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    return int(recipe.get("test_crops", 1)), int(recipe.get("test_clips", 1))


# -- reports: cells, numbers and footer ------------------------------------------------------------

TABLE_KINDS = ("cross-modality", "k400", "ssv2")


def cross_modality_report(runs: pd.DataFrame, every_run: bool = False, with_paper: bool = False,
                          columns: list[str] | None = None) -> TableReport:
    """The cross-modality table of ``runs`` with its provenance footer (and the paper beside it); ``columns``
    names cost columns to add (``COST_COLUMNS``)."""
    used = benchmark_runs(runs, every_run)
    table = cross_modality_table(used, every_run=True)
    means = mean_top1_frame(used, table.index.tolist(), every_run=True)
    notes = []
    if with_paper:
        table, matched = with_paper_columns(table, means)
        if matched:
            notes.append(f"columns marked paper: figures reported by {PAPER_SOURCE} "
                         "(peft_bench/reference/paper_cross_modality.csv), not measured here; Δ = measured mean − paper")
        authors = any(str(column).endswith(" authors") for column in table.columns)
        if authors:
            notes.append(f"columns marked authors: figures reported by each later method's authors "
                         f"({FOLLOWUPS_SOURCE}), not measured here; for those rows Δ = measured mean − authors")
        if not matched and not authors:
            notes.append("--with-paper: no column has a paper figure (the paper reports clip_vitb16 and in21k_vitb16 "
                         "on k400 and ssv2 only)")
    notes.append(cell_legend(every_run))
    if columns:
        table = with_cost_columns(table, used, columns)
        notes.append("cost columns: mean over the seeds of the cell the params come from; peak memory is the GPU's "
                     "allocated peak, or the CPU's peak resident set")
    found = provenance(used)
    return TableReport(
        cells=table,
        title="Cross-modality benchmark: top-1 (%) measured with peft-bench",
        best={column: means[column] for column in means.columns if column in table.columns},
        group_column="group",
        notes=notes + found.lines(),
        warnings=found.warnings,
    )


def counted_as(every_run: bool) -> str:
    if every_run:
        return "over runs, n = number of runs (--all: reruns and unfinished runs included)"
    return "over seeds, n = number of seeds (the latest finished run of each)"


def cell_legend(every_run: bool) -> str:
    return (f"top-1 cells: mean ± sample std {counted_as(every_run)}; "
            "params (M) and GFLOPs from the K400 run where there is one")


def measured_row_legend(every_run: bool) -> str:
    return f"measured rows: top-1/top-5 as mean ± sample std {counted_as(every_run)}"


def system_report(runs: pd.DataFrame, kind: str, every_run: bool = False, any_dataset: bool = False) -> TableReport:
    """The paper's system-level table for ``kind`` with this harness's runs as extra, marked rows."""
    cells, numbers = system_table(runs, kind, every_run, any_dataset)
    used = system_runs(runs, kind, every_run, any_dataset)
    name = "Kinetics-400" if kind == "k400" else "Something-Something v2"
    notes = [f"rows '{REPORTED}': {PAPER_SOURCE} (peft_bench/reference/{SYSTEM_TABLE_FILES[kind]}); "
             f"rows '{MEASURED}': peft-bench runs; GFLOPs count all test views"]
    if used.empty:
        notes.append(f"no run on {kind} matched: only the paper's rows are shown")
    elif not on_dataset_of(used, kind).all():
        notes.append(f"measured rows include datasets other than {name}: not comparable with the paper's rows")
    found = provenance(used)
    return TableReport(
        cells=cells,
        title=f"{name}: published systems and runs measured here",
        best={"top-1": numbers["top-1"], "top-5": numbers["top-5"]},
        group_column="group",
        notes=notes + [measured_row_legend(every_run)] + found.lines(),
        warnings=found.warnings,
    )


# -- the command -----------------------------------------------------------------------------------


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
        raise UserError(f"no experiment '{experiment}' in {uri}; it has: {', '.join(known) or 'none'} "
                         "(--experiment NAME, or --all-experiments)")
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
        hint = f"; they are of experiments {', '.join(experiments)} (--experiment NAME, or --all-experiments)" \
            if experiments else f"; {len(found.skipped)} skipped as unusable" if found.skipped else ""
        raise UserError(f"no result record in {where}{hint}")
    return filtered(runs, where, selection)


def filtered(runs: pd.DataFrame, where: str, selection: RunSelection) -> pd.DataFrame:
    chosen = select_runs(runs, selection)
    if chosen.empty:
        raise UserError(f"no run in {where} matches {selection.describe()} ({len(runs)} runs before filtering)")
    return chosen


# -- output ----------------------------------------------------------------------------------------


def render(table: pd.DataFrame | TableReport, fmt: str = "markdown") -> str:
    """``table`` (a bare frame of text cells, or a report with its footer) as Markdown, CSV, LaTeX, HTML or JSON."""
    report = table if isinstance(table, TableReport) else TableReport(cells=table)
    return render_report(report, fmt)


def write_table(table: pd.DataFrame, results_dir: Path) -> Path:
    """Write ``<results_dir>/cross_modality.csv`` and return its path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / TABLE_FILE_NAME
    path.write_text(render(table, "csv"), encoding="utf-8")
    return path


FOLLOWUPS_SOURCE = "their repositories' READMEs, peft_bench/reference/followups_clip_vitb16.csv"


def followups_table() -> pd.DataFrame:
    """The later methods' figures on CLIP ViT-B/16 as their authors report them (not measured here).

    Columns: method, name, venue, k400_top1, k400_setting, ssv2_top1, ssv2_setting, params_m, gflops,
    source (the README and its commit), note.
    """
    return read_reference_csv(FOLLOWUPS_FILE)


def paper_table() -> pd.DataFrame:
    """The ST-Adapter paper's cross-modality table, as the paper reports it (not measured here).

    Columns: group, method, architecture, temporal_modelling, params_m, clip_k400, clip_ssv2,
    in21k_k400, in21k_ssv2, note. Cells lost in transcription are NaN.
    """
    return read_reference_csv(PAPER_TABLE_FILE)


def read_reference_csv(name: str) -> pd.DataFrame:
    """A reported table that the package carries (``peft_bench.reference``), as a frame."""
    return pd.read_csv(io.StringIO(reference_text(name)))


# -- the command line ------------------------------------------------------------------------------


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """``peft-bench table``'s own flags (the tracking flags are cli.py's)."""
    parser.add_argument("--kind", choices=TABLE_KINDS, default="cross-modality",
                        help="cross-modality (default): the paper's benchmark table; k400, ssv2: the paper's "
                             "system-level tables with this harness's runs as extra rows")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    parser.add_argument("--out", metavar="FILE", help="write the table to FILE instead of stdout")
    parser.add_argument("--with-paper", action="store_true",
                        help="the paper's figure and the difference beside each cell it reports")
    add_selection_arguments(parser)
    parser.add_argument("--columns", metavar="NAMES",
                        help="cost columns to add after GFLOPs, comma-separated: " + ", ".join(COST_COLUMNS)
                             + " (cost: all of them; clips/s: both speeds)")
    parser.add_argument("--plot", metavar="KIND_OR_OUT",
                        help="also draw a figure as PNG and SVG: 'pareto' (top-1 against the cost --x, the front "
                             "drawn), 'figure1', or a path OUT for Figure 1 as OUT.png and OUT.svg")
    parser.add_argument("--x", choices=PARETO_COSTS, default="params",
                        help="the cost of a Pareto plot (default params)")
    parser.add_argument("--plot-out", metavar="OUT",
                        help="where --plot writes (default: pareto_<x> or figure1 in the working directory)")


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Where runs are read from and which of them count (``table`` and ``report``)."""
    parser.add_argument("--records", metavar="DIR",
                        help="read the result records under DIR (recursively) instead of the tracking store")
    parser.add_argument("--backbone", help="only runs on these backbones (comma-separated)")
    parser.add_argument("--dataset", help="only runs on these datasets (comma-separated)")
    parser.add_argument("--commit", help="only runs of commits starting with these prefixes (comma-separated)")
    parser.add_argument("--since", help="only runs started at or after this date or time (ISO, UTC)")
    parser.add_argument("--until", help="only runs started at or before this date (the whole day) or time")
    parser.add_argument("--all", dest="every_run", action="store_true",
                        help="every run, reruns and unfinished ones included (default: the latest finished "
                             "run per method, backbone, dataset and seed)")
    parser.add_argument("--all-experiments", action="store_true", help="read runs of every experiment")


def comma_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def table_command(args: argparse.Namespace) -> int:
    """``peft-bench table``: read, filter, build the report, print or write it, and draw a figure."""
    selection = selection_from(args)
    columns = cost_column_names(args.columns)  # a typo is an error before any reading
    runs = runs_for(args, selection)
    report = build_report(runs, args, columns)
    emit(report, args)
    if args.out is None and args.kind == "cross-modality":  # as before: the plain table also lands in results/
        plain = cross_modality_table(benchmark_runs(runs, args.every_run), every_run=True)
        print(f"(saved to {write_table(plain, Path(args.results_dir))})", file=sys.stderr)
    if args.plot:
        paths = draw_plot(runs, args)
        print("(figure written to " + ", ".join(map(str, paths)) + ")", file=sys.stderr)
    return 0


PARETO_COSTS = ("params", "gflops", "memory", "time")  # plot.PARETO_AXES, named here so --help needs no matplotlib


def draw_plot(runs: pd.DataFrame, args: argparse.Namespace) -> list[Path]:
    """--plot pareto (against --x), --plot figure1, or --plot OUT (Figure 1 at OUT, as before)."""
    from peft_bench.report.plot import save_figure1, save_pareto

    if args.plot == "pareto":
        return save_pareto(runs, args.x, args.plot_out or f"pareto_{args.x}", args.every_run)
    out = args.plot_out or args.plot
    return save_figure1(runs, out, args.every_run)


def runs_for(args: argparse.Namespace, selection: RunSelection) -> pd.DataFrame:
    """The runs of the command: from --records DIR, or from the tracking store."""
    experiment = None if args.all_experiments else args.experiment
    if getattr(args, "records", None):
        return selected_records(Path(args.records), experiment, selection)
    return selected_runs(store_uri(args.tracking_uri, Path(args.results_dir)), experiment, selection)


def selection_from(args: argparse.Namespace) -> RunSelection:
    for flag, text in (("--since", args.since), ("--until", args.until)):
        if text:
            date_bound(text, flag)  # a typo in a date is an error before any reading
    return RunSelection(
        backbones=comma_list(args.backbone), datasets=comma_list(args.dataset), commits=comma_list(args.commit),
        since=args.since, until=args.until, every_run=args.every_run,
    )


def build_report(runs: pd.DataFrame, args: argparse.Namespace, columns: list[str] | None = None) -> TableReport:
    if args.kind == "cross-modality":
        return cross_modality_report(runs, args.every_run, args.with_paper, columns)
    # A --dataset filter names the runs to show beside the paper's rows, stand-ins included.
    return system_report(runs, args.kind, args.every_run, any_dataset=bool(comma_list(args.dataset)))


def emit(report: TableReport, args: argparse.Namespace) -> None:
    """The table to --out or stdout; whatever of the footer the chosen output cannot carry, to stderr."""
    text = render(report, args.format)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"(table written to {out})", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if args.format == "csv":  # CSV carries the cells only
        lost = [f"warning: {w}" for w in report.warnings] + report.notes
    else:  # warnings written to a file would go unseen
        lost = [f"warning: {w}" for w in report.warnings] if args.out else []
    for line in lost:
        print(line, file=sys.stderr)
