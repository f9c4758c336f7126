"""What a table's cells say: numbers as text (top-1 as mean ± std, millions, GFLOPs, bytes, durations, rates), a
method's description columns, and the cost columns ``--columns`` adds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from peft_bench.errors import UserError
from peft_bench.report.aggregate import result_column_pairs, runs_in_description_order

DESCRIPTION_COLUMNS = ["group", "architecture", "models time", "params (M)", "GFLOPs"]
# Where a method's description comes from (run tag -> table column).
DESCRIPTION_TAGS = {"group": "group", "architecture": "architecture", "models time": "models_time"}


def describe_method(described: pd.DataFrame) -> list[str]:
    texts = [first_present(described[tag]) for tag in DESCRIPTION_TAGS.values()]
    params = described["trainable_params"].dropna()
    texts.append(format_millions(params.iloc[0]) if len(params) else "")
    gflops = described["gflops"].dropna()  # all test views together, as the paper's system tables count
    texts.append(format_gflops(gflops.iloc[0]) if len(gflops) else "")
    return texts


def first_present(values: pd.Series) -> str:
    present = values.dropna()
    return str(present.iloc[0]) if len(present) else ""


def format_top1(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return ""
    if n == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f} (n={n})"


def format_millions(count: float) -> str:
    """Two decimals, as the paper prints (7.42); two significant digits below 0.1M (toy models: 0.00078)."""
    millions = count / 1e6
    return f"{millions:.2f}" if millions >= 0.1 else f"{millions:.2g}"


def format_gflops(value: float) -> str:
    """One decimal for real models (455.3); three significant digits for toy ones (0.0612)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def is_missing(value: Any) -> bool:
    """Whether one table value is missing (NaN, None, pd.NA, NaT): ``pd.isna`` of a scalar, as a plain bool.
    pandas-stubs type that check as one no float passes, so on a float NaN it would read as dead code."""
    return bool(pd.isna(value))


def format_reported(value: float) -> str:
    return "" if is_missing(value) else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_difference(value: float) -> str:
    return "" if is_missing(value) else f"{value:+.1f}"


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


# -- cost columns (--columns) ---------------------------------------------------------------------------


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


def comma_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


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
    at = list(table.columns).index("GFLOPs") + 1
    return pd.concat([table.iloc[:, :at], costs, table.iloc[:, at:]], axis=1)
