"""Print line coverage per package from the data `pytest --cov` wrote: one row per folder of the installed package.

    python .ci/coverage_by_package.py [DATA_FILE]    # DATA_FILE: default .coverage, read with pyproject's settings

coverage.py reports per file or in total; a contributor asks how well each part is tested (data, backbones,
methods, ...). A package here is a folder: modules directly in peft_bench/ are `peft_bench`, methods/ and
benchmarks/ are named as they install (`peft_bench.methods`, `peft_bench.benchmarks`). Files no test imported
count, with every line missed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import coverage

REPO = Path(__file__).resolve().parent.parent
INSTALLED_AS = {"methods": "peft_bench.methods", "benchmarks": "peft_bench.benchmarks"}


def package_of(path: str) -> str:
    folder = Path(path).resolve().parent.relative_to(REPO)
    name = ".".join(folder.parts)
    top, _, rest = name.partition(".")
    return INSTALLED_AS[top] + (f".{rest}" if rest else "") if top in INSTALLED_AS else name


def per_package(data_file: str) -> dict[str, tuple[int, int]]:
    """{package: (statements, missed)} over every file under coverage's `source`."""
    cov = coverage.Coverage(data_file=data_file, config_file=str(REPO / "pyproject.toml"))
    cov.load()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "coverage.json"
        cov.json_report(outfile=str(out))
        files = json.loads(out.read_text())["files"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path, entry in files.items():
        summary = entry["summary"]
        row = totals[package_of(path)]
        row[0] += summary["num_statements"]
        row[1] += summary["missing_lines"]
    return {name: (statements, missed) for name, (statements, missed) in sorted(totals.items())}


def main(argv: list[str]) -> int:
    rows = per_package(argv[0] if argv else ".coverage")
    width = max(len(name) for name in [*rows, "package"])
    print(f"{'package':<{width}}  {'lines':>6}  {'missed':>6}  {'covered':>7}")
    total = (sum(statements for statements, _ in rows.values()), sum(missed for _, missed in rows.values()))
    for name, (statements, missed) in [*rows.items(), ("total", total)]:
        percent = 100.0 * (statements - missed) / statements if statements else 100.0
        print(f"{name:<{width}}  {statements:>6}  {missed:>6}  {percent:>6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
