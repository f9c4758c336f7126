"""Where a table's numbers came from: the footer that names commits, versions and hardware, and warns.

Works on the runs behind a table (rows as from ``peft_bench.report.table.load_runs``). A cell is one
(method, backbone, dataset); its runs should share one recipe (the config without seed and output
places: ``recipe_hash``) and one commit. When they do not, the mean ± std mixes different experiments,
and the footer says so, cell by cell.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

CELL_KEY = ["method", "backbone", "dataset"]
SHORT_COMMIT = 7  # as git prints it
SHORT_HASH = 8


@dataclass
class Provenance:
    commits: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    hardware: list[str] = field(default_factory=list)
    decoding: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_count: int = 0

    def lines(self) -> list[str]:
        """The footer's lines (warnings apart: they are rendered so that they stand out)."""
        if not self.run_count:
            return []
        return [
            f"runs: {self.run_count}",
            "commits: " + ("; ".join(self.commits) or "not recorded"),
            "versions: " + (" | ".join(self.versions) or "not recorded"),
            "hardware: " + ("; ".join(self.hardware) or "not recorded"),
            "decoding: " + ("; ".join(self.decoding) or "not recorded"),
        ]


def provenance(runs: pd.DataFrame) -> Provenance:
    """Commits, versions and hardware of ``runs``, and warnings about cells that mix configs or commits."""
    if runs.empty:
        return Provenance()
    return Provenance(
        commits=commit_lines(runs),
        versions=counted_values(runs["versions"]),
        hardware=counted_values(hardware_of(runs)),
        decoding=counted_values(decoding_of(runs)),
        warnings=dirty_tree_warnings(runs) + mixed_cell_warnings(runs),
        run_count=len(runs),
    )


def commit_lines(runs: pd.DataFrame) -> list[str]:
    labels = [commit_label(commit, dirty) for commit, dirty in zip(runs["git_commit"], runs["git_dirty"], strict=True)]
    return counted_values(pd.Series(labels, dtype=object))


def commit_label(commit: object, dirty: object) -> str:
    if not isinstance(commit, str) or not commit:
        return "not recorded"
    short = commit if commit == "unknown" else commit[:SHORT_COMMIT]
    return f"{short} (uncommitted changes)" if dirty == "yes" else short


def hardware_of(runs: pd.DataFrame) -> pd.Series:
    def describe(device: object, host: object) -> str | None:
        parts = [str(value) for value in (device, host) if isinstance(value, str) and value]
        return " on ".join(parts) or None

    return pd.Series(
        [describe(device, host) for device, host in zip(runs["device"], runs["host"], strict=True)], dtype=object
    )


def decoding_of(runs: pd.DataFrame) -> pd.Series:
    """The decoder and the FFmpeg under it, per run ("av 18.1.0 on FFmpeg 8.1.2 ..."); runs from before
    these tags were recorded have none."""

    def describe(decoder: object, ffmpeg: object) -> str | None:
        return f"{decoder} on {ffmpeg}" if isinstance(decoder, str) and decoder else None

    return pd.Series(
        [describe(d, f) for d, f in zip(runs["decoder_version"], runs["ffmpeg"], strict=True)], dtype=object
    )


def counted_values(values: pd.Series) -> list[str]:
    """Distinct values, most frequent first, each with its run count when there are several."""
    counts = Counter(value for value in values.dropna() if value != "")
    if len(counts) <= 1:
        return list(counts)
    return [f"{value} ({plural(count, 'run')})" for value, count in counts.most_common()]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def dirty_tree_warnings(runs: pd.DataFrame) -> list[str]:
    dirty = int((runs["git_dirty"] == "yes").sum())
    if not dirty:
        return []
    return [
        (
            f"{plural(dirty, 'run')} came from a checkout with uncommitted changes: "
            "its commit does not name the code that ran"
        )
    ]


def mixed_cell_warnings(runs: pd.DataFrame) -> list[str]:
    warnings = []
    for key, cell in runs.groupby(CELL_KEY, sort=True, dropna=True):
        name = f"{key[0]} on {key[1]} / {key[2]}"
        recipes = cell["recipe_hash"].dropna().unique()
        if len(recipes) > 1:
            which = seeds_by(cell, "recipe_hash", SHORT_HASH)
            warnings.append(f"{name} mixes runs of {len(recipes)} different configs ({which})")
        commits = cell["git_commit"].dropna().unique()
        if len(commits) > 1:
            which = seeds_by(cell, "git_commit", SHORT_COMMIT)
            warnings.append(f"{name} mixes runs of {len(commits)} commits ({which})")
    return warnings


def seeds_by(cell: pd.DataFrame, column: str, width: int) -> str:
    """'ab12cd34: seeds 0, 1; ef56ab78: seed 2': which seeds ran under which value."""
    parts = []
    for value, runs in cell.dropna(subset=[column]).groupby(column, sort=True):
        seeds = sorted({int(seed) for seed in runs["seed"].dropna()})
        label = "seed" if len(seeds) == 1 else "seeds"
        parts.append(f"{str(value)[:width]}: {label} {', '.join(map(str, seeds)) or '?'}")
    return "; ".join(parts)
