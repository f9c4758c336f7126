"""The cross-modality table from runs: reading the store, reducing reruns and seeds, rendering."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import id_of_run_that_raised
from peft_bench.cli import main
from peft_bench.reference import followups_table, paper_table, reference_text
from peft_bench.report.aggregate import latest_per_key, seed_statistics
from peft_bench.report.gather import RUN_COLUMNS, RunSelection, load_runs, select_runs
from peft_bench.report.paper import paper_column
from peft_bench.report.table import (
    cross_modality_report,
    cross_modality_table,
    render,
    system_report,
    write_table,
)
from peft_bench.track.journal import JournaledTracker

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
    with JournaledTracker(
        Path("runs") / experiment / f"{tags['method']}-{tags['seed']}",
        store,
        experiment,
        f"{tags['method']}-{tags['seed']}",
    ) as tracker:
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
    tracker = JournaledTracker(Path("runs") / "broken", store, "bench", "broken")
    failed = id_of_run_that_raised(
        tracker, RuntimeError("decoder crashed"), before=lambda tracker: tracker.set_tags({**tags, "seed": 1})
    )
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
    statuses = dict(zip(everything["run_id"], everything["status"], strict=True))
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
    assert sorted(zip(latest["seed"], latest["top1"], strict=True)) == [(0, 75.0), (1, 60.0)]


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
    assert pd.isna(paper.set_index("method").loc["partial_ft", "clip_k400"])  # lost in transcription, not 0
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


# -- run selection ---------------------------------------------------------------------------------


def test_filters_pick_backbone_dataset_commit_and_dates() -> None:
    frame = runs(
        run("st_adapter", "k400", git_commit="abc1234ffff"),
        run("st_adapter", "ssv2", git_commit="def5678ffff"),
        run("linear_probe", "k400", backbone="tiny", git_commit="abc1234ffff"),
        run("linear_probe", "k400", backbone="clip_vitb16 (random init)", git_commit="abc1234ffff"),
    )  # start times: 2025-01-01 00:00, 00:01, 00:02, 00:03 UTC
    assert select_runs(frame, RunSelection(datasets=["ssv2"]))["run_id"].tolist() == ["run1"]
    # A backbone filter names the backbone, so its random-init column comes along.
    assert select_runs(frame, RunSelection(backbones=["clip_vitb16"]))["run_id"].tolist() == ["run0", "run1", "run3"]
    assert select_runs(frame, RunSelection(commits=["ABC1"]))["run_id"].tolist() == ["run0", "run2", "run3"]
    assert select_runs(frame, RunSelection(since="2025-01-01T00:02:00"))["run_id"].tolist() == ["run2", "run3"]
    assert len(select_runs(frame, RunSelection(until="2025-01-01"))) == 4  # a bare date is the whole day
    assert select_runs(frame, RunSelection(until="2024-12-31")).empty
    with pytest.raises(ValueError, match="--since 'soon' is not a date"):
        select_runs(frame, RunSelection(since="soon"))


def test_every_run_keeps_reruns_and_counts_them() -> None:
    frame = runs(run("st_adapter", top1=70.0), run("st_adapter", top1=80.0))
    assert cross_modality_table(frame).loc["st_adapter", "clip_vitb16 / k400"] == "80.0"
    every = cross_modality_table(frame, every_run=True).loc["st_adapter", "clip_vitb16 / k400"]
    assert every.startswith("75.0 ± ") and every.endswith("(n=2)")


# -- the paper beside the measurements -------------------------------------------------------------


def test_with_paper_puts_the_reported_figure_and_the_difference_beside_measured_cells() -> None:
    frame = runs(
        run("st_adapter", "k400", seed=0, top1=83.0),
        run("st_adapter", "k400", seed=1, top1=84.0),
        run("linear_probe", "ssv2", top1=20.0),
        run("st_adapter", "synthetic-motion", backbone="tiny", top1=55.0),
    )
    cells = cross_modality_report(frame, with_paper=True).cells
    paper = paper_table().set_index("method")

    k400 = "clip_vitb16 / k400"
    assert cells.columns.tolist()[cells.columns.get_loc(k400) :][:3] == [k400, f"{k400} paper", f"{k400} Δ"]
    assert cells.loc["st_adapter", f"{k400} paper"] == f"{paper.loc['st_adapter', 'clip_k400']:.1f}"
    assert cells.loc["st_adapter", f"{k400} Δ"] == f"{83.5 - paper.loc['st_adapter', 'clip_k400']:+.1f}"
    # No run: the measured cell and its difference stay empty; the paper's figure stays in its own column.
    assert cells.loc["linear_probe", k400] == "" and cells.loc["linear_probe", f"{k400} Δ"] == ""
    assert cells.loc["linear_probe", f"{k400} paper"] == f"{paper.loc['linear_probe', 'clip_k400']:.1f}"
    # Synthetic datasets have no paper figure, so no paper column either.
    assert "tiny / synthetic-motion paper" not in cells.columns
    assert cells.loc["st_adapter", "params (M) paper"] == f"{paper.loc['st_adapter', 'params_m']:.2f}"


def test_paper_columns_map_backbone_and_dataset() -> None:
    assert paper_column("clip_vitb16", "k400") == "clip_k400"
    assert paper_column("in21k_vitb16", "ssv2") == "in21k_ssv2"
    assert paper_column("clip_vitb16 (random init)", "k400") is None
    assert paper_column("tiny", "synthetic-appearance") is None


# -- the footer ------------------------------------------------------------------------------------


def test_footer_warns_when_a_cell_mixes_configs_or_commits() -> None:
    provenance_columns = {"git_dirty": "no", "device": "cpu (2 cores)", "host": "Linux x86_64", "versions": "torch 2.5"}
    frame = runs(
        run("st_adapter", seed=0, recipe_hash="aaaa1111", git_commit="c1", **provenance_columns),
        run("st_adapter", seed=1, recipe_hash="aaaa1111", git_commit="c1", **provenance_columns),
        run("st_adapter", seed=2, recipe_hash="bbbb2222", git_commit="c2", **provenance_columns),
        run("linear_probe", seed=0, recipe_hash="cccc3333", git_commit="c1", **provenance_columns),
        run("linear_probe", seed=1, recipe_hash="cccc3333", git_commit="c1", **provenance_columns),
    )
    report = cross_modality_report(frame)
    assert len(report.warnings) == 2  # linear_probe's seeds share a config and a commit: nothing to say
    configs, commits = report.warnings
    assert "st_adapter on clip_vitb16 / k400 mixes runs of 2 different configs" in configs
    assert "aaaa1111: seeds 0, 1" in configs and "bbbb2222: seed 2" in configs
    assert "mixes runs of 2 commits" in commits
    footer = "\n".join(report.notes)
    assert "commits: c1 (4 runs); c2 (1 run)" in footer
    assert "hardware: cpu (2 cores) on Linux x86_64" in footer and "versions: torch 2.5" in footer
    markdown = render(report, "markdown")
    assert "**warning**: st_adapter on clip_vitb16 / k400 mixes runs of 2 different configs" in markdown


def test_recipe_hash_ignores_seed_and_output_places_but_not_the_recipe(store: str) -> None:
    def log(seed: int, lr: float, output_dir: str) -> None:
        with JournaledTracker(Path("runs") / f"run-{seed}", store, "e", f"run-{seed}") as tracker:
            tracker.log_config({"method": "st_adapter", "seed": seed, "output_dir": output_dir, "train": {"lr": lr}})
            tracker.log_environment(device="cpu")

    log(0, 1e-3, "runs"), log(1, 1e-3, "elsewhere"), log(2, 5e-4, "runs")
    hashes = load_runs(store, "e").set_index("run_id").sort_values("start_time")["recipe_hash"].tolist()
    assert hashes[0] == hashes[1] != hashes[2]
    versions = load_runs(store, "e")["versions"].iloc[0]
    assert versions.startswith("python ") and "torch " in versions


# -- output formats --------------------------------------------------------------------------------


def two_group_report():
    frame = runs(
        run("full_ft", top1=81.0, group="Full fine-tuning"),
        run("st_adapter", seed=0, top1=82.0, group="ST-Adapter"),
        run("st_adapter", seed=1, top1=83.0, group="ST-Adapter"),
        run("st_adapter", "ssv2", top1=66.0, group="ST-Adapter"),
    )
    return cross_modality_report(frame)


def test_latex_is_booktabs_with_the_best_of_each_column_in_bold() -> None:
    latex = render(two_group_report(), "latex")
    lines = latex.splitlines()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\end{table}"):
        assert rule in lines or any(line.startswith(rule) for line in lines)
    full_ft = next(line for line in lines if line.startswith("full\\_ft &"))
    st_adapter = next(line for line in lines if line.startswith("st\\_adapter &"))
    assert "\\textbf{82.5 $\\pm$ 0.7 (n=2)}" in st_adapter and "\\textbf" not in full_ft.split("&")[-2]
    assert st_adapter.rstrip().endswith("\\textbf{66.0} \\\\")  # the only run of its column is its best
    # A rule between the paper's groups: header rule, then one between full_ft and st_adapter.
    body = lines[lines.index("\\toprule") : lines.index("\\bottomrule")]
    assert body.count("\\midrule") == 2
    assert body.index(st_adapter) - body.index(full_ft) == 2


def test_csv_carries_only_the_cells_and_reads_back() -> None:
    report = two_group_report()
    back = pd.read_csv(io.StringIO(render(report, "csv")), index_col="method", dtype=str, keep_default_na=False)
    assert back.equals(report.cells.astype(str))


def test_json_and_html_carry_the_footer() -> None:
    report = two_group_report()
    document = json.loads(render(report, "json"))
    assert document["rows"][1]["method"] == "st_adapter"
    assert document["rows"][1]["clip_vitb16 / ssv2"] == "66.0" and document["rows"][0]["clip_vitb16 / ssv2"] == ""
    assert document["notes"] == report.notes
    page = render(report, "html")
    assert "<table" in page and all(html.escape(note) in page for note in report.notes)


# -- the system-level tables -----------------------------------------------------------------------


def test_system_table_keeps_the_papers_rows_and_adds_marked_measured_ones() -> None:
    frame = runs(
        run("st_adapter", "k400", seed=0, top1=82.0, top5=95.0, num_frames=8, gflops=455.3),
        run("st_adapter", "k400", seed=1, top1=83.0, top5=96.0, num_frames=8, gflops=455.3),
        run("st_adapter", "ssv2", top1=66.0, top5=90.0, num_frames=8),  # another kind's dataset
    )
    report = system_report(frame, "k400")
    cells = report.cells
    published = pd.read_csv(io.StringIO(reference_text("paper_k400_comparison.csv")))
    assert cells.index.tolist()[: len(published)] == published["model"].tolist()
    assert (cells["source"].iloc[: len(published)] == "reported by the paper").all()
    measured = cells.iloc[len(published) :]
    assert measured.index.tolist() == ["clip_vitb16 + st_adapter (k400)"]
    row = measured.iloc[0]
    assert row["source"] == "measured here" and row["top-1"] == "82.5 ± 0.7 (n=2)" and row["GFLOPs"] == "455.3"
    assert row["frames × crops × clips"] == "8 × 1 × 3"  # frames from the run, views from the k400 recipe
    best_top1 = published["top1"].max()
    assert report.best_rows("top-1") == set(published.loc[published["top1"] == best_top1, "model"])


def test_system_table_without_runs_on_its_dataset_says_so() -> None:
    report = system_report(runs(run("st_adapter", "synthetic-appearance", backbone="tiny")), "ssv2")
    assert (report.cells["source"] == "reported by the paper").all()
    assert any("no run on ssv2 matched" in note for note in report.notes)


# -- the command -----------------------------------------------------------------------------------


def test_table_command_filters_writes_formats_and_refuses_bad_input(store: str, tmp_path: Path, capsys) -> None:
    tags = {"method": "st_adapter", "backbone": "clip_vitb16", "dataset": "k400", "pretrained": "w"}
    log_run(store, "peft-bench", {**tags, "seed": "0"}, {"top1": 82.0, "trainable_params": 7.42e6})
    log_run(store, "peft-bench", {**tags, "seed": "0"}, {"top1": 81.0, "trainable_params": 7.42e6})  # a rerun
    log_run(store, "peft-bench", {**tags, "dataset": "ssv2", "seed": "0"}, {"top1": 66.0, "trainable_params": 1e7})
    base = ["table", "--tracking-uri", store, "--results-dir", str(tmp_path / "results")]

    assert main([*base, "--dataset", "k400", "--format", "latex", "--out", str(tmp_path / "t.tex")]) == 0
    latex = (tmp_path / "t.tex").read_text(encoding="utf-8")
    assert "81.0" in latex and "82.0" not in latex  # the latest run of the key, and only k400
    assert "ssv2" not in latex.split("\\begin{table}")[1]

    capsys.readouterr()
    assert main([*base, "--all", "--dataset", "k400"]) == 0
    assert "81.5 ± 0.7 (n=2)" in capsys.readouterr().out

    assert main([*base, "--backbone", "in21k_vitb16"]) == 2
    assert "no run in" in capsys.readouterr().err
    assert main(["table", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert "no tracking store at" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
    assert main([*base, "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


# -- later methods -----------------------------------------------------------------------------------


def test_later_methods_come_after_the_papers_groups_with_their_authors_figures_labelled() -> None:
    from peft_bench.method_api.registry import LATER_METHODS

    later = {"group": LATER_METHODS}
    frame = runs(
        run("lora", "k400", top1=80.0, **later),
        run("aim", "k400", top1=83.0, **later),
        run("st_adapter", "k400", top1=82.0, group="ST-Adapter"),
        run("my_plugin", "k400", top1=70.0, group="Adapter"),
        run("full_ft", "k400", top1=81.0, group="Full fine-tuning"),
    )
    table = cross_modality_table(frame)
    assert table.index.tolist() == ["full_ft", "st_adapter", "my_plugin", "aim", "lora"]
    assert table.loc["aim", "group"] == LATER_METHODS

    cells = cross_modality_report(frame, with_paper=True).cells
    k400 = "clip_vitb16 / k400"
    assert cells.columns.tolist()[cells.columns.get_loc(k400) :][:4] == [
        k400,
        f"{k400} paper",
        f"{k400} authors",
        f"{k400} Δ",
    ]
    authors = followups_table().set_index("method")
    assert cells.loc["aim", f"{k400} paper"] == ""  # the ST-Adapter paper has no AIM row
    assert cells.loc["aim", f"{k400} authors"] == f"{authors.loc['aim', 'k400_top1']:.1f}"
    assert cells.loc["aim", f"{k400} Δ"] == f"{83.0 - authors.loc['aim', 'k400_top1']:+.1f}"
    assert cells.loc["aim", "params (M) authors"] == f"{authors.loc['aim', 'params_m']:.2f}"
    # The authors' figures go to later rows only: ST-Adapter's row keeps the paper's, not its README's re-run.
    assert cells.loc["st_adapter", f"{k400} authors"] == "" and cells.loc["lora", f"{k400} authors"] == ""
    notes = cross_modality_report(frame, with_paper=True).notes
    assert any(note.startswith("columns marked authors") for note in notes)


def test_the_authors_reference_cites_the_repositories_readmes() -> None:

    followups = followups_table()
    assert {"aim", "evl", "dist", "zeroi2v"} <= set(followups["method"])
    assert followups["source"].str.match(r"README of github\.com/[\w.-]+/[\w.-]+ at [0-9a-f]{7}$").all()
    assert not followups.to_csv().count("../shared")
