"""``peft-bench table``: the cross-modality table, regenerated from this project's own mlflow runs.

Every number in ``cross_modality_table`` comes from a run in the tracking store. The paper's table
(``results/paper_cross_modality.csv``, read by ``paper_table``) is *reported by others*; it is used here
only for the order of the rows and must never be shown as a measurement. A side-by-side comparison with
it can be built from ``seed_statistics`` (numbers) and ``paper_table``, clearly labelled as the paper's.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from peft_bench.tracking import TAG_PREFIX, quiet_mlflow_logging

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
PAPER_TABLE_PATH = RESULTS_DIR / "paper_cross_modality.csv"
TABLE_FILE_NAME = "cross_modality.csv"

# A run is identified by these; reruns of the same key replace each other (latest_per_key).
RUN_KEY = ["method", "backbone", "dataset", "seed"]
# What a run is (its tags), and where it came from.
IDENTITY_TAGS = ["method", "backbone", "dataset", "seed", "models_time", "group", "architecture", "pretrained"]
PROVENANCE_TAGS = ["config_hash", "git_commit"]
TAG_COLUMNS = IDENTITY_TAGS + PROVENANCE_TAGS
METRIC_COLUMNS = ["top1", "top5", "trainable_params", "gflops"]
# One row per run: where it is, what it is (tags), what it measured, when and how it ended.
RUN_COLUMNS = ["run_id", "experiment", *IDENTITY_TAGS, *METRIC_COLUMNS, *PROVENANCE_TAGS, "start_time", "status"]
DESCRIPTION_COLUMNS = ["group", "architecture", "models time", "params (M)", "GFLOPs"]
# Where a method's description comes from (run tag -> table column).
DESCRIPTION_TAGS = {"group": "group", "architecture": "architecture", "models time": "models_time"}
# Dataset names that mean Kinetics-400, whose runs the paper's params column counts.
K400_NAMES = {"k400", "kinetics400", "kinetics-400", "kinetics_400"}

TableFormat = Literal["markdown", "csv"]


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
    frame.loc[random_init, "backbone"] = frame.loc[random_init, "backbone"] + " (random init)"
    for name in METRIC_COLUMNS:
        frame[name] = pd.to_numeric(column_or_missing(raw, f"metrics.{name}"), errors="coerce").astype(
            float
        )
    frame["start_time"] = raw["start_time"]
    frame["status"] = raw["status"]
    return frame[RUN_COLUMNS].reset_index(drop=True)


def column_or_missing(raw: pd.DataFrame, column: str) -> pd.Series:
    # search_runs only has a column for a tag or metric that at least one run logged.
    if column in raw.columns:
        return raw[column]
    return pd.Series([None] * len(raw), index=raw.index, dtype=object)


def empty_runs_frame() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype=object) for name in RUN_COLUMNS})
    frame["seed"] = frame["seed"].astype("Int64")
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


def seed_statistics(df: pd.DataFrame) -> pd.DataFrame:
    """Top-1 over seeds per (method, backbone, dataset): columns ``n``, ``mean``, ``std``.

    Uses the latest run per seed. ``n`` counts runs with a top-1; ``std`` is the sample standard
    deviation (ddof=1), NaN for one seed. Runs lacking a method, backbone or dataset tag are not
    peft-bench runs and are left out.
    """
    runs = benchmark_runs(df)
    grouped = runs.groupby(["method", "backbone", "dataset"], sort=True)["top1"]
    stats = grouped.agg(n="count", mean="mean", std="std").reset_index()
    stats["n"] = stats["n"].astype(int)
    return stats


def benchmark_runs(df: pd.DataFrame) -> pd.DataFrame:
    return latest_per_key(df).dropna(subset=["method", "backbone", "dataset"]).reset_index(drop=True)


def cross_modality_table(df: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """The cross-modality table of the runs in ``df`` (as from ``load_runs``), all cells text.

    Rows: the methods that have runs, in ``method_order`` (default: the paper's row order), then any
    others alphabetically. Columns: ``group``, ``architecture``, ``models time`` (from the runs' tags),
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
    runs = benchmark_runs(df)
    order = paper_method_order() if method_order is None else method_order
    methods = ordered_methods(runs["method"].unique().tolist(), order)
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
    for cell in seed_statistics(runs).itertuples(index=False):
        table.loc[cell.method, column_name(cell.backbone, cell.dataset)] = format_top1(
            cell.mean, cell.std, cell.n
        )
    return table


def paper_method_order() -> list[str]:
    return paper_table()["method"].tolist()


def ordered_methods(methods: list[str], order: list[str]) -> list[str]:
    known = [method for method in order if method in methods]
    others = sorted(method for method in methods if method not in order)
    return known + others


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


# -- output ----------------------------------------------------------------------------------------


def render(table: pd.DataFrame, fmt: TableFormat = "markdown") -> str:
    if fmt == "markdown":
        # disable_numparse: tabulate would otherwise reformat "82.0" as "82" and "7.20" as "7.2".
        return table.to_markdown(disable_numparse=True)
    if fmt == "csv":
        return table.to_csv()
    raise ValueError(f"unknown table format {fmt!r}; expected 'markdown' or 'csv'")


def write_table(table: pd.DataFrame, results_dir: Path) -> Path:
    """Write ``<results_dir>/cross_modality.csv`` and return its path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / TABLE_FILE_NAME
    path.write_text(render(table, "csv"), encoding="utf-8")
    return path


def paper_table() -> pd.DataFrame:
    """The ST-Adapter paper's cross-modality table, as the paper reports it (not measured here).

    Columns: group, method, architecture, temporal_modelling, params_m, clip_k400, clip_ssv2,
    in21k_k400, in21k_ssv2, note. Cells the seed document lost are NaN.
    """
    if not PAPER_TABLE_PATH.is_file():
        raise FileNotFoundError(
            f"{PAPER_TABLE_PATH} not found: the paper's table ships with a peft-bench checkout"
        )
    return pd.read_csv(PAPER_TABLE_PATH)
