"""benchmarks/embedded_default.py: median and spread per case, targets only for the command as README gives it."""

from __future__ import annotations

from peft_bench.benchmarks.embedded_default import Measurement, summarise, write


def measurements(case: str, caches: str, walls: list[float], code: int = 0) -> list[Measurement]:
    return [Measurement(case, caches, i + 1, wall, wall * 1.8, 0.2, 0.4, code) for i, wall in enumerate(walls)]


def test_median_spread_and_targets(tmp_path):
    found = measurements("default", "cold", [310.0, 250.0, 270.0]) + measurements(
        "default", "warm", [170.0, 200.0, 190.0]
    )
    found += measurements("all", "cold", [500.0], code=1)
    rows = {(r["case"], r["caches"]): r for r in summarise(found)}
    cold = rows[("default", "cold")]
    assert (cold["median_s"], cold["min_s"], cold["max_s"], cold["target_s"]) == (270.0, 250.0, 310.0, 300)
    assert rows[("default", "warm")]["median_s"] == 190.0 and rows[("all", "cold")]["failed"] == 1
    write(found, tmp_path / "speed", "", reduced=False)
    table = (tmp_path / "speed.md").read_text()
    assert "| `peft-bench run` | cold | 3 | 4 min 30 s | 4 min 10 s - 5 min 10 s | 8 min 06 s |" in table
    assert "| under 5 min 00 s | yes |" in table and "| under 3 min 00 s | no |" in table
    assert "| `peft-bench run --methods all` | cold | 1 |" in table and "no (1 failed)" in table
    assert (tmp_path / "speed.csv").read_text().count("\n") == 8  # header and seven repeats
    assert all(row["target_s"] is None for row in summarise(found, reduced=True))  # --set: not README's command
