"""Figure 1 from runs: one marker per method and panel, the paper's figures hollow beside measured ones."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from peft_bench.cli import main
from peft_bench.reference import followups_table, paper_table
from peft_bench.report.gather import RUN_COLUMNS
from peft_bench.report.plot import figure1, figure_paths, save_figure1
from peft_bench.track.journal import JournaledTracker


def runs(*rows: dict) -> pd.DataFrame:
    frame = pd.DataFrame([{"status": "FINISHED", **row} for row in rows]).reindex(columns=RUN_COLUMNS)
    frame["run_id"] = [f"run{i}" for i in range(len(frame))]
    frame["start_time"] = pd.date_range("2025-01-01", periods=len(frame), freq="min", tz="UTC")
    return frame


def run(method: str, backbone: str, dataset: str, seed: int = 0, top1: float = 50.0, params: float = 1e6) -> dict:
    return {
        "method": method,
        "backbone": backbone,
        "dataset": dataset,
        "seed": seed,
        "top1": top1,
        "trainable_params": params,
    }


def markers(axis, kind: str) -> dict[str, Line2D]:
    """The axis' markers of one kind ("measured" or "paper"), by method."""
    found = {}
    for line in axis.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith(f"{kind}:"):
            assert gid not in {f"{kind}:{m}" for m in found}, f"two {kind} markers for one method: {gid}"
            found[gid.split(":", 1)[1]] = line
    return found


@pytest.fixture
def frame() -> pd.DataFrame:
    return runs(
        run("st_adapter", "clip_vitb16", "k400", seed=0, top1=82.0, params=7.42e6),
        run("st_adapter", "clip_vitb16", "k400", seed=1, top1=83.0, params=7.42e6),
        run("linear_probe", "clip_vitb16", "k400", top1=76.0, params=0.31e6),
        run("st_adapter", "tiny", "synthetic-motion", top1=55.0, params=3e5),
        run("linear_probe", "tiny", "synthetic-motion", top1=17.0, params=776),
        run("full_ft", "tiny", "synthetic-motion", top1=14.0, params=4.7e5),
    )


def test_one_marker_per_method_and_panel_with_the_paper_hollow_beside(frame: pd.DataFrame) -> None:
    figure = figure1(frame)
    axes = [axis for axis in figure.axes if axis.get_title()]
    assert [axis.get_title() for axis in axes] == ["clip_vitb16 / k400", "tiny / synthetic-motion"]
    k400, motion = axes

    assert set(markers(k400, "measured")) == {"st_adapter", "linear_probe"}
    assert set(markers(motion, "measured")) == {"st_adapter", "linear_probe", "full_ft"}
    st_adapter = markers(k400, "measured")["st_adapter"]
    assert st_adapter.get_xdata()[0] == 7.42e6 and st_adapter.get_ydata()[0] == 82.5  # mean over seeds
    assert k400.get_xscale() == "log"

    paper = paper_table().dropna(subset=["clip_k400", "params_m"]).set_index("method")
    hollow = markers(k400, "paper")
    assert set(hollow) == set(paper.index)
    assert all(line.get_markerfacecolor() == "none" for line in hollow.values())
    assert hollow["st_adapter"].get_ydata()[0] == paper.loc["st_adapter", "clip_k400"]
    assert markers(motion, "paper") == {}  # the paper reports nothing on synthetic data
    # One method, one look, in every panel.
    same_method_elsewhere = markers(motion, "measured")["st_adapter"]
    assert hollow["st_adapter"].get_marker() == st_adapter.get_marker() == same_method_elsewhere.get_marker()
    plt.close(figure)


def test_saving_writes_png_and_svg(frame: pd.DataFrame, tmp_path: Path) -> None:
    paths = save_figure1(frame, tmp_path / "figures" / "figure1.png")
    assert paths == [tmp_path / "figures" / "figure1.png", tmp_path / "figures" / "figure1.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text(encoding="utf-8")
    assert svg.count('id="measured:st_adapter"') == 2 and svg.count('id="measured:full_ft"') == 1


def test_figure_paths_and_nothing_to_plot() -> None:
    assert [p.name for p in figure_paths("out/fig")] == ["fig.png", "fig.svg"]
    assert [p.name for p in figure_paths("out/fig.svg")] == ["fig.png", "fig.svg"]
    with pytest.raises(ValueError, match="nothing to plot"):
        figure1(runs({"method": "x", "backbone": "b", "dataset": "d", "seed": 0, "top1": None}))


def test_the_table_command_draws_the_figure_from_the_store(store: str, tmp_path: Path) -> None:
    for method, top1, params in [("st_adapter", 55.0, 3e5), ("linear_probe", 17.0, 776)]:
        with JournaledTracker(Path("runs") / method, store, "peft-bench", method) as tracker:
            tracker.set_tags({"method": method, "backbone": "tiny", "dataset": "synthetic-motion", "seed": "0"})
            tracker.log_metrics({"top1": top1, "trainable_params": params})
    out = tmp_path / "figure1"
    assert main(["table", "--tracking-uri", store, "--results-dir", str(tmp_path), "--plot", str(out)]) == 0
    svg = out.with_suffix(".svg").read_text(encoding="utf-8")
    assert 'id="measured:st_adapter"' in svg and 'id="measured:linear_probe"' in svg
    assert out.with_suffix(".png").stat().st_size > 0


def test_later_methods_are_drawn_with_their_authors_figures_and_labelled() -> None:
    from peft_bench.method_api.registry import LATER_METHODS

    frame = runs(
        {**run("aim", "clip_vitb16", "k400", top1=80.0, params=1.1e7), "group": LATER_METHODS},
        {**run("st_adapter", "clip_vitb16", "k400", top1=82.0, params=7.42e6), "group": "ST-Adapter"},
    )
    figure = figure1(frame)
    (k400,) = [axis for axis in figure.axes if axis.get_title()]
    assert set(markers(k400, "measured")) == {"aim", "st_adapter"}
    authors = followups_table().set_index("method")
    point = markers(k400, "authors")["aim"]
    assert point.get_ydata()[0] == authors.loc["aim", "k400_top1"]
    assert point.get_xdata()[0] == authors.loc["aim", "params_m"] * 1e6
    assert "st_adapter" not in markers(k400, "authors")  # its reference is the paper's, drawn as such
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "aim (later method)" in labels and "later method's authors (reported)" in labels
    plt.close(figure)


# -- Pareto plots ------------------------------------------------------------------------------------


def test_the_pareto_front_keeps_only_methods_nothing_beats_on_both_accuracy_and_cost() -> None:
    from peft_bench.report.plot import Point, pareto_front

    points = [
        Point("a", 10, 50),
        Point("b", 5, 60),
        Point("c", 20, 70),
        Point("d", 20, 65),
        Point("e", 30, 70),
        Point("f", 1, 40),
    ]
    assert [p.method for p in pareto_front(points)] == ["f", "b", "c"]  # a, d: beaten; e: as good, dearer
    assert pareto_front([]) == []


def test_a_pareto_plot_draws_the_front_and_the_papers_gflops_hollow(frame: pd.DataFrame) -> None:
    from peft_bench.report.plot import pareto_figure

    with_costs = frame.assign(
        gflops=[455.0, 455.0, 419.0, 0.2, 0.13, 0.13], peak_memory_bytes=[2**31, 2**31, 2**30, 2**28, 2**27, 2**29]
    )
    figure = pareto_figure(with_costs, "gflops")
    k400, motion = [axis for axis in figure.axes if axis.get_title()]
    assert k400.get_xlabel() == "GFLOPs (all test views)"
    front = next(line for line in motion.get_lines() if line.get_gid() == "front")
    assert list(front.get_xdata()) == [0.13, 0.2] and list(front.get_ydata()) == [17.0, 55.0]  # full_ft beaten
    hollow = markers(k400, "paper")
    assert set(hollow) == {"full_ft", "st_adapter"}  # the paper's system-table rows with a harness method
    assert hollow["st_adapter"].get_xdata()[0] == 455 and hollow["st_adapter"].get_ydata()[0] == 82.0
    assert hollow["full_ft"].get_xdata()[0] == 419 and hollow["full_ft"].get_ydata()[0] == 81.0
    plt.close(figure)

    figure = pareto_figure(with_costs, "memory")
    k400 = next(axis for axis in figure.axes if axis.get_title() == "clip_vitb16 / k400")
    assert markers(k400, "measured")["st_adapter"].get_xdata()[0] == 2.0  # GiB
    assert markers(k400, "paper") == {}  # the paper reports no memory
    plt.close(figure)
    with pytest.raises(ValueError, match="unknown cost"):
        pareto_figure(with_costs, "energy")
    with pytest.raises(ValueError, match="nothing to plot"):
        pareto_figure(frame, "time")  # no run recorded its training time


def test_the_table_command_draws_a_pareto_plot(store: str, tmp_path: Path) -> None:
    for method, top1, memory in [("st_adapter", 55.0, 3e8), ("linear_probe", 17.0, 1e8)]:
        with JournaledTracker(Path("runs") / method, store, "peft-bench", method) as tracker:
            tracker.set_tags({"method": method, "backbone": "tiny", "dataset": "synthetic-motion", "seed": "0"})
            tracker.log_metrics({"top1": top1, "trainable_params": 1e4, "peak_memory_bytes": memory})
    out = tmp_path / "pareto"
    assert (
        main(
            [
                "table",
                "--tracking-uri",
                store,
                "--results-dir",
                str(tmp_path),
                "--plot",
                "pareto",
                "--x",
                "memory",
                "--plot-out",
                str(out),
            ]
        )
        == 0
    )
    svg = out.with_suffix(".svg").read_text(encoding="utf-8")
    assert 'id="front"' in svg and 'id="measured:st_adapter"' in svg
