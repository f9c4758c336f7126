"""Accuracy against cost from runs, one panel per (backbone, dataset): the paper's Figure 1 and Pareto plots.

Figure 1 is top-1 against trainable parameters. A Pareto plot (``peft-bench table --plot pareto --x
params|gflops|memory|time``) is top-1 against one cost, with the front of the measured methods drawn:
those no other method beats on both accuracy and cost. Filled markers are measured here (mean over
seeds, ± sample std as an error bar); hollow markers of the same shape and colour are the paper's
figures, drawn only in panels and for costs the paper reports (parameters: CLIP or IN-21K ViT-B/16 on K400
or SSv2; GFLOPs: its system tables' CLIP ViT rows). Methods published after the paper are drawn too,
labelled as later methods in the legend, with their authors' figures as larger, thick-edged hollow
markers where they report both a top-1 and a trainable-parameter count (against parameters only; CLIP
ViT-B/16 on K400 or SSv2). Every marker carries a ``gid`` ("measured:<method>", "paper:<method>" or
"authors:<method>"), the front "front", so that tests and other tools can find them in the figure or the SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from peft_bench.data.specs import paper_dataset
from peft_bench.errors import UserError
from peft_bench.method_api.registry import LATER_METHODS
from peft_bench.reference import (
    followups_table,
    ordered_methods,
    paper_method_order,
    paper_table,
    system_paper_table,
)
from peft_bench.report.aggregate import benchmark_runs, column_name
from peft_bench.report.paper import authors_column, paper_column

if TYPE_CHECKING:
    from matplotlib.typing import ColorType

MARKERS = "osD^v<>pP*Xh"
Style = tuple[str, "ColorType"]  # a method's (marker, colour), the same in every panel
PANEL_SIZE = (4.2, 3.4)  # inches
FORMATS = ("png", "svg")


@dataclass
class Point:
    method: str
    x: float  # the cost: trainable parameters (not millions), GFLOPs, GiB or seconds
    top1: float
    std: float = math.nan  # NaN for one seed, and for the paper


@dataclass(frozen=True)
class CostAxis:
    """A cost to plot accuracy against: the runs' column, its label, and the paper's figures for it."""

    metric: str
    label: str
    scale: float = 1.0  # the column's unit -> the axis's (bytes -> GiB)
    reported: Callable[[str, str], list[Point]] = lambda backbone, dataset: []


def measured_points(
    runs: pd.DataFrame, metric: str = "trainable_params", scale: float = 1.0
) -> dict[tuple[str, str], list[Point]]:
    """(backbone, dataset) -> one point per method: mean top-1 over its runs and their mean ``metric``."""
    panels: dict[tuple[str, str], list[Point]] = {}
    scored = runs.dropna(subset=["top1", metric])
    for (method, backbone, dataset), cell in scored.groupby(["method", "backbone", "dataset"], sort=True):
        point = Point(
            str(method),
            float(cell[metric].mean()) * scale,
            float(cell["top1"].mean()),
            float(cell["top1"].std()) if len(cell) > 1 else math.nan,
        )
        panels.setdefault((str(backbone), str(dataset)), []).append(point)
    return panels


def paper_points(backbone: str, dataset: str) -> list[Point]:
    """The paper's (params, top-1) per method for this panel; none where the paper has no such column."""
    column = paper_column(backbone, dataset)
    if column is None:
        return []
    paper = paper_table().dropna(subset=[column, "params_m"])
    return [
        Point(str(row.method), float(row.params_m) * 1e6, float(getattr(row, column)))
        for row in paper.itertuples(index=False)
    ]


def authors_points(backbone: str, dataset: str, later: set[str]) -> list[Point]:
    """The later methods' authors' (params, top-1) for this panel, where they report both."""
    column = authors_column(backbone, dataset)
    if column is None:
        return []
    reported = followups_table().dropna(subset=[column, "params_m"])
    return [
        Point(str(row.method), float(row.params_m) * 1e6, float(getattr(row, column)))
        for row in reported.itertuples(index=False)
        if row.method in later
    ]


# The paper's system-table rows that are one of this harness's methods on one of its backbones (CLIP
# pre-training): full fine-tuning is "w/o ST-Adapter" (its K400 top-1, 81.0, is the full_ft row's).
PAPER_SYSTEM_ROWS = {
    ("clip_vitb16", "full_ft"): "ViT-B w/o ST-Adapter",
    ("clip_vitb16", "st_adapter"): "ViT-B w/ ST-Adapter",
    ("clip_vitl14", "full_ft"): "ViT-L w/o ST-Adapter",
    ("clip_vitl14", "st_adapter"): "ViT-L w/ ST-Adapter",
}


def paper_gflops_points(backbone: str, dataset: str) -> list[Point]:
    """The paper's (GFLOPs of all views, top-1) of the methods its K400 / SSv2 system tables hold."""
    kind = paper_dataset(dataset)
    if kind is None:
        return []
    rows = system_paper_table(kind).set_index("model")
    return [
        Point(method, float(rows.loc[model, "gflops"]), float(rows.loc[model, "top1"]))
        for (on, method), model in PAPER_SYSTEM_ROWS.items()
        if on == backbone and model in rows.index and rows.loc[model, "pretrain"] == "CLIP"
    ]


PARETO_AXES = {
    "params": CostAxis("trainable_params", "trainable parameters", reported=paper_points),
    "gflops": CostAxis("gflops", "GFLOPs (all test views)", reported=paper_gflops_points),
    "memory": CostAxis("peak_memory_bytes", "peak memory (GiB)", scale=1 / 2**30),
    "time": CostAxis("train_time_s", "training time (s)"),
}


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats: none has a lower-or-equal cost and a higher top-1 (or equal top-1
    at a lower cost). Ordered by cost."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.x, -p.top1)):
        if not front or point.top1 > front[-1].top1:
            front.append(point)
    return front


def method_styles(methods: list[str], later: AbstractSet[str] = frozenset()) -> dict[str, Style]:
    """(marker, colour) per method, fixed across panels; paper order first so the styles are stable."""
    ordered = ordered_methods(sorted(set(methods)), paper_method_order(), later)
    colours = matplotlib.color_sequences["tab10"]  # the "tab10" colour map's colours
    return {method: (MARKERS[i % len(MARKERS)], colours[i % len(colours)]) for i, method in enumerate(ordered)}


def figure1(runs: pd.DataFrame, every_run: bool = False) -> Figure:
    """One panel per (backbone, dataset) that has runs; measured filled, the paper hollow."""
    return accuracy_figure(runs, PARETO_AXES["params"], every_run, front=False)


def pareto_figure(runs: pd.DataFrame, x: str, every_run: bool = False) -> Figure:
    """Top-1 against the cost ``x`` (a key of ``PARETO_AXES``), the measured front drawn in each panel."""
    if x not in PARETO_AXES:
        raise UserError(f"unknown cost {x!r} for a Pareto plot; expected one of {', '.join(PARETO_AXES)}")
    return accuracy_figure(runs, PARETO_AXES[x], every_run, front=True)


def accuracy_figure(runs: pd.DataFrame, cost: CostAxis, every_run: bool, front: bool) -> Figure:
    used = benchmark_runs(runs, every_run)
    panels = measured_points(used, cost.metric, cost.scale) if cost.metric in used else {}
    if not panels:
        raise UserError(f"no run with both a top-1 and a value for {cost.label}: nothing to plot")
    keys = sorted(panels)
    later = set(used.loc[used["group"] == LATER_METHODS, "method"].astype(str))
    paper = {key: cost.reported(*key) for key in keys}
    # The later methods' authors report parameters and top-1 together; other costs rarely on one footing.
    authors = {key: authors_points(*key, later) if cost.metric == "trainable_params" else [] for key in keys}
    styles = method_styles([p.method for points in [*panels.values(), *paper.values()] for p in points], later)
    figure, axes = plt.subplots(1, len(keys), figsize=(PANEL_SIZE[0] * len(keys), PANEL_SIZE[1]), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        draw_panel(axis, key, panels[key], paper[key], styles, cost.label, authors[key])
        if front:
            draw_front(axis, pareto_front(panels[key]))
    add_legend(figure, styles, any(paper.values()), front, later, any(authors.values()))
    figure.tight_layout(rect=(0, 0, 1, 0.86))
    return figure


def draw_hollow(axis, points: Sequence[Point], styles: dict[str, Style], source: str, **size: float) -> None:
    """Reported figures (the paper's, the later methods' authors'): hollow markers in each method's style."""
    for point in points:
        marker, colour = styles[point.method]
        axis.plot(
            [point.x],
            [point.top1],
            linestyle="none",
            marker=marker,
            markerfacecolor="none",
            markeredgecolor=colour,
            gid=f"{source}:{point.method}",
            **size,
        )


def draw_panel(
    axis,
    key: tuple[str, str],
    measured: list[Point],
    paper: list[Point],
    styles: dict[str, Style],
    xlabel: str = "trainable parameters",
    authors: Sequence[Point] = (),
) -> None:
    draw_hollow(axis, paper, styles, "paper", markersize=8)
    draw_hollow(axis, authors, styles, "authors", markersize=11, markeredgewidth=1.8)  # larger: reported elsewhere
    for point in measured:
        marker, colour = styles[point.method]
        if not math.isnan(point.std):
            axis.errorbar([point.x], [point.top1], yerr=[point.std], fmt="none", ecolor=colour, capsize=2)
        axis.plot(
            [point.x],
            [point.top1],
            linestyle="none",
            marker=marker,
            markersize=8,
            color=colour,
            markeredgecolor="black",
            markeredgewidth=0.5,
            gid=f"measured:{point.method}",
        )
    axis.set_xscale("log")
    axis.set_title(column_name(*key), fontsize=10)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("top-1 (%)")
    axis.grid(True, which="major", alpha=0.3)


def draw_front(axis, front: list[Point]) -> None:
    """The front as a staircase: from each front point the best top-1 holds until a cheaper-to-beat one."""
    axis.plot(
        [p.x for p in front],
        [p.top1 for p in front],
        drawstyle="steps-post",
        color="black",
        linewidth=1,
        linestyle="--",
        alpha=0.6,
        zorder=0,
        gid="front",
    )


def add_legend(
    figure: Figure,
    styles: dict[str, Style],
    has_paper: bool,
    has_front: bool = False,
    later: AbstractSet[str] = frozenset(),
    has_authors: bool = False,
) -> None:
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=marker,
            color=colour,
            label=f"{method} (later method)" if method in later else method,
        )
        for method, (marker, colour) in styles.items()
    ]
    handles.append(Line2D([], [], linestyle="none", marker="o", color="grey", label="measured here"))
    if has_paper:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="grey",
                label="paper (reported)",
            )
        )
    if has_authors:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgewidth=1.8,
                markeredgecolor="grey",
                label="later method's authors (reported)",
            )
        )
    if has_front:
        handles.append(Line2D([], [], linestyle="--", color="black", alpha=0.6, label="Pareto front (measured)"))
    figure.legend(handles=handles, loc="upper center", ncol=min(len(handles), 7), fontsize=8, frameon=False)


def figure_paths(out: str | Path) -> list[Path]:
    """``results/figure1`` or ``results/figure1.png`` -> both ``.png`` and ``.svg`` beside each other."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in {f".{fmt}" for fmt in FORMATS} else out
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS]


def save_figure1(runs: pd.DataFrame, out: str | Path, every_run: bool = False) -> list[Path]:
    """Draw Figure 1 from ``runs`` and write it as PNG and SVG; returns the paths written."""
    return save_figure(figure1(runs, every_run), out)


def save_pareto(runs: pd.DataFrame, x: str, out: str | Path, every_run: bool = False) -> list[Path]:
    """Draw the Pareto plot against ``x`` and write it as PNG and SVG; returns the paths written."""
    return save_figure(pareto_figure(runs, x, every_run), out)


def save_figure(figure: Figure, out: str | Path) -> list[Path]:
    paths = figure_paths(out)
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=150, bbox_inches="tight")  # the legend spans the panels
    finally:
        plt.close(figure)  # pyplot keeps every figure alive otherwise
    return paths
