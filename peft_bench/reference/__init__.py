"""Figures reported by others, carried as package data (see README.md beside this file for their sources).

The installed command reads them from here through ``importlib.resources``, never from a checkout, so a
wheel, an editable install and a clone all read the same files. The repository's ``results/paper_*.csv``
are links to these files, for readers who look there. A reference file is a CSV in this folder; nothing
here is ever written by a run. The tables read them as frames from here (``paper_table``, ``followups_table``,
``system_paper_table``), and so does every place that lists methods in the paper's order (``ordered_methods``).
"""

from __future__ import annotations

import io
from importlib.resources import files

import pandas as pd


def reference_names() -> list[str]:
    """The reference CSV files the package carries."""
    return sorted(entry.name for entry in files(__name__).iterdir() if entry.name.endswith(".csv"))


def reference_text(name: str) -> str:
    """The text of the packaged reference file ``name`` (e.g. ``paper_cross_modality.csv``)."""
    resource = files(__name__) / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"reference file {name!r} is not in the installed peft_bench package (it carries: "
            f"{', '.join(reference_names()) or 'nothing'}); reinstall peft-bench"
        )
    return resource.read_text(encoding="utf-8")


# -- the reported tables as frames ------------------------------------------------------------------------------

PAPER_TABLE_FILE = "paper_cross_modality.csv"
FOLLOWUPS_FILE = "followups_clip_vitb16.csv"
# The paper's system-level comparisons, by the paper's column (DatasetSpec.paper_column) they are on.
SYSTEM_TABLE_FILES = {"k400": "paper_k400_comparison.csv", "ssv2": "paper_ssv2_comparison.csv"}
PAPER_SOURCE = "Pan et al., ST-Adapter, NeurIPS 2022"
FOLLOWUPS_SOURCE = "their repositories' READMEs, peft_bench/reference/followups_clip_vitb16.csv"


def read_reference_csv(name: str) -> pd.DataFrame:
    """A reported table that the package carries, as a frame."""
    return pd.read_csv(io.StringIO(reference_text(name)))


def paper_table() -> pd.DataFrame:
    """The ST-Adapter paper's cross-modality table, as the paper reports it (not measured here).

    Columns: group, method, architecture, temporal_modelling, params_m, clip_k400, clip_ssv2,
    in21k_k400, in21k_ssv2, note. Cells lost in transcription are NaN.
    """
    return read_reference_csv(PAPER_TABLE_FILE)


def followups_table() -> pd.DataFrame:
    """The later methods' figures on CLIP ViT-B/16 as their authors report them (not measured here).

    Columns: method, name, venue, k400_top1, k400_setting, ssv2_top1, ssv2_setting, params_m, gflops,
    source (the README and its commit), note.
    """
    return read_reference_csv(FOLLOWUPS_FILE)


def system_paper_table(kind: str) -> pd.DataFrame:
    """The paper's system-level comparison on K400 or SSv2 (``kind``), as reported (not measured here)."""
    if kind not in SYSTEM_TABLE_FILES:
        raise ValueError(
            f"unknown table kind {kind!r}; expected one of cross-modality, {', '.join(SYSTEM_TABLE_FILES)}"
        )
    return read_reference_csv(SYSTEM_TABLE_FILES[kind])


# -- the paper's order of methods -------------------------------------------------------------------------------


def paper_method_order() -> list[str]:
    return paper_table()["method"].tolist()


def rank_in(order: list[str], method: str) -> tuple[int, str]:
    return (order.index(method) if method in order else len(order), str(method))


def ordered_methods(methods: list[str], order: list[str] | None = None, later=frozenset()) -> list[str]:
    """The paper's rows in ``order`` (default: the paper's), then other methods alphabetically, then the ``later``
    ones after the paper's groups (in the authors' reference file's order, then alphabetically)."""
    order = paper_method_order() if order is None else order
    known = [method for method in order if method in methods]
    others = sorted(method for method in methods if method not in order and method not in later)
    reference = followups_table()["method"].tolist()
    late = sorted(
        (method for method in methods if method in later and method not in order),
        key=lambda method: rank_in(reference, method),
    )
    return known + others + late
