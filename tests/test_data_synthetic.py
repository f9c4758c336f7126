"""The embedded synthetic suites: determinism, published layouts, time-reversed class pairs, caching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from peft_bench.data import synthetic
from peft_bench.data.annotations import read_kinetics, read_ssv2
from peft_bench.data.build import build_dataset
from peft_bench.data.decode import count_frames, read_frames
from peft_bench.data.synthetic import (
    MARKER_FILE,
    MOTION_TEMPLATES,
    appearance_class_names,
    ensure_synthetic,
    motion_class_names,
    random_still_images,
    render_motion_clip,
    render_shape,
)

SMALL = {"num_train": 10, "num_val": 10}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under folder (the marker without its timing), by relative path."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == MARKER_FILE:
                marker = json.loads(data)
                marker.pop("seconds")
                data = json.dumps(marker, sort_keys=True).encode()
            files[str(path.relative_to(folder))] = data
    return files


@pytest.fixture(scope="module")
def small_suites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {name: ensure_synthetic(name, root, seed=3, workers=2, **SMALL) for name in synthetic.SYNTHETIC_WRITERS}


# -------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["synthetic-motion", "synthetic-appearance"])
def test_same_seed_gives_byte_identical_files_in_one_or_several_processes(tmp_path, small_suites, name):
    again = ensure_synthetic(name, tmp_path, seed=3, workers=1, **SMALL)
    assert tree_bytes(again) == tree_bytes(small_suites[name])


def test_another_seed_gives_other_videos(tmp_path, small_suites):
    other = ensure_synthetic("synthetic-motion", tmp_path, seed=4, **SMALL)
    assert other.name != small_suites["synthetic-motion"].name
    first, second = tree_bytes(small_suites["synthetic-motion"]), tree_bytes(other)
    videos = [name for name in first if name.endswith(".webm")]
    assert sum(first[name] != second.get(name) for name in videos) > len(videos) // 2


# ------------------------------------------------------------------------------------------ layouts


def test_motion_suite_has_the_ssv2_layout_and_every_video_decodes(small_suites):
    folder = small_suites["synthetic-motion"]
    labels = folder / "labels.json"
    video_root = folder / synthetic.SSV2_VIDEO_FOLDER
    train = read_ssv2(labels, folder / "train.json", video_root)
    val = read_ssv2(labels, folder / "validation.json", video_root)
    assert train.class_names == motion_class_names() and len(train.class_names) == 10
    assert sorted(sample.label for sample in train.samples) == list(range(10))  # balanced: 10 videos, 10 classes
    for sample in train.samples + val.samples:
        assert sample.path.suffix == ".webm"
        assert count_frames(sample.path) == synthetic.NUM_FRAMES
    frames = read_frames(val.samples[0].path, [15, 0, 7])
    assert frames.shape == (3, 64, 64, 3)
    entry = json.loads((folder / "train.json").read_text())[0]
    assert set(entry) == {"id", "label", "template", "placeholders"} and "[something]" in entry["template"]


def test_appearance_suite_has_the_kinetics_layout_and_every_video_decodes(small_suites):
    folder = small_suites["synthetic-appearance"]
    train = read_kinetics(folder / "train.csv", folder / "train")
    val = read_kinetics(folder / "validate.csv", folder / "val", class_names=train.class_names)
    assert train.class_names == sorted(appearance_class_names()) and len(train.class_names) == 8
    for sample in train.samples + val.samples:
        assert sample.path.is_file() and sample.path.suffix == ".mp4"
        assert sample.path.parent.name == train.class_names[sample.label].replace(" ", "_")
    assert read_frames(train.samples[0].path, list(range(16))).shape == (16, 64, 64, 3)


# ------------------------------------------------------------------------------------ class design


def test_motion_classes_come_in_time_reversed_pairs():
    names = motion_class_names()
    assert len(names) == 10
    assert (names[0][-18:], names[1][-18:]) == ("from left to right", "from right to left")
    for forward in range(0, 10, 2):
        for seed in range(3):
            clip, shape = render_motion_clip(forward, np.random.default_rng([seed, forward]))
            reverse, reverse_shape = render_motion_clip(forward + 1, np.random.default_rng([seed, forward]))
            # Same random draws, opposite order: the set of frames is identical within a pair.
            assert np.array_equal(reverse, clip[::-1]) and shape == reverse_shape
            assert not np.array_equal(clip[0], clip[-1])  # something does change over time


def coverage_centroid(coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[: coverage.shape[1], : coverage.shape[2]]
    total = coverage.sum(axis=(1, 2))
    return (coverage * xs).sum(axis=(1, 2)) / total, (coverage * ys).sum(axis=(1, 2)) / total


@pytest.mark.parametrize("seed", range(5))
def test_forward_motions_go_the_way_their_class_says(seed):
    rng = np.random.default_rng(seed)
    x, _ = coverage_centroid(synthetic._forward_motion_coverage("horizontal", "circle", rng, 64))
    assert x[-1] - x[0] > 15  # left to right
    _, y = coverage_centroid(synthetic._forward_motion_coverage("vertical", "circle", rng, 64))
    assert y[0] - y[-1] > 15  # up: image y shrinks
    area = synthetic._forward_motion_coverage("size", "square", rng, 64).sum(axis=(1, 2))
    assert area[-1] > 3 * area[0]  # growing
    opacity = synthetic._forward_motion_coverage("fade", "square", rng, 64).max(axis=(1, 2))
    assert opacity[0] < 0.01 and opacity[-1] > 0.99  # appearing


def test_a_positive_angle_turns_shapes_clockwise_on_screen():
    bar = render_shape("bar", 64, 32.0, 32.0, 20.0, angle=np.array([0.0, 0.4]))
    _, y_right_end = coverage_centroid(bar[:, :, 40:])
    assert abs(y_right_end[0] - 31.5) < 0.5 and y_right_end[1] > 33  # the right end went down


def test_rotation_classes_use_shapes_without_rotational_symmetry():
    for seed in range(10):
        _, shape = render_motion_clip(6, np.random.default_rng(seed))
        assert shape in synthetic.ROTATION_SHAPES


def test_templates_are_ssv2_style():
    assert all("[something]" in template for template in MOTION_TEMPLATES)


# ------------------------------------------------------------------------------------ still images


def test_still_images_are_deterministic_balanced_shape_types():
    images, labels, names = random_still_images(40, 32, seed=1)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5] * 8 and names == list(synthetic.SHAPES)
    assert not set(names) & set(appearance_class_names())  # generic shape types, not the video classes
    again, labels_again, _ = random_still_images(40, 32, seed=1)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(random_still_images(40, 32, seed=2)[0], images)


# ----------------------------------------------------------------------------------------- caching


def test_an_existing_complete_suite_is_reused(small_suites):
    folder = small_suites["synthetic-motion"]
    marker_time = (folder / MARKER_FILE).stat().st_mtime_ns
    assert ensure_synthetic("synthetic-motion", folder.parent, seed=3, **SMALL) == folder
    assert (folder / MARKER_FILE).stat().st_mtime_ns == marker_time


def test_other_counts_go_to_another_folder(small_suites):
    folder = small_suites["synthetic-appearance"]
    other = synthetic.synthetic_folder_name("synthetic-appearance", 3, 10, 12)
    assert other != folder.name and "train10" in other and "val12" in other


def test_a_killed_generation_leaves_no_half_dataset(tmp_path, monkeypatch):
    def dies_halfway(folder, seed, num_train, num_val, run):
        (folder / "labels.json").write_text("{}")
        raise KeyboardInterrupt  # like a Ctrl-C in the middle of writing videos

    monkeypatch.setitem(synthetic.SYNTHETIC_WRITERS, "synthetic-motion", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic("synthetic-motion", tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_leftovers_of_dead_generations_are_cleaned_and_bad_markers_regenerated(tmp_path):
    name = synthetic.synthetic_folder_name("synthetic-appearance", 0, 8, 8)
    leftover = tmp_path / f".{name}.tmp-{dead_pid()}-deadbeef"
    leftover.mkdir()
    stale = tmp_path / name
    stale.mkdir()
    (stale / MARKER_FILE).write_text(json.dumps({"name": "synthetic-appearance", "seed": 0, "version": -1}))
    folder = ensure_synthetic("synthetic-appearance", tmp_path, num_train=8, num_val=8)
    assert folder == stale and not leftover.exists()
    assert json.loads((folder / MARKER_FILE).read_text())["version"] == synthetic.GENERATOR_VERSION
    assert len(list((folder / "train").rglob("*.mp4"))) == 8


def test_unknown_synthetic_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="synthetic-motion"):
        ensure_synthetic("synthetic-sound", tmp_path)


# ------------------------------------------------------------------------------ through build_dataset


@pytest.mark.parametrize("name,classes", [("synthetic-motion", 10), ("synthetic-appearance", 8)])
def test_build_dataset_generates_once_and_reads_back_like_real_data(tmp_path, name, classes):
    # Default sizes in the shared test cache (tests/conftest.py): generated once per machine, then reused.
    mean, std = (0.5,) * 3, (0.25,) * 3
    train = build_dataset(name, "train", root=None, input_size=32, mean=mean, std=std)
    val = build_dataset(name, "val", root=None, input_size=32, mean=mean, std=std)
    assert (len(train), len(val)) == (synthetic.DEFAULT_NUM_TRAIN, synthetic.DEFAULT_NUM_VAL)
    assert train.num_classes == val.num_classes == classes and train.class_names == val.class_names
    assert train[0]["video"].shape == (1, 8, 3, 32, 32)
    assert val[0]["video"].shape == (val.recipe.num_views, 8, 3, 32, 32)
    assert all(sample.path.is_file() for sample in train.samples)


def test_writing_uses_every_core_the_process_may_use(monkeypatch):
    monkeypatch.setattr(synthetic, "usable_cpu_count", lambda: 16)  # a big node: no cap below its cores
    assert synthetic._default_workers() == 16
