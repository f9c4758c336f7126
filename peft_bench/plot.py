"""The paper's Figure 1 from runs: top-1 against trainable parameters, one panel per (backbone, dataset).

Filled markers are measured here (mean over seeds, ± sample std as an error bar); hollow markers of the
same shape and colour are the paper's figures, drawn only in panels the paper reports (CLIP or IN-21K
ViT-B/16 on K400 or SSv2). Methods published after the paper are drawn too, labelled as later methods
in the legend, with their authors' figures as larger, thick-edged hollow markers where they report both a
top-1 and a trainable-parameter count (CLIP ViT-B/16 on K400 or SSv2). Every marker carries a ``gid``
("measured:<method>", "paper:<method>" or "authors:<method>") so that tests and other tools can find
them in the figure or the SVG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from peft_bench.registry import LATER_METHODS  # noqa: E402
from peft_bench.table import (  # noqa: E402
    authors_column,
    benchmark_runs,
    column_name,
    followups_table,
    ordered_methods,
    paper_column,
    paper_method_order,
    paper_table,
)

MARKERS = "osD^v<>pP*Xh"
PANEL_SIZE = (4.2, 3.4)  # inches
FORMATS = ("png", "svg")


@dataclass
class Point:
    method: str
    params: float  # trainable parameters (not millions)
    top1: float
    std: float = math.nan  # NaN for one seed, and for the paper


def measured_points(runs: pd.DataFrame) -> dict[tuple[str, str], list[Point]]:
    """(backbone, dataset) -> one point per method: mean top-1 over its runs and their trainable params."""
    panels: dict[tuple[str, str], list[Point]] = {}
    scored = runs.dropna(subset=["top1", "trainable_params"])
    for (method, backbone, dataset), cell in scored.groupby(["method", "backbone", "dataset"], sort=True):
        point = Point(str(method), float(cell["trainable_params"].mean()), float(cell["top1"].mean()),
                      float(cell["top1"].std()) if len(cell) > 1 else math.nan)
        panels.setdefault((str(backbone), str(dataset)), []).append(point)
    return panels


def paper_points(backbone: str, dataset: str) -> list[Point]:
    """The paper's (params, top-1) per method for this panel; none where the paper has no such column."""
    column = paper_column(backbone, dataset)
    if column is None:
        return []
    paper = paper_table().dropna(subset=[column, "params_m"])
    return [Point(str(row.method), float(row.params_m) * 1e6, float(getattr(row, column)))
            for row in paper.itertuples(index=False)]


def authors_points(backbone: str, dataset: str, later: set[str]) -> list[Point]:
    """The later methods' authors' (params, top-1) for this panel, where they report both."""
    column = authors_column(backbone, dataset)
    if column is None:
        return []
    reported = followups_table().dropna(subset=[column, "params_m"])
    return [Point(str(row.method), float(row.params_m) * 1e6, float(getattr(row, column)))
            for row in reported.itertuples(index=False) if row.method in later]


def method_styles(methods: list[str], later: set[str] = frozenset()) -> dict[str, tuple[str, str]]:
    """(marker, colour) per method, fixed across panels; paper order first so the styles are stable."""
    ordered = ordered_methods(sorted(set(methods)), paper_method_order(), later)
    colours = plt.get_cmap("tab10").colors
    return {method: (MARKERS[i % len(MARKERS)], colours[i % len(colours)]) for i, method in enumerate(ordered)}


def figure1(runs: pd.DataFrame, every_run: bool = False) -> Figure:
    """One panel per (backbone, dataset) that has runs; measured filled, the paper hollow."""
    used = benchmark_runs(runs, every_run)
    panels = measured_points(used)
    if not panels:
        raise ValueError("no run with both a top-1 and a trainable-parameter count: nothing to plot")
    keys = sorted(panels)
    later = set(used.loc[used["group"] == LATER_METHODS, "method"].astype(str))
    paper = {key: paper_points(*key) for key in keys}
    authors = {key: authors_points(*key, later) for key in keys}
    styles = method_styles([p.method for points in [*panels.values(), *paper.values()] for p in points], later)
    figure, axes = plt.subplots(1, len(keys), figsize=(PANEL_SIZE[0] * len(keys), PANEL_SIZE[1]), squeeze=False)
    for axis, key in zip(axes[0], keys):
        draw_panel(axis, key, panels[key], paper[key], styles, authors[key])
    add_legend(figure, styles, any(paper.values()), later, any(authors.values()))
    figure.tight_layout(rect=(0, 0, 1, 0.86))
    return figure


def draw_panel(axis, key: tuple[str, str], measured: list[Point], paper: list[Point],
               styles: dict[str, tuple[str, str]], authors: list[Point] = ()) -> None:
    for point in paper:
        marker, colour = styles[point.method]
        axis.plot([point.params], [point.top1], linestyle="none", marker=marker, markersize=8,
                  markerfacecolor="none", markeredgecolor=colour, gid=f"paper:{point.method}")
    for point in authors:
        marker, colour = styles[point.method]
        axis.plot([point.params], [point.top1], linestyle="none", marker=marker, markersize=11,
                  markerfacecolor="none", markeredgecolor=colour, markeredgewidth=1.8, gid=f"authors:{point.method}")
    for point in measured:
        marker, colour = styles[point.method]
        if not math.isnan(point.std):
            axis.errorbar([point.params], [point.top1], yerr=[point.std], fmt="none", ecolor=colour, capsize=2)
        axis.plot([point.params], [point.top1], linestyle="none", marker=marker, markersize=8,
                  color=colour, markeredgecolor="black", markeredgewidth=0.5, gid=f"measured:{point.method}")
    axis.set_xscale("log")
    axis.set_title(column_name(*key), fontsize=10)
    axis.set_xlabel("trainable parameters")
    axis.set_ylabel("top-1 (%)")
    axis.grid(True, which="major", alpha=0.3)


def add_legend(figure: Figure, styles: dict[str, tuple[str, str]], has_paper: bool, later: set[str] = frozenset(),
               has_authors: bool = False) -> None:
    handles = [Line2D([], [], linestyle="none", marker=marker, color=colour,
                      label=f"{method} (later method)" if method in later else method)
               for method, (marker, colour) in styles.items()]
    handles.append(Line2D([], [], linestyle="none", marker="o", color="grey", label="measured here"))
    if has_paper:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="grey", label="paper (reported)"))
    if has_authors:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgewidth=1.8,
                              markeredgecolor="grey", label="later method's authors (reported)"))
    figure.legend(handles=handles, loc="upper center", ncol=min(len(handles), 7), fontsize=8, frameon=False)


def figure_paths(out: str | Path) -> list[Path]:
    """``results/figure1`` or ``results/figure1.png`` -> both ``.png`` and ``.svg`` beside each other."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in {f".{fmt}" for fmt in FORMATS} else out
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS]


def save_figure1(runs: pd.DataFrame, out: str | Path, every_run: bool = False) -> list[Path]:
    """Draw Figure 1 from ``runs`` and write it as PNG and SVG; returns the paths written."""
    figure = figure1(runs, every_run)
    paths = figure_paths(out)
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=150, bbox_inches="tight")  # the legend spans the panels
    finally:
        plt.close(figure)  # pyplot keeps every figure alive otherwise
    return paths
