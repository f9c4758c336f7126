"""Annotation readers on small files in the published formats, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_bench.data.annotations import (
    AnnotationError,
    read_kinetics,
    read_kinetics_class_names,
    read_list_file,
    read_ssv2,
)

KINETICS_CSV = """label,youtube_id,time_start,time_end,split
abseiling,--07WQ2iBlw,1,11,train
"passing American football (in game)",-0_9Q8m-b7E,12,22,train
air drumming,-VtLx-mcPds,0,10,train
abseiling,0aq6xnd5aCE,150,160,train
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")
    return path


# ------------------------------------------------------------------------------------------ Kinetics


def test_kinetics_reads_labels_and_builds_the_published_file_names(tmp_path):
    csv_path = write(tmp_path / "ann" / "train.csv", KINETICS_CSV)
    annotations = read_kinetics(csv_path, tmp_path / "videos")
    assert annotations.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert [sample.label for sample in annotations.samples] == [0, 2, 1, 0]
    assert annotations.samples[0].path == tmp_path / "videos" / "--07WQ2iBlw_000001_000011.mp4"
    assert annotations.samples[3].path.name == "0aq6xnd5aCE_000150_000160.mp4"
    assert read_kinetics_class_names(csv_path) == annotations.class_names


def test_kinetics_finds_videos_flat_in_label_folders_and_in_underscored_folders(tmp_path):
    csv_path = write(tmp_path / "train.csv", KINETICS_CSV)
    root = tmp_path / "videos"
    flat = touch(root / "--07WQ2iBlw_000001_000011.mp4")
    spaced = touch(root / "air drumming" / "-VtLx-mcPds_000000_000010.mp4")
    underscored = touch(root / "passing_American_football_(in_game)" / "-0_9Q8m-b7E_000012_000022.mp4")
    paths = [sample.path for sample in read_kinetics(csv_path, root).samples]
    assert paths[:3] == [flat, underscored, spaced]
    assert paths[3] == root / "0aq6xnd5aCE_000150_000160.mp4"  # missing: not an error here, flat path


def test_kinetics_uses_a_given_class_list_and_rejects_labels_outside_it(tmp_path):
    csv_path = write(tmp_path / "validate.csv", KINETICS_CSV)
    classes = ["air drumming", "abseiling", "passing American football (in game)", "zumba"]
    annotations = read_kinetics(csv_path, tmp_path, class_names=classes)
    assert annotations.class_names == classes and annotations.samples[0].label == 1
    with pytest.raises(AnnotationError, match=r"validate\.csv, line 3: unknown label 'passing American"):
        read_kinetics(csv_path, tmp_path, class_names=["abseiling", "air drumming"])


def test_kinetics_accepts_extra_columns_and_whole_float_times(tmp_path):
    text = "youtube_id,label,time_start,time_end,split,is_cc\nabc,zumba,3.0,13.0,val,0\n"
    annotations = read_kinetics(write(tmp_path / "val.csv", text), tmp_path)
    assert annotations.samples[0].path.name == "abc_000003_000013.mp4"


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("label,youtube_id,time_start\nabseiling,x,1\n", 1, "header lacks"),
        (KINETICS_CSV + "abseiling,abc,1\n", 6, "expected 5 fields"),
        (KINETICS_CSV + "abseiling,abc,one,11,train\n", 6, "time_start is not a number"),
        (KINETICS_CSV + "abseiling,abc,1.5,11,train\n", 6, "whole"),
        (KINETICS_CSV + 'abseiling,"abc,1,11,train\n', 6, "malformed CSV"),
        (KINETICS_CSV + ",abc,1,11,train\n", 6, "empty label"),
        ("", 1, "empty file"),
    ],
)
def test_malformed_kinetics_csv_names_file_and_line(tmp_path, text, line, problem):
    csv_path = write(tmp_path / "train.csv", text)
    with pytest.raises(AnnotationError, match=problem) as raised:
        read_kinetics(csv_path, tmp_path)
    assert f"{csv_path}, line {line}:" in str(raised.value)
    assert raised.value.line == line


def test_missing_annotation_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.csv"):
        read_kinetics(tmp_path / "train.csv", tmp_path)


# ---------------------------------------------------------------------------------------------- SSv2

SSV2_LABELS = {
    "Moving something from left to right": "1",
    "Moving something from right to left": "0",
    "Putting something on a surface": "2",
}


def ssv2_entry(video_id: str, template: str, objects: list[str]) -> dict:
    label = template
    for name in objects:
        label = label.replace("[something]", name, 1)
    return {"id": video_id, "label": label, "template": template, "placeholders": objects}


def write_ssv2_split(path: Path, entries: list[dict]) -> Path:
    # One entry per line, as in the published files.
    return write(path, "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n")


def test_ssv2_label_comes_from_the_template_without_brackets(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(SSV2_LABELS, indent=1))
    split = write_ssv2_split(
        tmp_path / "validation.json",
        [
            ssv2_entry("74225", "Moving [something] from left to right", ["a cup"]),
            ssv2_entry("116154", "Moving [something] from right to left", ["pen"]),
            ssv2_entry("198186", "Putting [something] on a surface", ["box"]),
        ],
    )
    annotations = read_ssv2(labels, split, tmp_path / "videos")
    assert annotations.class_names == [
        "Moving something from right to left",
        "Moving something from left to right",
        "Putting something on a surface",
    ]
    assert [sample.label for sample in annotations.samples] == [1, 0, 2]
    assert annotations.samples[0].path == tmp_path / "videos" / "74225.webm"


def test_ssv2_unknown_template_names_file_and_line(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(SSV2_LABELS))
    split = write_ssv2_split(
        tmp_path / "train.json",
        [
            ssv2_entry("1", "Putting [something] on a surface", ["box"]),
            ssv2_entry("2", "Juggling [something]", ["balls"]),
        ],
    )
    with pytest.raises(AnnotationError, match=r"train\.json, line 3: unknown label 'Juggling something'"):
        read_ssv2(labels, split, tmp_path)


@pytest.mark.parametrize(
    "text,line",
    [
        ('[\n{"id": "1", "template": "Putting [something] on a surface"},\n{"id": "2", "template": }\n]\n', 3),
        ('[\n{"id": "1", "template": "Putting [something] on a surface"}\n{"id": "2"}\n]\n', 3),
        ('{"id": "1"}\n', 1),
        ('[\n{"id": "1", "template": "Putting [something] on a surface"},\n', 3),
        ('[\n{"id": "1"}\n]\n', 2),
    ],
    ids=["bad-value", "missing-comma", "not-a-list", "cut-short", "no-template"],
)
def test_malformed_ssv2_split_names_file_and_line(tmp_path, text, line):
    labels = write(tmp_path / "labels.json", json.dumps(SSV2_LABELS))
    split = write(tmp_path / "train.json", text)
    with pytest.raises(AnnotationError) as raised:
        read_ssv2(labels, split, tmp_path)
    assert f"{split}, line {line}:" in str(raised.value)


def test_malformed_ssv2_labels_file(tmp_path):
    split = write_ssv2_split(tmp_path / "train.json", [])
    broken = write(tmp_path / "labels.json", '{\n"Putting something on a surface": "0",\n"oops"\n}\n')
    with pytest.raises(AnnotationError, match=r"labels\.json, line 4: malformed JSON"):
        read_ssv2(broken, split, tmp_path)
    gap = write(tmp_path / "labels.json", json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(AnnotationError, match="without gaps"):
        read_ssv2(gap, split, tmp_path)
    not_int = write(tmp_path / "labels.json", '{\n"a": "0",\n"b": "one"\n}')
    with pytest.raises(AnnotationError, match=r"line 3: index of 'b' is not an integer"):
        read_ssv2(not_int, split, tmp_path)


def test_empty_ssv2_split_gives_no_samples(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(SSV2_LABELS))
    assert read_ssv2(labels, write(tmp_path / "train.json", "[]"), tmp_path).samples == []


# ---------------------------------------------------------------------------------------- list files


def test_list_file_reads_relative_paths_and_labels(tmp_path):
    text = "# path label\nclass_a/v1.mp4 0\n\nwith space/v 2.webm 2\nclass_b/v3.mp4 1\n"
    annotations = read_list_file(write(tmp_path / "train.txt", text), tmp_path / "root")
    assert [(sample.path, sample.label) for sample in annotations.samples] == [
        (tmp_path / "root" / "class_a" / "v1.mp4", 0),
        (tmp_path / "root" / "with space" / "v 2.webm", 2),
        (tmp_path / "root" / "class_b" / "v3.mp4", 1),
    ]
    assert annotations.class_names == ["0", "1", "2"]


@pytest.mark.parametrize(
    "bad_line,problem",
    [
        ("just_a_path.mp4", "expected 'relative/path label_index'"),
        ("a.mp4 x", "not an integer"),
        ("a.mp4 -1", "non-negative"),
    ],
)
def test_bad_list_line_names_file_and_line(tmp_path, bad_line, problem):
    path = write(tmp_path / "val.txt", f"ok.mp4 0\n{bad_line}\n")
    with pytest.raises(AnnotationError, match=problem) as raised:
        read_list_file(path, tmp_path)
    assert f"{path}, line 2:" in str(raised.value)
