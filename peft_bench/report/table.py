"""``peft-bench table``: the cross-modality and system-level tables, regenerated from this project's own runs.

Every measured number comes from a run in the tracking store or a result record (``gather``), reduced over
seeds (``aggregate``) and written as text (``cells``). The paper's tables (package data, ``peft_bench/reference/``)
are *reported by others*: they give the order of the rows, and their figures appear only in columns
(``--with-paper``) or rows (``--kind k400|ssv2``) labelled as the paper's, never in a measured cell (``paper``).
Methods published after the paper (group ``Later methods``) come after the paper's groups; their authors'
figures appear only in columns labelled as the authors'. Rendering is ``table_output``'s job, the footer
``provenance``'s, the figures ``plot``'s. This module puts them together, and is the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from peft_bench.method_api.registry import LATER_METHODS
from peft_bench.reference import (
    FOLLOWUPS_SOURCE,
    PAPER_SOURCE,
    SYSTEM_TABLE_FILES,
    ordered_methods,
)
from peft_bench.report.aggregate import (
    benchmark_runs,
    column_name,
    mean_top1_frame,
    result_column_pairs,
    runs_in_description_order,
    seed_statistics,
)
from peft_bench.report.cells import (
    COST_COLUMNS,
    DESCRIPTION_COLUMNS,
    comma_list,
    cost_column_names,
    describe_method,
    format_top1,
    with_cost_columns,
)
from peft_bench.report.gather import (
    RunSelection,
    date_bound,
    selected_records,
    selected_runs,
    store_uri,
)
from peft_bench.report.paper import (
    MEASURED,
    REPORTED,
    on_dataset_of,
    paper_dataset_label,
    system_runs,
    system_table,
    with_paper_columns,
)
from peft_bench.report.table_output import FORMATS, TableReport, render_report
from peft_bench.track.provenance import provenance

TABLE_FILE_NAME = "cross_modality.csv"
TABLE_KINDS = ("cross-modality", *SYSTEM_TABLE_FILES)  # the benchmark's table, then the paper's system tables


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
    later = set(runs.loc[runs["group"] == LATER_METHODS, "method"])
    methods = ordered_methods(runs["method"].unique().tolist(), method_order, later)
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
    stats = seed_statistics(runs, every_run=True)  # runs: already reduced
    cells = zip(
        stats["method"], stats["backbone"], stats["dataset"], stats["mean"], stats["std"], stats["n"], strict=True
    )
    for method, backbone, dataset, mean, std, n in cells:
        table.loc[method, column_name(backbone, dataset)] = format_top1(mean, std, n)
    return table


# -- reports: cells, numbers and footer -----------------------------------------------------------------


def cross_modality_report(
    runs: pd.DataFrame, every_run: bool = False, with_paper: bool = False, columns: list[str] | None = None
) -> TableReport:
    """The cross-modality table of ``runs`` with its provenance footer (and the paper beside it); ``columns``
    names cost columns to add (``COST_COLUMNS``)."""
    used = benchmark_runs(runs, every_run)
    table = cross_modality_table(used, every_run=True)
    means = mean_top1_frame(used, table.index.tolist(), every_run=True)
    notes = []
    if with_paper:
        table, matched = with_paper_columns(table, means)
        if matched:
            notes.append(
                f"columns marked paper: figures reported by {PAPER_SOURCE} "
                "(peft_bench/reference/paper_cross_modality.csv), not measured here; Δ = measured mean − paper"
            )
        authors = any(str(column).endswith(" authors") for column in table.columns)
        if authors:
            notes.append(
                f"columns marked authors: figures reported by each later method's authors "
                f"({FOLLOWUPS_SOURCE}), not measured here; for those rows Δ = measured mean − authors"
            )
        if not matched and not authors:
            notes.append(
                "--with-paper: no column has a paper figure (the paper reports clip_vitb16 and in21k_vitb16 "
                "on k400 and ssv2 only)"
            )
    notes.append(cell_legend(every_run))
    if columns:
        table = with_cost_columns(table, used, columns)
        notes.append(
            "cost columns: mean over the seeds of the cell the params come from; peak memory is the GPU's "
            "allocated peak, or the CPU's peak resident set"
        )
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
    return (
        f"top-1 cells: mean ± sample std {counted_as(every_run)}; "
        "params (M) and GFLOPs from the K400 run where there is one"
    )


def measured_row_legend(every_run: bool) -> str:
    return f"measured rows: top-1/top-5 as mean ± sample std {counted_as(every_run)}"


def system_report(runs: pd.DataFrame, kind: str, every_run: bool = False, any_dataset: bool = False) -> TableReport:
    """The paper's system-level table for ``kind`` with this harness's runs as extra, marked rows."""
    cells, numbers = system_table(runs, kind, every_run, any_dataset)
    used = system_runs(runs, kind, every_run, any_dataset)
    name = paper_dataset_label(kind)
    notes = [
        (
            f"rows '{REPORTED}': {PAPER_SOURCE} (peft_bench/reference/{SYSTEM_TABLE_FILES[kind]}); "
            f"rows '{MEASURED}': peft-bench runs; GFLOPs count all test views"
        )
    ]
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
        notes=[*notes, measured_row_legend(every_run), *found.lines()],
        warnings=found.warnings,
    )


# -- output ---------------------------------------------------------------------------------------------


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


# -- the command line -----------------------------------------------------------------------------------


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """``peft-bench table``'s own flags (the tracking flags are cli.py's)."""
    parser.add_argument(
        "--kind",
        choices=TABLE_KINDS,
        default="cross-modality",
        help="cross-modality (default): the paper's benchmark table; k400, ssv2: the paper's "
        "system-level tables with this harness's runs as extra rows",
    )
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    parser.add_argument("--out", metavar="FILE", help="write the table to FILE instead of stdout")
    parser.add_argument(
        "--with-paper", action="store_true", help="the paper's figure and the difference beside each cell it reports"
    )
    add_selection_arguments(parser)
    parser.add_argument(
        "--columns",
        metavar="NAMES",
        help="cost columns to add after GFLOPs, comma-separated: "
        + ", ".join(COST_COLUMNS)
        + " (cost: all of them; clips/s: both speeds)",
    )
    parser.add_argument(
        "--plot",
        metavar="KIND_OR_OUT",
        help="also draw a figure as PNG and SVG: 'pareto' (top-1 against the cost --x, the front "
        "drawn), 'figure1', or a path OUT for Figure 1 as OUT.png and OUT.svg",
    )
    parser.add_argument(
        "--x", choices=PARETO_COSTS, default="params", help="the cost of a Pareto plot (default params)"
    )
    parser.add_argument(
        "--plot-out",
        metavar="OUT",
        help="where --plot writes (default: pareto_<x> or figure1 in the working directory)",
    )


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Where runs are read from and which of them count (``table`` and ``report``)."""
    parser.add_argument(
        "--records", metavar="DIR", help="read the result records under DIR (recursively) instead of the tracking store"
    )
    parser.add_argument("--backbone", help="only runs on these backbones (comma-separated)")
    parser.add_argument("--dataset", help="only runs on these datasets (comma-separated)")
    parser.add_argument("--commit", help="only runs of commits starting with these prefixes (comma-separated)")
    parser.add_argument("--since", help="only runs started at or after this date or time (ISO, UTC)")
    parser.add_argument("--until", help="only runs started at or before this date (the whole day) or time")
    parser.add_argument(
        "--all",
        dest="every_run",
        action="store_true",
        help="every run, reruns and unfinished ones included (default: the latest finished "
        "run per method, backbone, dataset and seed)",
    )
    parser.add_argument("--all-experiments", action="store_true", help="read runs of every experiment")


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
    # matplotlib is slow to import: only when drawing
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
        backbones=comma_list(args.backbone),
        datasets=comma_list(args.dataset),
        commits=comma_list(args.commit),
        since=args.since,
        until=args.until,
        every_run=args.every_run,
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
