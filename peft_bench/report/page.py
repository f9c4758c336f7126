"""``peft-bench report --out site/``: a leaderboard page that opens from a file.

One HTML page (``index.html``, from ``templates/report.html``) with a small inline script and nothing
fetched from the network: the cross-modality table with one row per cell (method, backbone, dataset),
sortable by every column and filtered by backbone, dataset, group and commit; the Pareto plots
(``plot.py``) beside it as SVG files; every run's result record copied under ``records/`` and linked
from its row; and the table's provenance footer. The same runs give the same cells as ``peft-bench
table`` (``report/table.py`` computes both).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from peft_bench.report.aggregate import benchmark_runs
from peft_bench.report.cells import (
    COST_COLUMNS,
    first_present,
    format_gflops,
    format_millions,
    format_top1,
)
from peft_bench.report.gather import store_uri
from peft_bench.report.table import (
    PARETO_COSTS,
    add_selection_arguments,
    cross_modality_report,
    runs_for,
    selection_from,
)
from peft_bench.track.records import RECORD_NAME, SCHEMA_VERSION

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
PAGE_NAME = "index.html"
RECORDS_FOLDER = "records"
TITLE = "peft-bench leaderboard"
FILTERS = (
    ("backbone", "backbone", False),
    ("dataset", "dataset", False),
    ("group", "group", False),
    ("commit", "commits", True),
)  # (label, row attribute, several values per row)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass(frozen=True)
class Column:
    label: str
    numeric: bool
    cell: Callable[[pd.DataFrame], tuple[str, float | None]]  # the cell's runs -> (text, sort key)


def described(tag: str) -> Callable[[pd.DataFrame], tuple[str, None]]:
    return lambda runs: (first_present(runs[tag]), None)


def mean_over_seeds(metric: str) -> Callable[[pd.DataFrame], tuple[str, float | None]]:
    def cell(runs: pd.DataFrame) -> tuple[str, float | None]:
        values = runs[metric].dropna()
        if values.empty:
            return "", None
        return format_top1(values.mean(), values.std(), len(values)), float(values.mean())

    return cell


def mean_formatted(
    metric: str, format_value: Callable[[float], str]
) -> Callable[[pd.DataFrame], tuple[str, float | None]]:
    def cell(runs: pd.DataFrame) -> tuple[str, float | None]:
        values = runs[metric].dropna() if metric in runs else pd.Series(dtype=float)
        return (format_value(values.mean()), float(values.mean())) if len(values) else ("", None)

    return cell


COLUMNS = [
    Column("method", False, lambda runs: (str(runs["method"].iloc[0]), None)),
    Column("group", False, described("group")),
    Column("architecture", False, described("architecture")),
    Column("models time", False, described("models_time")),
    Column("backbone", False, lambda runs: (str(runs["backbone"].iloc[0]), None)),
    Column("dataset", False, lambda runs: (str(runs["dataset"].iloc[0]), None)),
    Column("top-1", True, mean_over_seeds("top1")),
    Column("top-5", True, mean_over_seeds("top5")),
    Column("params (M)", True, mean_formatted("trainable_params", format_millions)),
    Column("GFLOPs", True, mean_formatted("gflops", format_gflops)),
    *(Column(cost.label, True, mean_formatted(cost.metric, cost.format)) for cost in COST_COLUMNS.values()),
]


# -- the page ---------------------------------------------------------------------------------------


def write_site(
    runs: pd.DataFrame, out: Path, records: dict[str, Path], every_run: bool = False, source: str = ""
) -> Path:
    """The leaderboard of ``runs`` in ``out`` (index.html, the plots, records/); returns the page's path.

    ``records`` maps a run id to its result record file (runs without one get no link).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used = benchmark_runs(runs, every_run)
    report = cross_modality_report(runs, every_run)
    links = copy_records(used, records, out)
    rows = cell_rows(used, report.cells.index.tolist())
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    made = (
        f"generated {generated} from {source}; records follow the result schema version {SCHEMA_VERSION} "
        "(docs/result-schema.md)"
    )
    footer = [f'<li class="warning"><strong>warning</strong>: {html.escape(text)}</li>' for text in report.warnings] + [
        f"<li>{html.escape(text)}</li>" for text in [*report.notes, made]
    ]
    page = fill(
        TEMPLATE.read_text(encoding="utf-8"),
        {
            "title": html.escape(TITLE),
            "lead": html.escape(
                "Top-1 (%) measured with peft-bench: one row per cell of the cross-modality table (method, backbone, "
                "dataset), mean ± sample std over seeds (n = seeds), cost as the mean over the same runs. Click a "
                "column's name to sort; choose a backbone, dataset, group or commit to filter. The run links open "
                "each run's result record."
            ),
            "filters": filter_controls(rows),
            "table": leaderboard_table(rows, links),
            "plots": plot_images(runs, out, every_run),
            "paper_layout": report.cells.to_html(escape=True, na_rep=""),
            "footer": "\n".join(footer),
        },
    )
    page_path = out / PAGE_NAME
    page_path.write_text(page, encoding="utf-8")
    return page_path


def fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        marker = "{{" + name + "}}"
        if marker not in template:
            raise ValueError(f"the report template has no {marker}")
        template = template.replace(marker, value)
    return template


def cell_rows(used: pd.DataFrame, method_order: list[str]) -> list[pd.DataFrame]:
    """The runs of each cell, in the table's row order, then by backbone and dataset."""
    position = {method: index for index, method in enumerate(method_order)}
    cells = dict(iter(used.groupby(["method", "backbone", "dataset"], sort=False)))
    keys = sorted(
        cells, key=lambda key: (position.get(str(key[0]), len(position)), str(key[0]), str(key[1]), str(key[2]))
    )
    return [cells[key] for key in keys]


def short_commits(runs: pd.DataFrame) -> list[str]:
    return sorted({str(commit)[:7] for commit in runs["git_commit"].dropna() if str(commit)})


def filter_controls(rows: list[pd.DataFrame]) -> str:
    controls = []
    for label, attribute, several in FILTERS:
        values: set[str] = set()
        for runs in rows:
            text = row_attribute(runs, attribute)
            values.update(text.split(" ") if several else [text])
        options = ['<option value="">all</option>'] + [
            f'<option value="{html.escape(value)}">{html.escape(value)}</option>' for value in sorted(values - {""})
        ]
        multi = " data-multi" if several else ""
        controls.append(
            f'<label>{html.escape(label)} <select data-filter="{attribute}"{multi}>'
            + "".join(options)
            + "</select></label>"
        )
    return "\n".join(controls)


def row_attribute(runs: pd.DataFrame, attribute: str) -> str:
    if attribute == "commits":
        return " ".join(short_commits(runs))
    return first_present(runs[attribute])


def leaderboard_table(rows: list[pd.DataFrame], links: dict[str, str]) -> str:
    header = "".join(
        f'<th data-type="{"number" if column.numeric else "text"}"><button type="button">'
        f"{html.escape(column.label)}</button></th>"
        for column in COLUMNS
    )
    header += "<th>runs (records)</th><th>commit</th>"
    body = []
    for runs in rows:
        attributes = " ".join(
            f'data-{attribute}="{html.escape(row_attribute(runs, attribute))}"' for _, attribute, _ in FILTERS
        )
        cells = []
        for column in COLUMNS:
            text, key = column.cell(runs)
            sort = f' data-sort="{key!r}"' if key is not None else (' data-sort=""' if column.numeric else "")
            cells.append(f"<td{' class=num' if column.numeric else ''}{sort}>{html.escape(text)}</td>")
        cells.append(f'<td class="runs">{run_links(runs, links)}</td>')
        cells.append(f"<td>{html.escape(' '.join(short_commits(runs)))}</td>")
        body.append(f"<tr {attributes}>" + "".join(cells) + "</tr>")
    return (
        f'<table id="leaderboard">\n<thead><tr>{header}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def run_links(runs: pd.DataFrame, links: dict[str, str]) -> str:
    parts = []
    for run in runs.sort_values("seed", kind="stable").itertuples(index=False):
        label = f"s{run.seed}" if not pd.isna(run.seed) else "run"
        href = links.get(str(run.run_id))
        parts.append(
            f'<a href="{html.escape(href)}">{label}</a>' if href else f'<span title="no result record">{label}</span>'
        )
    return "".join(parts)


def plot_images(runs: pd.DataFrame, out: Path, every_run: bool) -> str:
    # matplotlib is slow to import: only when drawing
    from peft_bench.report.plot import PARETO_AXES, save_pareto

    parts = []
    for x in PARETO_COSTS:
        try:
            paths = save_pareto(runs, x, out / f"pareto_{x}", every_run)
        except ValueError as err:  # e.g. no run recorded memory: a note instead of an empty figure
            parts.append(f"<p>No plot against {html.escape(PARETO_AXES[x].label)}: {html.escape(str(err))}.</p>")
            continue
        svg = next(path for path in paths if path.suffix == ".svg")
        parts.append(
            f'<figure><img src="{svg.name}" alt="top-1 against {html.escape(PARETO_AXES[x].label)}, '
            f'one panel per backbone and dataset"><figcaption>top-1 against '
            f"{html.escape(PARETO_AXES[x].label)}; the dashed line is the front of the measured methods, "
            "hollow markers (where the paper reports this cost) are its figures</figcaption></figure>"
        )
    return "\n".join(parts)


# -- records beside the page ------------------------------------------------------------------------


def copy_records(used: pd.DataFrame, records: dict[str, Path], out: Path) -> dict[str, str]:
    """Copy each run's record to ``out/records/``; returns run id -> link relative to the page."""
    folder = out / RECORDS_FOLDER
    if folder.is_dir():
        shutil.rmtree(folder)  # records of runs no longer shown must not linger
    folder.mkdir(parents=True)
    links = {}
    for run_id in used["run_id"].astype(str):
        source = records.get(run_id)
        if source is None:
            continue
        record = json.loads(Path(source).read_text(encoding="utf-8"))
        name = f"{record['run']['name']}-{record['config_digest']}-{safe_id(run_id)}.json"
        shutil.copyfile(source, folder / name)
        links[run_id] = f"{RECORDS_FOLDER}/{name}"
    return links


def safe_id(run_id: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in run_id)[-12:]


def record_files(runs: pd.DataFrame, uri: str | None, scratch: Path) -> dict[str, Path]:
    """run id -> its result record: the file it was read from, or the mlflow artifact fetched into ``scratch``.

    Runs logged before records existed have none, and are left out.
    """
    if "record_path" in runs:
        return {str(run_id): Path(path) for run_id, path in zip(runs["run_id"], runs["record_path"], strict=True)}
    client = MlflowClient(uri)
    found = {}
    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):  # one bar per run
        for run_id in runs["run_id"].astype(str):
            try:
                found[run_id] = Path(client.download_artifacts(run_id, RECORD_NAME, str(scratch / run_id)))
            except (MlflowException, OSError) as err:
                log.debug("run %s has no result record (%s)", run_id, err)
    return found


# -- a picture of the page --------------------------------------------------------------------------


def find_chromium() -> str | None:
    """``PEFT_BENCH_CHROMIUM``, else the first Chromium or Chrome on PATH."""
    chosen = os.environ.get("PEFT_BENCH_CHROMIUM", "").strip()
    if chosen:
        return chosen if Path(chosen).is_file() else None
    return next((found for found in map(shutil.which, CHROMIUM_NAMES) if found), None)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1700) -> Path:
    """The page as headless Chromium shows it (``--screenshot``), at width x height pixels."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError(
            "no Chromium to take the screenshot with (chromium, chromium-browser or "
            "google-chrome on PATH, or PEFT_BENCH_CHROMIUM=/path/to/browser)"
        )
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={out}",
                Path(page).resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out


# -- the command ------------------------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", required=True, help="the folder to write the site to (index.html)")
    add_selection_arguments(parser)
    parser.add_argument("--screenshot", metavar="PNG", help="also save a picture of the page (needs Chromium)")


def report_command(args: argparse.Namespace) -> int:
    runs = runs_for(args, selection_from(args))
    uri = None if args.records else store_uri(args.tracking_uri, Path(args.results_dir))
    source = f"the records under {args.records}" if args.records else f"the tracking store {uri}"
    with tempfile.TemporaryDirectory() as scratch:
        records = record_files(runs, uri, Path(scratch))
        page = write_site(runs, Path(args.out), records, args.every_run, source)
    print(f"(leaderboard written to {page})", file=sys.stderr)
    if args.screenshot:
        print(f"(screenshot saved to {screenshot(page, Path(args.screenshot))})", file=sys.stderr)
    return 0
