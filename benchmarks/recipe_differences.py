"""What each difference between the released ST-Adapter recipe and peft-bench's earlier one does to top-1.

    nice python -m benchmarks.recipe_differences            # writes results/recipe_differences.{csv,md}
    python -m benchmarks.recipe_differences --rows baseline,resize --seeds 0

On the embedded default (``tiny``, both synthetic datasets), each run starts from the released recipe (the
synthetic recipe's sizes with every released choice: frame indices, bicubic resizing without antialias, the
float short-side draw and the released crop offsets for the Kinetics stand-in, timm's RandAugment before the
crop for the SSv2 stand-in, warm-up from lr 0, no clipping) and changes ONE row of the issue's table back to
what peft-bench did before (``ROWS``); "peft-bench before" changes them all at once. A row that does not
apply to a dataset's recipe (RandAugment on the Kinetics stand-in, which has none) is not run there.

Precision: the released fp16 cannot be run here, because PyTorch's fp16 convolutions on CPU are slow (an ST-Adapter
training step on ``tiny`` took 42x its fp32 time on this machine), so the baseline trains in fp32, the CPU's
own precision, and the precision row measures bf16 (peft-bench's GPU default) against it.

Methods: ``adapter``, the best order-blind method on the motion set (the one the embedded default's >= 20-point
margin is measured against), and ``st_adapter``, the method the recipes come from. Seeds 0, 1, 2; the
difference to the baseline is taken per seed (the same seed draws the same clips and initial weights) and
given as mean +- sample std. Each finished run is appended to the CSV, so an interrupted benchmark continues
where it stopped, and several processes started on the same grid share it (each claims a run first). Top-1
does not depend on machine load; the minutes per run do.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from peft_bench.config import resolve_config
from peft_bench.data.specs import embedded_datasets
from peft_bench.train.runner import run

DATASETS = tuple(embedded_datasets())  # the K400 and SSv2 stand-ins: synthetic-appearance, synthetic-motion
METHODS = ("adapter", "st_adapter")
SEEDS = (0, 1, 2)
RELEASED_RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"


@dataclass(frozen=True)
class Row:
    name: str
    label: str  # as the table names the difference
    recipe: dict[str, dict[str, Any]]  # dataset -> recipe changes against the released recipe; runs only there
    train: dict[str, Any]


# The released recipe on each synthetic dataset: its own sizes, the released choices (the benchmark names them
# all, so it does not depend on which the synthetic recipe files adopt).
APPEARANCE, MOTION = DATASETS
RELEASED = {
    APPEARANCE: {
        "frame_indices": "released",
        "interpolation": "bicubic",
        "antialias": False,
        "short_side_draw": "float",
        "crop_offsets": "released",
        "randaugment": None,
    },
    MOTION: {
        "frame_indices": "released",
        "interpolation": "bicubic",
        "antialias": False,
        "randaugment": RELEASED_RANDAUGMENT,
        "randaugment_library": "timm",
        "randaugment_at": "before_crop",
    },
}
RELEASED_TRAIN = {"warmup_from_zero": True, "grad_clip_norm": 0.0, "precision": "fp32"}
EARLIER_RANDAUGMENT = {
    "randaugment": "rand-m7-n4",
    "randaugment_library": "torchvision",
    "randaugment_at": "after_crop",
}
EARLIER_RESIZE = {"interpolation": "bilinear", "antialias": True}
EARLIER = {
    APPEARANCE: {"frame_indices": "legacy", **EARLIER_RESIZE, "short_side_draw": "integer", "crop_offsets": "all"},
    # The synthetic-motion recipe had no RandAugment; the SSv2 recipe had torchvision's after the crop.
    MOTION: {"frame_indices": "legacy", **EARLIER_RESIZE, **EARLIER_RANDAUGMENT},
}


def both(changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict.fromkeys(DATASETS, changes)


ROWS = (
    Row("baseline", "released recipe", both({}), {}),
    Row("randaugment", "SSv2 RandAugment: torchvision (4, 7) after the crop", {MOTION: EARLIER_RANDAUGMENT}, {}),
    Row(
        "no_randaugment",
        "(extra) no RandAugment, as the synthetic-motion recipe had",
        {MOTION: {"randaugment": None}},
        {},
    ),
    Row("clip_span", "K400 clip span: 128-frame windows", {APPEARANCE: {"frame_indices": "legacy"}}, {}),
    Row("segment_indices", "SSv2 segment indices: the earlier formula", {MOTION: {"frame_indices": "legacy"}}, {}),
    Row("resize", "resize: bilinear with antialias", both(EARLIER_RESIZE), {}),
    Row("jitter", "short-side jitter: integer draw", {APPEARANCE: {"short_side_draw": "integer"}}, {}),
    Row(
        "crop_offsets",
        "(found here) random crop: every offset, the released off-by-one fixed",
        {APPEARANCE: {"crop_offsets": "all"}},
        {},
    ),
    Row("warmup", "warm-up: first step at lr / warm-up steps", both({}), {"warmup_from_zero": False}),
    Row("clipping", "gradient clipping at norm 1e3", both({}), {"grad_clip_norm": 1000.0}),
    Row("bf16", "precision: bf16 autocast (fp32 baseline; fp16 not runnable on CPU)", both({}), {"precision": "bf16"}),
    Row(
        "earlier",
        "peft-bench before: every row at once",
        EARLIER,
        {"warmup_from_zero": False, "grad_clip_norm": 1000.0},
    ),
)
ROW_NAMES = tuple(row.name for row in ROWS)


@dataclass
class Result:
    row: str
    dataset: str
    method: str
    seed: int
    top1: float
    top5: float
    minutes: float  # wall clock, load-dependent
    digest: str


def row_config(row: Row, dataset: str, method: str, seed: int, workdir: Path):
    return resolve_config(
        {
            "method": method,
            "dataset": dataset,
            "seed": seed,
            "recipe": {**RELEASED[dataset], **row.recipe[dataset]},
            "train": {**RELEASED_TRAIN, **row.train},
            "experiment": "peft-bench-recipe-differences",
            "tracking_uri": f"sqlite:///{workdir}/mlflow.db",
            "output_dir": str(workdir / "runs"),
        }
    )


def read_results(path: Path) -> list[Result]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            Result(
                r["row"],
                r["dataset"],
                r["method"],
                int(r["seed"]),
                float(r["top1"]),
                float(r["top5"]),
                float(r["minutes"]),
                r["digest"],
            )
            for r in csv.DictReader(handle)
        ]


def append_result(path: Path, result: Result) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Result)])
        if new:
            writer.writeheader()
        writer.writerow(asdict(result))


def claim(workdir: Path, key: tuple) -> bool:
    """Take (row, dataset, method, seed) for this process; False when a live process holds it. Several processes
    can then share one grid on one machine; a claim left by a process that died is taken over."""
    folder = workdir / "claims"
    folder.mkdir(exist_ok=True)
    path = folder / "__".join(map(str, key))
    if path.is_file():
        try:
            os.kill(int(path.read_text()), 0)
            return False  # alive
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
        except PermissionError:
            return False
    try:
        with open(path, "x") as handle:
            handle.write(str(os.getpid()))
        return True
    except FileExistsError:
        return False


def run_grid(
    rows: list[Row], datasets: list[str], methods: list[str], seeds: list[int], csv_path: Path, workdir: Path
) -> None:
    """Every missing (row, dataset, method, seed): seed by seed so that early seeds are complete first, and
    within a seed in the order of `rows`. Finished runs are read back from the CSV before each run, and each
    run is claimed first, so processes started on the same grid split it between them."""
    for seed in seeds:
        for row in rows:
            for dataset in datasets:
                if dataset not in row.recipe:
                    continue
                for method in methods:
                    key = (row.name, dataset, method, seed)
                    if key in {(r.row, r.dataset, r.method, r.seed) for r in read_results(csv_path)}:
                        continue
                    if not claim(workdir, key):
                        continue
                    cfg = row_config(row, dataset, method, seed, workdir)
                    start = time.perf_counter()
                    outcome = run(cfg, progress=False)
                    result = Result(
                        row.name,
                        dataset,
                        method,
                        seed,
                        outcome.top1,
                        outcome.top5,
                        (time.perf_counter() - start) / 60,
                        cfg.digest(),
                    )
                    append_result(csv_path, result)
                    print(
                        f"{row.name:16s} {dataset:21s} {method:11s} seed {seed}: top-1 {result.top1:5.1f} "
                        f"({result.minutes:.1f} min)",
                        flush=True,
                    )


def _summary(values: list[float], signed: bool = False) -> str:
    """mean ± sample std (n=...) of top-1 figures, or of differences (signed, n left to the column)."""
    if not values:
        return ""
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.1f} (n=1)"
    count = "" if signed else f" (n={len(values)})"
    return f"{statistics.mean(values):{sign}.1f} ± {statistics.stdev(values):.1f}{count}"


def markdown(results: list[Result], datasets: list[str], methods: list[str]) -> str:
    by_key = {(r.row, r.dataset, r.method, r.seed): r for r in results}
    columns = [(d, m) for d in datasets for m in methods]
    header = ["row", "difference"] + [f"{m} / {d}" for d, m in columns]
    lines = [
        "# What each difference from the released recipe costs on the embedded default",
        "",
        "Generated by `python -m benchmarks.recipe_differences`; do not edit by hand.",
        "",
        (
            "Top-1 (%) on `tiny` after the embedded default's training; the baseline row is the released recipe, "
            "each other row changes one setting back to peft-bench's earlier choice and gives the change in "
            "top-1 against the baseline of the same seed (mean ± sample std over seeds). Empty: the row does "
            "not apply to that dataset's recipe, or has not run yet."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * len(columns)) + " |",
    ]
    for row in ROWS:
        cells = []
        for dataset, method in columns:
            seeds = sorted(s for (name, d, m, s) in by_key if (name, d, m) == (row.name, dataset, method))
            if row.name == "baseline":
                cells.append(_summary([by_key[(row.name, dataset, method, s)].top1 for s in seeds]))
                continue
            deltas = [
                by_key[(row.name, dataset, method, s)].top1 - by_key[("baseline", dataset, method, s)].top1
                for s in seeds
                if ("baseline", dataset, method, s) in by_key
            ]
            cells.append(_summary(deltas, signed=True))
        if any(cells):
            lines.append(f"| {row.name} | {row.label} | " + " | ".join(cells) + " |")
    minutes = [r.minutes for r in results]
    lines += [
        "",
        "## Setup",
        "",
        (
            f"- {len(results)} runs, {sum(minutes):.0f} minutes of wall clock on a shared machine "
            "(load-dependent, provisional)."
        ),
        (
            "- Every run: the embedded default's training for its dataset (`peft-bench run` settings), fp32 on CPU, "
            "one torch thread per process (`--threads`, as `peft-bench run` gives each of its parallel runs); "
            "the recipe as `--set recipe.KEY=VALUE` and `--set train.KEY=VALUE` changes (see `ROWS` in the "
            "script)."
        ),
        (
            "- The released fp16 is not measured: fp16 convolutions on CPU are too slow here (see the module "
            "docstring); the bf16 row is the nearest CPU measurement of a lower precision."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, results: list[Result]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Result)])
        writer.writeheader()
        for result in sorted(results, key=lambda r: (ROW_NAMES.index(r.row), r.dataset, r.method, r.seed)):
            writer.writerow(asdict(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(ROW_NAMES),
        help=f"comma-separated, run in this order (default all): {', '.join(ROW_NAMES)}",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--out", default="results/recipe_differences", help="writes OUT.csv and OUT.md")
    parser.add_argument(
        "--workdir",
        default="runs/recipe_differences",
        help="the runs' checkpoints and mlflow store, and the running CSV",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for this process (default 1; 0: torch's default)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        # As `peft-bench run` gives each of its parallel runs: on a shared 2-core machine two processes of two
        # threads each took several times the CPU of one thread each (README, "Two commands").
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    names = args.rows.split(",")
    unknown = set(names) - set(ROW_NAMES)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROW_NAMES)}")
    if "baseline" not in names:
        names.insert(0, "baseline")  # every difference is against it
    rows = [ROWS[ROW_NAMES.index(name)] for name in names]  # run in the order given
    datasets, methods = args.datasets.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_grid(rows, datasets, methods, seeds, workdir / "results.csv", workdir)
    results = read_results(workdir / "results.csv")  # also what another process on other datasets added
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), results)
    shown_datasets = [d for d in DATASETS if any(r.dataset == d for r in results)]
    shown_methods = [m for m in METHODS if any(r.method == m for r in results)]
    shown_methods += sorted({r.method for r in results} - set(shown_methods))
    out.with_suffix(".md").write_text(markdown(results, shown_datasets, shown_methods))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
