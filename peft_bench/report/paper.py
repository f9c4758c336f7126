"""The paper beside the measurements: the paper's and the later methods' authors' figures in columns labelled
as theirs (``--with-paper``), and the paper's system-level tables with this harness's runs as extra rows
(``--kind k400|ssv2``). The reported figures themselves are ``peft_bench.reference``'s."""

from __future__ import annotations

import pandas as pd
import yaml

from peft_bench.data.specs import (
    available_datasets,
    get_dataset,
    paper_dataset,
    paper_datasets,
    recipe_file,
)
from peft_bench.method_api.registry import LATER_METHODS
from peft_bench.reference import (
    followups_table,
    paper_method_order,
    paper_table,
    rank_in,
    system_paper_table,
)
from peft_bench.report.aggregate import benchmark_runs, split_column_name
from peft_bench.report.cells import (
    DESCRIPTION_COLUMNS,
    format_difference,
    format_gflops,
    format_reported,
    format_top1,
    is_missing,
)
from peft_bench.report.gather import RANDOM_INIT_SUFFIX

# The paper's cross-modality columns: (pre-training, dataset) of a ViT-B/16.
PAPER_BACKBONES = {"clip_vitb16": "clip", "in21k_vitb16": "in21k"}


def paper_column(backbone: str, dataset: str) -> str | None:
    """The paper's column for a harness (backbone, dataset), e.g. clip_k400; None where it reports none."""
    pretraining = PAPER_BACKBONES.get(str(backbone))  # "(random init)" columns map to nothing, as they should
    column = paper_dataset(dataset)
    if pretraining is None or column is None:
        return None
    return f"{pretraining}_{column}"


def authors_column(backbone: str, dataset: str) -> str | None:
    """The later methods' reference column for a harness (backbone, dataset): CLIP ViT-B/16 on K400/SSv2."""
    column = paper_dataset(dataset)
    if str(backbone) != "clip_vitb16" or column is None:
        return None
    return f"{column}_top1"


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
        compared.insert(at, "params (M) paper", params.map(format_params_m))
        if authors["params_m"].notna().any():
            theirs = authors["params_m"].reindex(table.index)
            compared.insert(at + 1, "params (M) authors", theirs.map(format_params_m))
    return compared, matched


def format_params_m(value: float) -> str:
    return "" if is_missing(value) else f"{value:.2f}"


def later_authors(table: pd.DataFrame) -> pd.DataFrame:
    """The authors' figures of the table's later-method rows (indexed by method; empty for other rows)."""
    followups = followups_table().set_index("method")
    later = [m for m in table.index if table.loc[m, "group"] == LATER_METHODS and m in followups.index]
    return followups.loc[later, ["k400_top1", "ssv2_top1", "params_m"]]


# -- the system-level tables (K400, SSv2) ---------------------------------------------------------------


SYSTEM_COLUMNS = ["group", "pre-training", "frames × crops × clips", "GFLOPs", "top-1", "top-5", "source"]
REPORTED = "reported by the paper"
MEASURED = "measured here"
MEASURED_GROUP = "peft-bench runs"
PRETRAINING_NAMES = {"clip": "CLIP", "in21k": "IN21K", "tiny": "synthetic stills (peft-bench tiny)"}


def system_table(
    runs: pd.DataFrame, kind: str, every_run: bool = False, any_dataset: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's rows, then one row per (method, backbone, dataset) measured here.

    Measured rows use the runs on the kind's dataset (``any_dataset``: every run given, e.g. a stand-in
    chosen with --dataset). Returns the text table (index ``model``) and the numbers behind top-1/top-5.
    """
    paper = system_paper_table(kind)
    reported = pd.DataFrame(
        {
            "model": paper["model"],
            "group": paper["group"],
            "pre-training": paper["pretrain"].fillna(""),
            "frames × crops × clips": [
                views_text(*views) for views in zip(paper["frames"], paper["crops"], paper["clips"], strict=True)
            ],
            "GFLOPs": paper["gflops"].map(format_reported_gflops),
            "top-1": paper["top1"].map(format_reported),
            "top-5": paper["top5"].map(format_reported),
            "source": REPORTED,
        }
    )
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
    """Which runs are on the dataset of the paper's column ``kind`` (under its name or an alias)."""
    return runs["dataset"].map(lambda dataset: paper_dataset(dataset) == kind).astype(bool)


def paper_dataset_label(kind: str) -> str:
    """The title of the dataset of the paper's column ``kind``: "Kinetics-400"."""
    return next(spec.label for spec in paper_datasets() if spec.paper_column == kind)


def measured_system_rows(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, numbers = [], []
    order = paper_method_order()
    cells = dict(iter(runs.groupby(["method", "backbone", "dataset"], sort=False)))
    keys = sorted(cells, key=lambda key: (str(key[1]), str(key[2]), rank_in(order, str(key[0]))))
    for method, backbone, dataset in keys:
        cell = cells[(method, backbone, dataset)]
        top1, top5 = cell["top1"].dropna(), cell["top5"].dropna()
        rows.append(
            {
                "model": f"{backbone} + {method} ({dataset})",
                "group": MEASURED_GROUP,
                "pre-training": pretraining_name(str(backbone)),
                "frames × crops × clips": measured_views(cell, str(dataset)),
                "GFLOPs": format_gflops(cell["gflops"].dropna().mean()) if cell["gflops"].notna().any() else "",
                "top-1": format_top1(top1.mean(), top1.std(), len(top1)),
                "top-5": format_top1(top5.mean(), top5.std(), len(top5)),
                "source": MEASURED,
            }
        )
        numbers.append(
            {"top-1": top1.mean() if len(top1) else float("nan"), "top-5": top5.mean() if len(top5) else float("nan")}
        )
    columns = ["model", *SYSTEM_COLUMNS]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(numbers, columns=["top-1", "top-5"], dtype=float)


def pretraining_name(backbone: str) -> str:
    if backbone.endswith(RANDOM_INIT_SUFFIX):
        return "none (random init)"
    prefix = backbone.split("_", 1)[0]
    return PRETRAINING_NAMES.get(prefix, backbone)


def format_reported_gflops(value: float) -> str:
    return "" if is_missing(value) else f"{value:g}"


def views_text(frames: float, crops: float, clips: float) -> str:
    if any(is_missing(value) for value in (frames, crops, clips)):
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
    """(crops, clips) of a registered dataset's packaged recipe; None for another dataset (or a recipe given as a
    file).

    Read as YAML rather than through the recipe loader, which would import torch for two numbers.
    """
    if dataset not in available_datasets():
        return None
    resource = recipe_file(get_dataset(dataset).recipe)
    if not resource.is_file():
        return None
    recipe = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    return int(recipe.get("test_crops", 1)), int(recipe.get("test_clips", 1))
