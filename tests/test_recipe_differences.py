"""benchmarks/recipe_differences.py without training: each row changes exactly its own settings from the
released recipe, and the table gives paired per-seed differences."""

from __future__ import annotations

from pathlib import Path

from peft_bench.benchmarks import recipe_differences as bench


def changed_keys(cfg, baseline) -> set[str]:
    recipe = {f"recipe.{k}" for k in cfg.recipe if cfg.recipe[k] != baseline.recipe[k]}
    train = {f"train.{k}" for k, v in vars(cfg.train).items() if v != getattr(baseline.train, k)}
    return recipe | train


def test_each_row_changes_only_its_own_settings_from_the_released_recipe(tmp_path):
    workdir = Path(tmp_path)
    for dataset in bench.DATASETS:
        baseline = bench.row_config(bench.ROWS[0], dataset, "st_adapter", 0, workdir)
        assert baseline.recipe["frame_indices"] == "released" and baseline.recipe["interpolation"] == "bicubic"
        assert baseline.recipe["antialias"] is False and not baseline.train.grad_clip_norm
        assert baseline.train.warmup_from_zero and baseline.train.precision == "fp32"
        for row in bench.ROWS[1:]:
            if dataset not in row.recipe:
                continue
            cfg = bench.row_config(row, dataset, "st_adapter", 0, workdir)
            expected = {f"recipe.{k}" for k in row.recipe[dataset] if baseline.recipe[k] != row.recipe[dataset][k]}
            expected |= {f"train.{k}" for k in row.train}
            assert changed_keys(cfg, baseline) == expected, row.name
            assert expected and cfg.digest() != baseline.digest(), row.name
    motion = bench.row_config(bench.ROWS[0], "synthetic-motion", "adapter", 0, workdir)
    assert (
        motion.recipe["randaugment"] == "rand-m7-n4-mstd0.5-inc1" and motion.recipe["randaugment_at"] == "before_crop"
    )


def test_the_table_gives_per_seed_differences_against_the_baseline():
    def result(row, seed, top1):
        return bench.Result(row, "synthetic-motion", "adapter", seed, top1, 100.0, 1.0, "d")

    results = [
        result("baseline", 0, 50.0),
        result("baseline", 1, 60.0),
        result("resize", 0, 45.0),
        result("resize", 1, 57.0),
    ]
    text = bench.markdown(results, ["synthetic-motion"], ["adapter"])
    assert "| baseline | released recipe | 55.0 ± 7.1 (n=2) |" in text
    assert "| resize | resize: bilinear with antialias | -4.0 ± 1.4 |" in text  # -5 and -3, paired by seed
    assert "| warmup |" not in text  # rows without runs are left out


def test_processes_sharing_the_grid_claim_each_run_once_and_take_over_a_dead_ones(tmp_path):
    import subprocess
    import sys

    key = ("resize", "synthetic-motion", "adapter", 0)
    assert bench.claim(tmp_path, key)
    assert not bench.claim(tmp_path, key)  # held by a live process (this one)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    (tmp_path / "claims" / "__".join(map(str, key))).write_text(finished.stdout.strip())
    assert bench.claim(tmp_path, key)  # its process has ended
