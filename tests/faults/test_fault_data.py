"""Bad data met in a run: missing, unreadable and too-short videos are counted as metrics (train and val);
too many stop the run with one line naming the counts and the first files (no loader-worker traceback);
validation labels outside the training classes are an error naming the file and line; a subset of a
dataset's classes is accepted when asked for, and recorded with the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_CACHE
from faultkit import default_store_uri, only_run
from peft_bench.cli import main
from peft_bench.data.synthetic import write_video

LONG, SHORT = 24, 6  # frames; two frames at the k400 recipe's stride 16 span 17


def video(path: Path, frames: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)
    write_video(path, pixels, "libx264")
    return path.name


def list_dataset(root: Path, train: list[str], val: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")
    return root


def run_args(root: Path, *sets: str) -> list[str]:
    args = [
        "run",
        "--methods",
        "linear_probe",
        "--dataset",
        "list",
        "--data-root",
        str(root),
        "--pretrained",
        "none",
        "--frames",
        "2",
        "--no-progress",
        "--no-table",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=5",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.warmup_epochs=0",
    ]
    for value in sets:
        args += ["--set", value]
    return args


@pytest.mark.slow
def test_missing_unreadable_and_short_videos_are_counted_per_split(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    ok = [video(root / f"ok{i}.mp4", LONG, i) for i in range(12)]
    (root / "broken0.mp4").write_bytes(b"")
    (root / "broken1.mp4").write_bytes(b"not a video")
    video(root / "short0.mp4", SHORT, 100)
    video(root / "short1.mp4", SHORT, 101)
    train = [f"{name} {i % 2}" for i, name in enumerate(ok[:7])] + ["broken0.mp4 0", "gone.mp4 1", "short0.mp4 1"]
    val = [f"{name} {i % 2}" for i, name in enumerate(ok[7:])] + ["broken1.mp4 0", "short1.mp4 1"]
    list_dataset(root, train, val)

    assert main(run_args(root, "train.max_failure_fraction=0.5")) == 0
    metrics = only_run(default_store_uri(tmp_path)).data.metrics
    assert {k: metrics.get(k) for k in sorted(metrics) if k.endswith("_videos")} == {
        "train_missing_videos": 1,
        "train_short_videos": 1,
        "train_unreadable_videos": 1,
        "val_missing_videos": 0,
        "val_short_videos": 1,
        "val_unreadable_videos": 1,
    }


def test_too_many_broken_videos_stop_the_run_with_one_clear_line(tmp_path, capfd):
    root = tmp_path / "data"
    root.mkdir()
    ok = [video(root / f"ok{i}.mp4", LONG, i) for i in range(16)]
    for i in range(6):
        (root / f"broken{i}.mp4").write_bytes(b"")
    train = [f"{name} {i % 2}" for i, name in enumerate(ok[:12])] + [f"broken{i}.mp4 {i % 2}" for i in range(6)]
    list_dataset(root, train, [f"{name} {i % 2}" for i, name in enumerate(ok[12:])])

    # One loader worker: the stop is raised inside it, where the DataLoader wraps it in its own traceback.
    assert main(run_args(root, "train.max_failure_fraction=0.1", "train.batch_size=4", "train.num_workers=1")) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, err[-3000:]
    assert "unreadable" in failed[0] and "broken" in failed[0] and "max_failure_fraction" in failed[0]
    tag = only_run(default_store_uri(tmp_path)).data.tags["peft_bench.error"]
    assert "max_failure_fraction" in tag and "Traceback" not in tag  # the reason, whole


def test_validation_labels_outside_the_training_classes_are_refused(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    names = [video(root / f"ok{i}.mp4", LONG, i) for i in range(7)]
    train = [f"{name} {i % 2}" for i, name in enumerate(names[:5])]  # classes 0 and 1
    list_dataset(root, train, [f"{names[5]} 1", "# a comment", f"{names[6]} 5"])
    assert main(run_args(root)) == 1
    err = capsys.readouterr().err
    assert f"{root / 'val.txt'}, line 3" in err and "label 5" in err and "2 classes" in err, err


@pytest.mark.slow
def test_a_subset_of_the_classes_is_accepted_when_asked_for_and_recorded(tmp_path, capsys):
    (appearance,) = (TEST_CACHE / "data").glob("synthetic-appearance-*")  # Kinetics layout, 8 classes
    args = [
        "run",
        "--methods",
        "linear_probe",
        "--dataset",
        "k400",
        "--data-root",
        str(appearance),
        "--pretrained",
        "none",
        "--frames",
        "1",
        "--no-progress",
        "--no-table",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.val_subset=8",
        "--set",
        "train.warmup_epochs=0",
    ]
    assert main(args) == 1  # 8 classes where k400 has 400: refused, with the setting that accepts it
    err = capsys.readouterr().err
    assert "400 classes" in err and "dataset.classes" in err

    classes = tmp_path / "classes.txt"
    classes.write_text("red circle\ngreen cross\n")
    assert main([*args, "--set", f"dataset.classes={classes}"]) == 0
    run = only_run(default_store_uri(tmp_path))
    assert run.data.params["classes"] == '["red circle", "green cross"]'  # the names, not the file: reproducible
    assert run.data.metrics["trainable_params"] == 96 * 2 + 2  # a two-class head
    assert run.data.tags["peft_bench.classes"] == "2 of 8"
    assert run.data.tags["peft_bench.dataset"] == "k400[2 classes]"  # its own table column, never K400's

    assert main([*args, "--set", "dataset.classes=[red circle, purple blob]"]) == 1
    assert "purple blob" in capsys.readouterr().err
