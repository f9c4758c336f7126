"""Figures reported by others, carried as package data (see README.md beside this file for their sources).

The installed command reads them from here through ``importlib.resources``, never from a checkout, so a
wheel, an editable install and a clone all read the same files. The repository's ``results/paper_*.csv``
are links to these files, for readers who look there. A reference file is a CSV in this folder; nothing
here is ever written by a run.
"""

from __future__ import annotations

from importlib.resources import files


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
