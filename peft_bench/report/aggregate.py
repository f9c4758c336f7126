"""Runs -> cells: the latest run per seed, mean ± std over seeds, the columns a table has, and the order of its
rows (the paper's, then later methods)."""

from __future__ import annotations

import pandas as pd

from peft_bench.data.specs import paper_dataset
from peft_bench.method_api.registry import get_method
from peft_bench.reference import ordered_methods
from peft_bench.report.gather import RUN_KEY
from peft_bench.track.states import RunStatus

# The paper counts a method's parameters with the K400 head (400 classes): its runs on the dataset of this
# paper column describe the method (params, GFLOPs, tags) where there are any.
DESCRIBED_BY = "k400"


def latest_per_key(df: pd.DataFrame) -> pd.DataFrame:
    """The latest FINISHED run per (method, backbone, dataset, seed); a rerun replaces the earlier one."""
    finished = df[df["status"] == RunStatus.FINISHED.value]
    by_start = finished.sort_values("start_time", kind="stable")
    latest = by_start.drop_duplicates(subset=RUN_KEY, keep="last")
    return latest.sort_values(RUN_KEY, kind="stable").reset_index(drop=True)


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


def mean_top1_frame(runs: pd.DataFrame, index: list[str], every_run: bool) -> pd.DataFrame:
    """Measured top-1 means, one column per table result column: the numbers behind "best" and Δ."""
    stats = seed_statistics(runs, every_run)
    if stats.empty:
        return pd.DataFrame(index=pd.Index(index, name="method"))
    stats["column"] = [column_name(b, d) for b, d in zip(stats["backbone"], stats["dataset"], strict=True)]
    return stats.pivot(index="method", columns="column", values="mean").reindex(index)


def registered_method_order(methods: list[str]) -> list[str]:
    """``ordered_methods`` for registered methods: the later ones known from the registry."""
    return ordered_methods(methods, later={m for m in methods if get_method(m).later})


def result_column_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = runs[["backbone", "dataset"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted((str(backbone), str(dataset)) for backbone, dataset in pairs)


def column_name(backbone: str, dataset: str) -> str:
    return f"{backbone} / {dataset}"


def split_column_name(column: str) -> tuple[str, str]:
    backbone, _, dataset = str(column).rpartition(" / ")
    return backbone, dataset


def runs_in_description_order(method_runs: pd.DataFrame, result_columns: list[tuple[str, str]]) -> pd.DataFrame:
    """K400 columns (``DESCRIBED_BY``) first, then the table's column order; within a column the latest run first."""
    position = {pair: index for index, pair in enumerate(result_columns)}

    def rank(row: pd.Series) -> tuple[int, int]:
        pair = (str(row["backbone"]), str(row["dataset"]))
        return (0 if paper_dataset(row["dataset"]) == DESCRIBED_BY else 1, position[pair])

    ranks = method_runs.apply(rank, axis=1, result_type="reduce")
    ordered = method_runs.assign(_rank=ranks).sort_values("start_time", ascending=False, kind="stable")
    return ordered.sort_values("_rank", kind="stable").drop(columns="_rank")
