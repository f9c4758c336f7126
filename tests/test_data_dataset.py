"""VideoClipDataset and build_dataset: item layout, reproducibility, broken and missing videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from peft_bench.data import available_datasets, get_dataset
from peft_bench.data.annotations import Annotations, VideoSample
from peft_bench.data.build import build_dataset
from peft_bench.data.dataset import DataError, VideoClipDataset
from peft_bench.data.sampling import dense_indices, segment_indices
from peft_bench.data.synthetic import write_video
from peft_bench.data.transforms import Recipe

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
LONG, SHORT = 40, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def index_frames(num_frames: int, size: int = 64) -> np.ndarray:
    """Frame i shows i in binary as 8 vertical bars (white = 1)."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for index in range(num_frames):
        for bit in range(8):
            if index >> bit & 1:
                frames[index, :, bit * 8 : bit * 8 + 8] = 255
    return frames


def view_indices(view: torch.Tensor) -> list[int]:
    """Frame indices shown by a (T, 3, 64, 64) view of an index video (no resize or crop at 64 px)."""
    pixels = (view * STD[0] + MEAN[0]) * 255
    return [
        sum(1 << bit for bit in range(8) if pixels[t, :, :, bit * 8 + 2 : bit * 8 + 6].mean() > 127)
        for t in range(view.shape[0])
    ]


@pytest.fixture(scope="module")
def video_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    files = {"long": folder / "long.mp4", "short": folder / "short.mp4", "webm": folder / "long.webm"}
    write_video(files["long"], index_frames(LONG), "libx264")
    write_video(files["short"], index_frames(SHORT), "libx264")
    write_video(files["webm"], index_frames(LONG), "libvpx-vp9")
    files["broken"] = folder / "broken.mp4"
    files["broken"].write_bytes(b"")
    return files


def linked_annotations(folder: Path, sources: list[Path], num_classes: int = 3) -> Annotations:
    """One sample per source, each under its own name (symlinks: many samples, few encoded files)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for number, source in enumerate(sources):
        link = folder / f"{number:03d}{source.suffix}"
        link.symlink_to(source)
        samples.append(VideoSample(link, number % num_classes))
    return Annotations(samples, [f"class {i}" for i in range(num_classes)])


DENSE = Recipe(
    name="dense-test",
    sampling="dense",
    num_frames=4,
    stride=3,
    train_short_side_range=(224, 240),
    hflip=True,
    test_crops=1,
    test_clips=2,
)


def make_dataset(annotations: Annotations, recipe: Recipe = DENSE, *, train: bool, input_size: int = 32, **kwargs):
    return VideoClipDataset(annotations, recipe, train=train, input_size=input_size, mean=MEAN, std=STD, **kwargs)


# ------------------------------------------------------------------------------------------- items


def test_items_hold_one_view_in_training_and_crops_times_clips_at_test(tmp_path, video_files):
    annotations = linked_annotations(tmp_path, [video_files["long"], video_files["webm"]])
    train_item = make_dataset(annotations, train=True)[1]
    assert train_item["video"].shape == (1, 4, 3, 32, 32) and train_item["video"].dtype == torch.float32
    assert (train_item["label"], train_item["index"]) == (1, 1)
    recipe = Recipe(name="views", sampling="dense", num_frames=4, stride=3, test_crops=3, test_clips=2)
    test_set = make_dataset(annotations, recipe, train=False)
    assert test_set.num_views == 6 and test_set[0]["video"].shape == (6, 4, 3, 32, 32)
    assert (test_set.num_classes, test_set.class_names) == (3, ["class 0", "class 1", "class 2"])


@pytest.mark.parametrize("source", ["long", "webm"])
def test_test_clips_show_the_dense_frames_in_order(tmp_path, video_files, source):
    dataset = make_dataset(linked_annotations(tmp_path, [video_files[source]]), train=False, input_size=64)
    views = dataset[0]["video"]
    expected = [dense_indices(LONG, 4, 3, train=False, clip_index=c, num_clips=2) for c in range(2)]
    assert [view_indices(view) for view in views] == expected


def test_segment_sampling_at_test_takes_segment_middles(tmp_path, video_files):
    recipe = Recipe(name="segments", sampling="segment", num_frames=8, test_crops=1, test_clips=1)
    dataset = make_dataset(linked_annotations(tmp_path, [video_files["webm"]]), recipe, train=False, input_size=64)
    assert view_indices(dataset[0]["video"][0]) == segment_indices(LONG, 8, train=False)


def test_a_video_shorter_than_the_clip_repeats_its_last_frame(tmp_path, video_files):
    dataset = make_dataset(linked_annotations(tmp_path, [video_files["short"]]), train=False, input_size=64)
    assert [view_indices(view) for view in dataset[0]["video"]] == [[0, 2, 2, 2], [0, 2, 2, 2]]


def test_items_are_reproducible_from_seed_epoch_and_index(tmp_path, video_files):
    annotations = linked_annotations(tmp_path, [video_files["long"]] * 3)
    dataset = make_dataset(annotations, train=True, seed=5)
    torch_state = torch.get_rng_state()
    first = dataset[2]["video"]
    assert torch.equal(torch.get_rng_state(), torch_state)  # the caller's generator is left alone
    assert torch.equal(dataset[2]["video"], first)
    assert torch.equal(make_dataset(annotations, train=True, seed=5)[2]["video"], first)
    assert not torch.equal(make_dataset(annotations, train=True, seed=6)[2]["video"], first)
    dataset.set_epoch(1)
    assert dataset.epoch == 1
    second_epoch = dataset[2]["video"]
    assert not torch.equal(second_epoch, first)
    dataset.set_epoch(0)
    assert torch.equal(dataset[2]["video"], first)


def test_set_epoch_reaches_persistent_workers(tmp_path, video_files):
    dataset = make_dataset(linked_annotations(tmp_path, [video_files["long"]] * 4), train=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        epochs.append(torch.cat([batch["video"] for batch in loader]))
    expected = torch.stack([dataset[i]["video"] for i in range(4)])  # dataset is at epoch 1 now
    assert torch.equal(epochs[1], expected)
    assert not torch.equal(epochs[0], epochs[1])


# ---------------------------------------------------------------------------------- broken videos


def test_a_broken_video_is_logged_counted_and_replaced(tmp_path, video_files, caplog):
    sources = [video_files["long"]] * 19 + [video_files["broken"]]
    dataset = make_dataset(linked_annotations(tmp_path, sources), train=True, max_failure_fraction=0.1)
    broken_path = str(dataset.samples[19].path)
    with caplog.at_level(logging.WARNING, logger="peft_bench.data.dataset"):
        item = dataset[19]
    assert item["index"] != 19 and item["label"] == dataset.samples[item["index"]].label
    assert dataset.failed_count == dataset.failures == 1 and dataset.attempts == 2
    assert broken_path in caplog.text and "empty" in caplog.text
    assert dataset[19]["index"] == item["index"]  # the replacement is deterministic


def test_too_many_unreadable_videos_raise_a_data_error(tmp_path, video_files):
    sources = [video_files["long"], video_files["broken"]] * 10
    dataset = make_dataset(linked_annotations(tmp_path, sources), train=True, max_failure_fraction=0.05)
    with pytest.raises(DataError, match=r"video reads failed .*more than train\.max_failure_fraction=0\.05 allows"):
        read_every_item(dataset)


def read_every_item(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def test_failures_add_up_across_dataloader_workers(tmp_path, video_files):
    sources = [video_files["long"]] * 18 + [video_files["broken"]] * 2
    dataset = make_dataset(linked_annotations(tmp_path, sources), train=True, max_failure_fraction=0.2)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    labels = torch.cat([batch["label"] for batch in loader])
    assert len(labels) == 20
    assert dataset.failed_count == 2 and dataset.attempts == 22


def test_missing_videos_are_counted_when_the_dataset_is_built(tmp_path, video_files, caplog):
    annotations = linked_annotations(tmp_path / "present", [video_files["long"]] * 29)
    annotations.samples.append(VideoSample(tmp_path / "nowhere" / "gone.mp4", 0))
    with caplog.at_level(logging.WARNING, logger="peft_bench.data.dataset"):
        dataset = make_dataset(annotations, train=True)
    assert (len(dataset), dataset.missing_count) == (29, 1)
    assert "gone.mp4" in caplog.text
    annotations.samples.extend(VideoSample(tmp_path / f"gone{i}.mp4", 0) for i in range(5))
    with pytest.raises(DataError, match=r"6 of 35 listed videos are missing .*Is the video root right"):
        make_dataset(annotations, train=True)


def test_no_videos_at_all_is_a_data_error(tmp_path):
    annotations = Annotations([VideoSample(tmp_path / "a.mp4", 0)], ["only"])
    with pytest.raises(DataError, match="none of the 1 videos"):
        make_dataset(annotations, train=True)


# ---------------------------------------------------------------------------------- build_dataset


def test_registry_lists_the_benchmark_datasets():
    assert get_dataset("k400").num_classes == 400 and get_dataset("ssv2").num_classes == 174
    assert get_dataset("ssv2").recipe == "ssv2" and get_dataset("k400").layout == "kinetics"
    assert {"synthetic-motion", "synthetic-appearance", "list"} <= set(available_datasets())


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ValueError, match="k400, ssv2"):
        build_dataset("ucf101", "train", root=None, input_size=32, mean=MEAN, std=STD)


def test_k400_layout_with_validate_csv_and_label_folders(tmp_path, video_files):
    labels = [f"action {i:03d}" for i in range(400)]
    rows = [f"{label},vid{i:08d},{i},{i + 10},validate" for i, label in enumerate(labels)]
    annotation_folder = tmp_path / "annotations"
    annotation_folder.mkdir()
    (annotation_folder / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows))
    for i, label in enumerate(labels):
        folder = tmp_path / "videos" / "val" / label.replace(" ", "_")
        folder.mkdir(parents=True)
        (folder / f"vid{i:08d}_{i:06d}_{i + 10:06d}.mp4").symlink_to(video_files["long"])
    dataset = build_dataset(
        "k400", "val", root=tmp_path / "videos", annotations=annotation_folder, input_size=32, mean=MEAN, std=STD
    )
    assert (len(dataset), dataset.num_classes, dataset.missing_count) == (400, 400, 0)
    assert dataset[7]["video"].shape == (3, 8, 3, 32, 32)  # K400 test views: 1 crop x 3 clips


def test_ssv2_layout_with_the_published_video_folder(tmp_path, video_files):
    templates = [f"Doing [something] number {i}" for i in range(174)]
    (tmp_path / "labels.json").write_text(
        json.dumps({t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)})
    )
    entries = [
        {"id": str(1000 + i), "label": "x", "template": template, "placeholders": ["x"]}
        for i, template in enumerate(templates)
    ]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    video_folder = tmp_path / "20bn-something-something-v2"
    video_folder.mkdir()
    for i in range(174):
        (video_folder / f"{1000 + i}.webm").symlink_to(video_files["webm"])
    dataset = build_dataset("ssv2", "train", root=tmp_path, input_size=32, mean=MEAN, std=STD, num_frames=4)
    assert (len(dataset), dataset.num_classes) == (174, 174)
    item = dataset[3]
    assert item["video"].shape == (1, 4, 3, 32, 32) and item["label"] == 3


def test_missing_root_or_annotation_file_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs a root folder"):
        build_dataset("k400", "train", root=None, input_size=32, mean=MEAN, std=STD)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("k400", "train", root=tmp_path / "nope", input_size=32, mean=MEAN, std=STD)
    with pytest.raises(FileNotFoundError, match=r"no annotation files \(train\.csv, validate\.csv, val\.csv\) in "):
        build_dataset("k400", "val", root=tmp_path, input_size=32, mean=MEAN, std=STD)
    with pytest.raises(FileNotFoundError, match=r"labels\.json\) in .*labels; .*Expected layout: .*20bn"):
        build_dataset("ssv2", "val", root=tmp_path, input_size=32, mean=MEAN, std=STD)
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")  # the folder, but no val file
    with pytest.raises(FileNotFoundError, match=r"validate\.csv not found \(also tried val\.csv\); expected layout"):
        build_dataset("k400", "val", root=tmp_path, input_size=32, mean=MEAN, std=STD)


def test_wrong_class_count_for_a_named_dataset_is_an_error(tmp_path, video_files):
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nonly,abc,0,10,train\n")
    (tmp_path / "abc_000000_000010.mp4").symlink_to(video_files["long"])
    with pytest.raises(DataError, match="k400 should have 400 classes"):
        build_dataset("k400", "train", root=tmp_path, input_size=32, mean=MEAN, std=STD)


def test_generic_list_dataset(tmp_path, video_files):
    (tmp_path / "clip.mp4").symlink_to(video_files["long"])
    (tmp_path / "train.txt").write_text("clip.mp4 4\n")
    dataset = build_dataset("list", "train", root=tmp_path, input_size=32, mean=MEAN, std=STD)
    assert (len(dataset), dataset.num_classes, dataset[0]["label"]) == (1, 5, 4)


def test_kept_decoded_videos_are_decoded_once_per_process_until_rewritten(tmp_path, video_files, monkeypatch):
    from peft_bench.data import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "DECODED", {})
    calls = []
    real_read = dataset_module.read_clip
    monkeypatch.setattr(dataset_module, "read_clip", lambda path, *a: calls.append(path) or real_read(path, *a))
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(video_files["long"].read_bytes())
    annotations = Annotations([VideoSample(copy, 0)], ["a"])
    first = make_dataset(annotations, train=True, keep_decoded=True)[0]["video"]
    # Another dataset over the same file (the next run of a command) and the test split: no decoding.
    assert torch.equal(make_dataset(annotations, train=True, keep_decoded=True)[0]["video"], first)
    make_dataset(annotations, train=False, keep_decoded=True)[0]
    assert len(calls) == 1
    write_video(copy, index_frames(LONG)[::-1].copy(), "libx264")  # the same path, other frames
    assert not torch.equal(make_dataset(annotations, train=True, keep_decoded=True)[0]["video"], first)
    assert len(calls) == 2
    make_dataset(annotations, train=True)[0]  # real datasets decode what each clip needs, every time
    make_dataset(annotations, train=True)[0]
    assert len(calls) == 4
