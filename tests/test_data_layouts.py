"""Datasets found in the layouts their releases publish, with only --data-root given.

Kinetics-400 from the CVDF release: `annotations/{train,val,test}.csv` beside `train/ val/ test/`.
Something-Something v2: `labels/{labels,train,validation}.json` beside `20bn-something-something-v2/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from peft_bench.data.build import build_dataset
from peft_bench.data.check import check_dataset
from peft_bench.data.cli import add_data_parser, cmd_data
from peft_bench.data.dataset import DataError
from peft_bench.data.layouts import annotation_folder
from peft_bench.data.synthetic import write_video

FRAMES = np.zeros((16, 32, 32, 3), dtype=np.uint8) + np.arange(16, dtype=np.uint8)[:, None, None, None] * 8
KINETICS_CSV = "label,youtube_id,time_start,time_end,split\nabseiling,{id},0,10,{split}\njuggling,{id}b,0,10,{split}\n"
SSV2_TEMPLATES = ["Moving [something] up", "Moving [something] down"]


def data_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command"))
    return cmd_data(parser.parse_args(["data", *argv]))


@pytest.fixture(scope="module")
def cvdf_kinetics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("k400")
    (root / "annotations").mkdir()
    for split, folder in (("train", "train"), ("val", "val")):
        (root / folder).mkdir()
        video_id = f"{split}video0"
        (root / "annotations" / f"{split}.csv").write_text(KINETICS_CSV.format(id=video_id, split=split))
        for name in (video_id, f"{video_id}b"):
            write_video(root / folder / f"{name}_000000_000010.mp4", FRAMES, "libx264")
    (root / "test").mkdir()
    return root


@pytest.fixture(scope="module")
def published_ssv2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssv2")
    (root / "labels").mkdir()
    videos = root / "20bn-something-something-v2"
    videos.mkdir()
    labels = {template.replace("[", "").replace("]", ""): str(i) for i, template in enumerate(SSV2_TEMPLATES)}
    (root / "labels" / "labels.json").write_text(json.dumps(labels))
    for file_name, ids in (("train.json", ["1", "2"]), ("validation.json", ["3"])):
        entries = [{"id": i, "template": SSV2_TEMPLATES[int(i) % 2], "label": "x", "placeholders": ["x"]} for i in ids]
        (root / "labels" / file_name).write_text(json.dumps(entries))
        for video_id in ids:
            write_video(videos / f"{video_id}.webm", FRAMES, "libvpx-vp9")
    return root


def test_k400_finds_its_csvs_in_the_cvdf_annotations_folder(cvdf_kinetics, capsys):
    assert annotation_folder("kinetics", cvdf_kinetics) == cvdf_kinetics / "annotations"
    report = check_dataset("k400", cvdf_kinetics, workers=1, progress=False, num_frames=1)  # short videos
    assert [(e.video.path.parent.name, e.finding.category) for e in report.entries] == [("train", "ok")] * 2 + [
        ("val", "ok")
    ] * 2
    assert report.annotation_files == [cvdf_kinetics / "annotations" / name for name in ("train.csv", "val.csv")]
    # The command with --data-root alone prints where it read the annotations.
    code = data_command(
        "check",
        "--dataset",
        "k400",
        "--data-root",
        str(cvdf_kinetics),
        "--no-progress",
        "--frames",
        "1",
        "--report",
        str(cvdf_kinetics.parent / "k400-report.csv"),
    )
    out = capsys.readouterr().out
    assert f"annotations: {cvdf_kinetics / 'annotations' / 'train.csv'}" in out
    assert f"annotations: {cvdf_kinetics / 'annotations' / 'val.csv'}" in out
    assert "4 entries" in out and code == 1  # 1: two classes here, where k400 has 400 (a dataset-level note)


def test_training_reads_the_cvdf_layout_from_the_data_root_alone(cvdf_kinetics):
    # The two classes of this stand-in are refused as k400's 400: the annotations were found and read.
    with pytest.raises(DataError, match="k400 should have 400 classes, but its train annotations give 2"):
        build_dataset("k400", "train", root=cvdf_kinetics, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_ssv2_finds_its_json_files_in_labels(published_ssv2, capsys):
    assert annotation_folder("ssv2", published_ssv2) == published_ssv2 / "labels"
    report = check_dataset("ssv2", published_ssv2, workers=1, progress=False)
    assert [(e.video.path.name, e.finding.category) for e in report.entries] == [
        ("1.webm", "ok"),
        ("2.webm", "ok"),
        ("3.webm", "ok"),
    ]
    labels = published_ssv2 / "labels"
    assert report.annotation_files == [labels / "labels.json", labels / "train.json", labels / "validation.json"]
    data_command(
        "check",
        "--dataset",
        "ssv2",
        "--data-root",
        str(published_ssv2),
        "--no-progress",
        "--report",
        str(published_ssv2.parent / "ssv2-report.csv"),
    )
    assert f"annotations: {labels / 'labels.json'}" in capsys.readouterr().out


def test_files_in_the_root_come_first_and_an_explicit_folder_is_taken_as_given(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    assert annotation_folder("kinetics", tmp_path) == tmp_path
    assert annotation_folder("kinetics", tmp_path, tmp_path / "elsewhere") == tmp_path / "elsewhere"


@pytest.mark.parametrize("dataset,published", [("k400", "annotations"), ("ssv2", "labels")])
def test_a_folder_without_annotations_gets_one_message_naming_the_places_looked(tmp_path, capsys, dataset, published):
    (tmp_path / "train").mkdir()
    code = data_command("check", "--dataset", dataset, "--data-root", str(tmp_path), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1
    assert f"in {tmp_path} or {tmp_path / published};" in err and "--annotations" in err
    with pytest.raises(FileNotFoundError, match=f"or {tmp_path / published}"):
        build_dataset(dataset, "train", root=tmp_path, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
