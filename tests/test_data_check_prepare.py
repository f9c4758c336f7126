"""`peft-bench data check` and `data prepare` on small synthetic dataset folders, and the loader benchmark's
functions on a tiny setting (no timing assertions)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from peft_bench.data.annotations import read_kinetics, read_ssv2
from peft_bench.data.check import check_dataset, parallel_map, summary_path_for
from peft_bench.data.cli import add_data_parser, cmd_data
from peft_bench.data.dataset import VideoClipDataset
from peft_bench.data.decode import count_frames, read_frames
from peft_bench.data.prepare import FAILURES_FILE, EncodeSettings, output_size, prepare_dataset
from peft_bench.data.recipes import load_recipe
from peft_bench.data.synthetic import write_video

LONG = 120  # frames: more than the 113 one K400 clip spans (8 frames at stride 16)
SHORT = 20


def gradient_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    columns = np.arange(width, dtype=np.int64)[None, None, :, None]
    frames = (columns * 3 + np.arange(num_frames)[:, None, None, None] * 5 + np.array([0, 80, 160])) % 256
    return np.broadcast_to(frames, (num_frames, height, width, 3)).astype(np.uint8)


def run_data_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command"))
    return cmd_data(parser.parse_args(["data", *argv]))


def write_faststart_mp4(path: Path, frames: np.ndarray) -> None:
    """An mp4 with its index first, as streamed downloads have: cut short, it still opens and claims every
    frame, and only decoding late frames shows that it is truncated."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 8)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


KINETICS_TRAIN = """label,youtube_id,time_start,time_end,split
abseiling,okvideo0001,0,10,train
air drumming,okvideo0002,0,10,train
abseiling,shortvid001,0,10,train
abseiling,zerobytes01,0,10,train
abseiling,textfile001,0,10,train
abseiling,truncated01,0,10,train
abseiling,cutafterhdr,0,10,train
abseiling,missingvid1,0,10,train
"""
KINETICS_VAL = """label,youtube_id,time_start,time_end,split
abseiling,okvideo0003,0,10,val
juggling fire,okvideo0004,0,10,val
"""
EXPECTED = {
    "okvideo0001": "ok",
    "okvideo0002": "ok",
    "okvideo0003": "ok",
    "shortvid001": "too_short",
    "zerobytes01": "unreadable",
    "textfile001": "unreadable",
    "truncated01": "unreadable",
    "cutafterhdr": "unreadable",
    "missingvid1": "missing",
    "okvideo0004": "unlabelled",
}


def video_name(youtube_id: str) -> str:
    return f"{youtube_id}_000000_000010.mp4"


@pytest.fixture(scope="module")
def broken_kinetics(tmp_path_factory) -> Path:
    """Kinetics layout (split and per-label folders) with one entry of every problem kind."""
    root = tmp_path_factory.mktemp("kinetics")
    abseiling, drumming, val = root / "train" / "abseiling", root / "train" / "air_drumming", root / "val" / "abseiling"
    for folder in (abseiling, drumming, val):
        folder.mkdir(parents=True)
    write_video(abseiling / video_name("okvideo0001"), gradient_frames(LONG), "libx264")
    write_video(drumming / video_name("okvideo0002"), gradient_frames(LONG), "libx264")
    write_video(val / video_name("okvideo0003"), gradient_frames(LONG), "libx264")
    write_video(abseiling / video_name("shortvid001"), gradient_frames(SHORT), "libx264")
    (abseiling / video_name("zerobytes01")).write_bytes(b"")
    (abseiling / video_name("textfile001")).write_text("this is not a video\n")
    whole = (abseiling / video_name("okvideo0001")).read_bytes()
    (abseiling / video_name("truncated01")).write_bytes(whole[: len(whole) // 2])  # index at the end: lost
    write_faststart_mp4(root / "faststart.tmp", gradient_frames(LONG))
    cut = (root / "faststart.tmp").read_bytes()
    (abseiling / video_name("cutafterhdr")).write_bytes(cut[: len(cut) // 2])
    (root / "faststart.tmp").unlink()
    (root / "train.csv").write_text(KINETICS_TRAIN)
    (root / "validate.csv").write_text(KINETICS_VAL)
    return root


# ---------------------------------------------------------------------------------------------- check


def test_check_puts_each_entry_in_its_category(broken_kinetics):
    report = check_dataset("k400", broken_kinetics, workers=2, progress=False)
    found = {entry.video.path.name.split("_")[0]: entry.finding for entry in report.entries}
    assert {name: finding.category for name, finding in found.items()} == EXPECTED
    assert found["okvideo0001"].frames == LONG
    assert found["shortvid001"].frames == SHORT and "113" in found["shortvid001"].detail
    assert "empty" in found["zerobytes01"].detail
    assert "validate.csv, line 3" in found["okvideo0004"].detail and "juggling fire" in found["okvideo0004"].detail
    assert "could not be decoded" in found["cutafterhdr"].detail  # caught by decoding the last frames
    assert report.span.frames == 113 and "(8-1)*16+1" in report.span.reason
    counts = report.counts()["all"]
    assert counts["ok"] == 3 and counts["unreadable"] == 4 and sum(counts.values()) == len(EXPECTED)
    # Two classes, not K400's 400: build_dataset would refuse this copy, so the check says so.
    assert any("400" in note for note in report.notes)


def test_check_command_writes_the_problems_and_exits_1(broken_kinetics, tmp_path, capsys):
    report_path = tmp_path / "report.csv"
    code = run_data_command(
        "check",
        "--dataset",
        "k400",
        "--root",
        str(broken_kinetics),
        "--workers",
        "2",
        "--report",
        str(report_path),
        "--no-progress",
    )
    assert code == 1
    with open(report_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(row["path"]).name.split("_")[0]: row["category"] for row in rows} == {
        name: category for name, category in EXPECTED.items() if category != "ok"
    }
    summary = summary_path_for(report_path).read_text()
    assert "unlabelled" in summary and "113 frames" in summary
    assert "7 of 10 entries have problems" in capsys.readouterr().out


def test_check_one_split(broken_kinetics, tmp_path):
    report = check_dataset("k400", broken_kinetics, splits=["val"], workers=1, progress=False)
    assert [entry.finding.category for entry in report.entries] == ["ok", "unlabelled"]


def test_malformed_csv_is_exit_2_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,zero,10,train\n")
    code = run_data_command(
        "check",
        "--dataset",
        "k400",
        "--root",
        str(tmp_path / "videos"),
        "--annotations",
        str(tmp_path),
        "--split",
        "train",
        "--report",
        str(tmp_path / "r.csv"),
        "--no-progress",
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "train.csv, line 2" in error and "time_start" in error


def test_clean_dataset_is_exit_0(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_video(videos / name, gradient_frames(LONG), "libx264")
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "val.txt").write_text("b.mp4 1\n")
    code = run_data_command(
        "check",
        "--dataset",
        "list",
        "--root",
        str(videos),
        "--annotations",
        str(tmp_path),
        "--workers",
        "2",
        "--report",
        str(tmp_path / "r.csv"),
        "--no-progress",
    )
    assert code == 0
    assert (tmp_path / "r.csv").read_text().strip() == "split,category,path,label,frames,detail"


def double_or_die(value: int) -> int:
    if value == 3:
        os._exit(1)  # as a decoder crashing on a corrupt file would take its process down
    return 2 * value


def test_a_crashing_worker_costs_only_its_own_item():
    results = parallel_map(double_or_die, list(range(8)), workers=2, on_crash=lambda value: -1, progress=False)
    assert results == [0, 2, 4, -1, 8, 10, 12, 14]


# -------------------------------------------------------------------------------------------- prepare


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def kinetics_source(tmp_path) -> Path:
    """A small Kinetics copy at 128x96 (short side 96), per-label folders, plus one undecodable file."""
    root = tmp_path / "source"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for number, (split, label) in enumerate(
        [("train", "abseiling"), ("train", "air drumming"), ("train", "abseiling"), ("val", "air drumming")]
    ):
        folder = root / split / label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        youtube_id = f"video{number:06d}"
        write_video(folder / video_name(youtube_id), gradient_frames(40 + number, 96, 128), "libx264")
        rows.append(f"{label},{youtube_id},0,10,{split}")
    (root / "train.csv").write_text("\n".join(row for row in rows if not row.endswith(",val")) + "\n")
    (root / "validate.csv").write_text("\n".join([rows[0]] + [row for row in rows if row.endswith(",val")]) + "\n")
    (root / "train" / "abseiling" / video_name("brokenvideo")).write_text("not a video\n")  # not annotated
    return root


def test_prepare_keeps_layout_and_labels_with_the_new_short_side(kinetics_source, tmp_path):
    before = file_digests(kinetics_source)
    out = tmp_path / "prepared"
    code = run_data_command(
        "prepare",
        "--dataset",
        "k400",
        "--root",
        str(kinetics_source),
        "--out",
        str(out),
        "--short-side",
        "64",
        "--keyframe-interval",
        "8",
        "--workers",
        "2",
        "--no-progress",
    )
    assert code == 1  # the one undecodable file failed; the others were prepared
    assert file_digests(kinetics_source) == before  # the source is never written to
    assert "brokenvideo" in (out / FAILURES_FILE).read_text()
    for split, csv_name in (("train", "train.csv"), ("val", "validate.csv")):
        source = read_kinetics(kinetics_source / csv_name, kinetics_source / split)
        prepared = read_kinetics(out / csv_name, out / split)
        assert prepared.class_names == source.class_names
        assert [(s.path.relative_to(out), s.label) for s in prepared.samples] == [
            (s.path.relative_to(kinetics_source), s.label) for s in source.samples
        ]
        for original, copy in zip(source.samples, prepared.samples, strict=True):
            assert count_frames(copy.path) == count_frames(original.path)
            assert read_frames(copy.path, [0]).shape == (1, 64, 86, 3)  # 128x96 -> 85.3x64 -> even 86
    with av.open(str(out / "train" / "abseiling" / video_name("video000000"))) as container:
        keyframes = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    assert sum(keyframes) == 5  # 40 frames, a keyframe every 8
    # And through the dataset class, as training reads it.
    dataset = VideoClipDataset(
        read_kinetics(out / "train.csv", out / "train"),
        load_recipe("k400"),
        train=True,
        input_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    assert dataset[0]["video"].shape == (1, 8, 3, 32, 32) and dataset.failures == 0


def test_prepare_twice_skips_everything_and_resumes_after_a_kill(kinetics_source, tmp_path):
    out = tmp_path / "prepared"
    settings = EncodeSettings(short_side=64)
    first = prepare_dataset("k400", kinetics_source, out, settings, workers=1, progress=False)
    assert (first.prepared, first.skipped, len(first.failures)) == (4, 0, 1)
    again = prepare_dataset("k400", kinetics_source, out, settings, workers=1, progress=False)
    assert (again.prepared, again.skipped) == (0, 4)
    # A killed run: one video never renamed into place, its temporary left behind by a process now gone.
    victim = out / "val" / "air_drumming" / video_name("video000003")
    victim.unlink()
    stale = victim.with_name(f".{victim.name}.{2**22 + 17}.partial")  # above Linux's largest pid: not alive
    stale.write_bytes(b"half a video")
    resumed = prepare_dataset("k400", kinetics_source, out, settings, workers=1, progress=False)
    assert (resumed.prepared, resumed.skipped) == (1, 3)
    assert victim.is_file() and not stale.exists()
    assert count_frames(victim) == 43


SSV2_TEMPLATES = ["Moving [something] up", "Moving [something] down"]


def write_ssv2(root: Path, splits: dict[str, list[str]], extra_entries: list[dict] = ()) -> Path:
    """SSv2 layout: labels.json, the split files, VP9 videos 128x96 under 20bn-something-something-v2/."""
    videos = root / "20bn-something-something-v2"
    videos.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"Moving something up": "0", "Moving something down": "1"}))
    for file_name, ids in splits.items():
        entries = [
            {"id": video_id, "template": SSV2_TEMPLATES[int(video_id) % 2], "label": "x", "placeholders": ["x"]}
            for video_id in ids
        ]
        (root / file_name).write_text(json.dumps(entries + list(extra_entries), indent=1))
        for video_id in ids:
            write_video(videos / f"{video_id}.webm", gradient_frames(12, 96, 128), "libvpx-vp9")
    return root


def test_check_ssv2_unknown_template_and_missing_webm(tmp_path):
    unknown = {"id": "8", "template": "Juggling [something]", "label": "x", "placeholders": ["x"]}
    missing = {"id": "9", "template": SSV2_TEMPLATES[0], "label": "x", "placeholders": ["x"]}
    root = write_ssv2(tmp_path / "ssv2", {"train.json": ["1", "2"]}, [unknown, missing])
    report = check_dataset("ssv2", root, splits=["train"], workers=1, progress=False)
    assert [(e.video.path.name, e.finding.category) for e in report.entries] == [
        ("1.webm", "ok"),
        ("2.webm", "ok"),
        ("8.webm", "unlabelled"),
        ("9.webm", "missing"),
    ]
    assert "train.json, line" in report.entries[2].finding.detail
    assert report.entries[0].finding.frames == 12 and report.span.frames == 8


def test_prepare_ssv2_keeps_vp9_webm_names(tmp_path):
    source, out = write_ssv2(tmp_path / "ssv2", {"train.json": ["1", "2"], "validation.json": ["3"]}), tmp_path / "out"
    summary = prepare_dataset("ssv2", source, out, EncodeSettings(short_side=48), workers=1, progress=False)
    assert (summary.prepared, len(summary.failures), len(summary.annotation_files)) == (3, 0, 3)
    original = read_ssv2(source / "labels.json", source / "train.json", source / "20bn-something-something-v2")
    copy = read_ssv2(out / "labels.json", out / "train.json", out / "20bn-something-something-v2")
    assert [s.label for s in copy.samples] == [s.label for s in original.samples]
    with av.open(str(copy.samples[0].path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("vp9", 64, 48)
    assert read_frames(copy.samples[0].path, list(range(12))).shape == (12, 48, 64, 3)


def test_prepare_refuses_an_output_inside_the_source(kinetics_source, capsys):
    code = run_data_command(
        "prepare",
        "--dataset",
        "k400",
        "--root",
        str(kinetics_source),
        "--out",
        str(kinetics_source / "prepared"),
        "--no-progress",
    )
    assert code == 2 and "outside the source" in capsys.readouterr().err
    assert not (kinetics_source / "prepared").exists()


def test_output_size_only_scales_down():
    assert output_size(340, 256, 320, even=True) == (340, 256)
    assert output_size(1280, 720, 320, even=True) == (568, 320)
    assert output_size(427, 240, 320, even=False) == (427, 240)
    assert output_size(427, 240, 320, even=True) == (428, 240)


# ------------------------------------------------------------------------------------------ benchmark


def test_loader_benchmark_runs_on_a_tiny_setting(tmp_path):
    from peft_bench.benchmarks import loader_speed
    from peft_bench.data.decode import available_decoders

    tiny = {"count": 1, "seconds": 1.0, "width": 64, "height": 48}
    settings = loader_speed.BenchmarkSettings(
        k400=dataclasses.replace(loader_speed.K400_LIKE, **tiny),
        ssv2=dataclasses.replace(loader_speed.SSV2_LIKE, **tiny),
        repeats=1,
        clips_per_repeat=2,
        input_size=32,
    )
    measurements = loader_speed.run_benchmark(settings, work_dir=tmp_path / "work")
    decoders = available_decoders()
    loaders = {(m.video_set, m.copy, m.loader) for m in measurements}
    assert ("k400-like", "raw", loader_speed.BASELINE) in loaders
    # Every installed decoder on both sets, raw and prepared; x264's default tuning read by the first one.
    for video_set in ("k400-like", "ssv2-like"):
        for copy in (loader_speed.RAW, loader_speed.PREPARED):
            assert {m.decoder for m in measurements if (m.video_set, m.copy) == (video_set, copy)} >= set(decoders)
    assert [m.decoder for m in measurements if m.copy == loader_speed.PREPARED_DEFAULT_TUNING] == decoders[:1]
    assert all(m.clips_per_s > 0 and m.speedup > 0 for m in measurements)
    assert sorted(loader_speed.measured_order(measurements)) == sorted(decoders)
    csv_path, md_path = loader_speed.write_results(measurements, settings, tmp_path / "results", "test run")
    assert len(csv_path.read_text().splitlines()) == len(measurements) + 1
    side_by_side = md_path.read_text().split("## Every loader")[0]
    assert all(f"| {decoder} |" in side_by_side for decoder in decoders)
