"""The cross-modality table from runs: reading the store, reducing reruns and seeds, rendering."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from peft_bench.table import (
    RUN_COLUMNS,
    cross_modality_table,
    latest_per_key,
    load_runs,
    paper_table,
    render,
    seed_statistics,
    write_table,
)
from peft_bench.tracking import RunTracker

PAPER_ORDER = ["full_ft", "linear_probe", "st_adapter"]


def runs(*rows: dict) -> pd.DataFrame:
    """A load_runs-shaped frame; rows later in the call started later."""
    defaults = {"status": "FINISHED", "group": "G", "architecture": "SA", "models_time": "no"}
    frame = pd.DataFrame([{**defaults, **row} for row in rows]).reindex(columns=RUN_COLUMNS)
    frame["run_id"] = [f"run{i}" for i in range(len(frame))]
    frame["start_time"] = pd.date_range("2025-01-01", periods=len(frame), freq="min", tz="UTC")
    return frame


def run(method: str, dataset: str = "k400", seed: int = 0, top1: float = 80.0, **extra) -> dict:
    return {
        "method": method,
        "backbone": "clip_vitb16",
        "dataset": dataset,
        "seed": seed,
        "top1": top1,
        "trainable_params": 7_420_000.0,
        **extra,
    }


# -- the store -------------------------------------------------------------------------------------


def log_run(store: str, experiment: str, tags: dict, metrics: dict) -> str:
    with RunTracker(store, experiment, f"{tags['method']}-{tags['seed']}") as tracker:
        tracker.set_tags(tags)
        tracker.log_config({"method": tags["method"]})
        tracker.log_environment(device="cpu")
        tracker.log_metrics(metrics)
        return tracker.run_id


def test_runs_come_back_through_load_runs_and_failures_are_left_out(store: str) -> None:
    tags = {
        "method": "st_adapter",
        "backbone": "clip_vitb16",
        "dataset": "k400",
        "seed": 0,
        "models_time": "yes",
        "pretrained": "/weights/clip.pt",
        "group": "ST-Adapter",
        "architecture": "SA",
    }
    finished = log_run(store, "bench", tags, {"top1": 82.1, "top5": 95.7, "trainable_params": 7.42e6})
    with pytest.raises(RuntimeError):
        with RunTracker(store, "bench", "broken") as tracker:
            tracker.set_tags({**tags, "seed": 1})
            failed = tracker.run_id
            raise RuntimeError("decoder crashed")
    log_run(store, "other", {**tags, "method": "linear_probe"}, {"top1": 70.0})

    loaded = load_runs(store, "bench")
    assert list(loaded.columns) == RUN_COLUMNS
    assert loaded["run_id"].tolist() == [finished]
    row = loaded.iloc[0]
    assert (row["experiment"], row["method"], row["backbone"], row["dataset"]) == (
        "bench",
        "st_adapter",
        "clip_vitb16",
        "k400",
    )
    assert row["seed"] == 0
    assert (row["models_time"], row["group"], row["architecture"]) == ("yes", "ST-Adapter", "SA")
    assert (row["top1"], row["top5"], row["trainable_params"]) == (82.1, 95.7, 7.42e6)
    assert pd.isna(row["gflops"])
    assert len(row["config_hash"]) == 12
    assert row["git_commit"]
    assert row["status"] == "FINISHED"

    everything = load_runs(store, finished_only=False)
    assert set(everything["experiment"]) == {"bench", "other"}
    statuses = dict(zip(everything["run_id"], everything["status"]))
    assert statuses[failed] == "FAILED"


def test_load_runs_of_an_experiment_not_created_yet_is_empty(store: str) -> None:
    loaded = load_runs(store, "not-run-yet")
    assert loaded.empty and list(loaded.columns) == RUN_COLUMNS


def test_load_runs_of_an_empty_store_gives_an_empty_table(store: str) -> None:
    loaded = load_runs(store)
    assert loaded.empty and list(loaded.columns) == RUN_COLUMNS
    table = cross_modality_table(loaded, method_order=PAPER_ORDER)
    assert table.empty
    assert "group" in render(table, "markdown")


# -- reducing runs ---------------------------------------------------------------------------------


def test_latest_per_key_keeps_the_latest_finished_rerun() -> None:
    frame = runs(
        run("st_adapter", top1=70.0),
        run("st_adapter", top1=75.0),
        run("st_adapter", top1=99.0, status="FAILED"),
        run("st_adapter", seed=1, top1=60.0),
    )
    latest = latest_per_key(frame)
    assert sorted(zip(latest["seed"], latest["top1"])) == [(0, 75.0), (1, 60.0)]


def test_three_seeds_give_mean_std_and_count() -> None:
    frame = runs(*(run("st_adapter", seed=s, top1=t) for s, t in [(0, 80.0), (1, 81.0), (2, 82.0)]))
    stats = seed_statistics(frame)
    assert stats[["n", "mean", "std"]].iloc[0].tolist() == [3, 81.0, 1.0]
    table = cross_modality_table(frame, method_order=PAPER_ORDER)
    assert table.loc["st_adapter", "clip_vitb16 / k400"] == "81.0 ± 1.0 (n=3)"


def test_one_seed_is_the_bare_value() -> None:
    table = cross_modality_table(runs(run("st_adapter", top1=82.04)), method_order=PAPER_ORDER)
    assert table.loc["st_adapter", "clip_vitb16 / k400"] == "82.0"


def test_rows_follow_the_paper_then_the_rest_alphabetically() -> None:
    frame = runs(run("zz_custom"), run("st_adapter"), run("aa_custom"), run("full_ft"), run("linear_probe"))
    table = cross_modality_table(frame, method_order=PAPER_ORDER)
    assert table.index.tolist() == ["full_ft", "linear_probe", "st_adapter", "aa_custom", "zz_custom"]


def test_default_order_is_the_paper_csv() -> None:
    frame = runs(run("st_adapter"), run("linear_probe"), run("full_ft_ta"), run("full_ft"))
    table = cross_modality_table(frame)
    assert table.index.tolist() == ["full_ft", "full_ft_ta", "linear_probe", "st_adapter"]


def test_missing_results_stay_empty_cells() -> None:
    frame = runs(
        run("st_adapter", "k400", top1=82.0),
        run("st_adapter", "ssv2", top1=66.0),
        run("linear_probe", "k400", top1=76.0),
    )
    table = cross_modality_table(frame, method_order=PAPER_ORDER)
    assert table.columns.tolist() == [
        "group",
        "architecture",
        "models time",
        "params (M)",
        "GFLOPs",
        "clip_vitb16 / k400",
        "clip_vitb16 / ssv2",
    ]
    assert table.loc["linear_probe", "clip_vitb16 / ssv2"] == ""
    csv_line = render(table, "csv").splitlines()[1]
    assert csv_line.startswith("linear_probe,") and csv_line.endswith("76.0,")
    assert "nan" not in render(table, "markdown").lower()


def test_description_and_params_come_from_the_k400_run() -> None:
    frame = runs(
        run("st_adapter", "ssv2", trainable_params=14_350_000.0, architecture="SA", models_time="yes"),
        run("st_adapter", "k400", trainable_params=7_420_000.0, group="ST-Adapter", models_time="yes"),
    )
    row = cross_modality_table(frame, method_order=PAPER_ORDER).loc["st_adapter"]
    assert row[["group", "architecture", "models time", "params (M)"]].tolist() == [
        "ST-Adapter",
        "SA",
        "yes",
        "7.42",
    ]


def test_runs_without_benchmark_tags_are_ignored() -> None:
    frame = runs(run("st_adapter"), {"top1": 50.0})
    assert cross_modality_table(frame, method_order=PAPER_ORDER).index.tolist() == ["st_adapter"]


# -- output ----------------------------------------------------------------------------------------


def test_markdown_and_csv_render_the_same_cells(tmp_path: Path) -> None:
    frame = runs(
        run("st_adapter", seed=0, top1=82.0, trainable_params=7_200_000.0),
        run("st_adapter", seed=1, top1=82.0, trainable_params=7_200_000.0),
        run("linear_probe", top1=76.6),
    )
    table = cross_modality_table(frame, method_order=PAPER_ORDER)

    markdown = render(table, "markdown")
    lines = markdown.splitlines()
    assert lines[0].startswith("| method") and "clip_vitb16 / k400" in lines[0]
    assert "| 7.20 " in markdown  # tabulate must not turn "7.20" into "7.2"
    assert "82.0 ± 0.0 (n=2)" in markdown

    written = write_table(table, tmp_path / "results")
    assert written == tmp_path / "results" / "cross_modality.csv"
    back = pd.read_csv(written, index_col="method", dtype=str, keep_default_na=False)
    assert back.equals(table.astype(str))
    assert written.read_text(encoding="utf-8") == render(table, "csv")

    with pytest.raises(ValueError, match="unknown table format"):
        render(table, "docx")


def test_paper_table_is_the_reference_copy() -> None:
    paper = paper_table()
    assert paper["method"].tolist()[0] == "full_ft" and paper["method"].tolist()[-1] == "st_adapter"
    st_adapter = paper.set_index("method").loc["st_adapter"]
    assert (st_adapter["params_m"], st_adapter["clip_k400"], st_adapter["clip_ssv2"]) == (7.2, 82.0, 66.3)
    assert pd.isna(paper.set_index("method").loc["partial_ft", "clip_k400"])  # lost in the seed, not 0
    assert len(paper) == 11



def test_random_init_runs_get_their_own_column_and_never_replace_pretrained_ones(store: str) -> None:
    tags = {"method": "st_adapter", "backbone": "clip_vitb16", "dataset": "k400", "seed": "0"}
    log_run(store, "e", {**tags, "pretrained": "/weights/ViT-B-16.safetensors"}, {"top1": 82.0})
    log_run(store, "e", {**tags, "pretrained": "none"}, {"top1": 0.3})  # a later smoke test
    table = cross_modality_table(latest_per_key(load_runs(store, "e")))
    assert table.loc["st_adapter", "clip_vitb16 / k400"] == "82.0"
    assert table.loc["st_adapter", "clip_vitb16 (random init) / k400"] == "0.3"


def test_gflops_column_comes_from_the_runs(store: str) -> None:
    tags = {"method": "st_adapter", "backbone": "clip_vitb16", "dataset": "k400", "seed": "0", "pretrained": "w"}
    log_run(store, "e", tags, {"top1": 82.0, "gflops": 455.33, "trainable_params": 7_417_744})
    table = cross_modality_table(load_runs(store, "e"))
    assert table.loc["st_adapter", "GFLOPs"] == "455.3" and table.loc["st_adapter", "params (M)"] == "7.42"


def test_small_parameter_counts_stay_readable(store: str) -> None:
    tags = {"method": "linear_probe", "backbone": "tiny", "dataset": "k400", "seed": "0", "pretrained": "w"}
    log_run(store, "e", tags, {"top1": 50.0, "trainable_params": 776, "gflops": 0.1299})
    table = cross_modality_table(load_runs(store, "e"))
    assert table.loc["linear_probe", "params (M)"] == "0.00078" and table.loc["linear_probe", "GFLOPs"] == "0.13"
