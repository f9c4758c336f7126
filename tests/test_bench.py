"""`peft-bench bench` on tiny: rows with the expected columns and sane values (never timing thresholds),
the CSV, Markdown and mlflow outputs, and the temporal-mixing forms of ST-Adapter agreeing."""

from __future__ import annotations

import csv
import dataclasses

import mlflow
import pytest
import torch

from peft_bench.benchmarks import method_speed, temporal_conv
from peft_bench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {
    "backbone": "tiny",
    "frames": 2,
    "batch": 2,
    "warmup": 0,
    "repeats": 1,
    "num_classes": 5,
    "isolate": False,
    "matmul_size": 128,
}


def test_bench_rows_have_every_column_with_sane_values():
    cfg = method_speed.BenchConfig(methods=("linear_probe", "st_adapter"), **SMALL)
    rows, peak = method_speed.run_bench(cfg)
    assert peak > 0
    assert [r.method for r in rows] == ["linear_probe", "st_adapter"]
    for row in rows:
        assert row.train_clips_per_s > 0 and row.eval_clips_per_s > 0 and row.train_step_ms > 0
        assert row.peak_memory_mib > 0 and row.step_gflop > 0 and row.share_of_peak_pct > 0
        assert (row.backbone, row.frames, row.resolution, row.batch, row.device) == ("tiny", 2, 32, 2, "cpu")
        assert row.precision == "fp32" and row.hardware
    by = {r.method: r for r in rows}
    # The frozen backbone of the linear probe has no backward; ST-Adapter's step goes back through it.
    assert by["st_adapter"].step_gflop > 2 * by["linear_probe"].step_gflop
    assert by["linear_probe"].trainable_params == 96 * 5 + 5


def test_bench_command_writes_csv_markdown_and_mlflow(tmp_path, store, capsys):
    argv = [
        "bench",
        "--backbone",
        "tiny",
        "--frames",
        "2",
        "--batch",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--methods",
        "attentional_pooling",
        "--in-process",
        "--matmul-size",
        "128",
        "--results-dir",
        str(tmp_path),
        "--tracking-uri",
        store,
        "--name",
        "speed",
    ]
    assert main(argv) == 0
    with open(tmp_path / "speed.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["attentional_pooling"]
    assert set(rows[0]) == {f.name for f in dataclasses.fields(method_speed.Row)}
    assert "| attentional_pooling |" in (tmp_path / "speed.md").read_text()
    run = mlflow.search_runs(experiment_names=[method_speed.EXPERIMENT], output_format="list")[0]
    assert run.data.tags["peft_bench.hardware"] and run.data.tags["peft_bench.kind"] == "bench"
    assert run.data.metrics["train_clips_per_s"] > 0 and run.data.params["batch"] == "1"
    capsys.readouterr()


def test_a_resolution_the_backbone_cannot_take_is_refused():
    cfg = method_speed.BenchConfig(methods=("linear_probe",), **{**SMALL, "isolate": False}, resolution=48)
    with pytest.raises(ValueError, match="32 px"):
        method_speed.run_bench(cfg)


def depthwise_temporal_conv_by_definition(x, conv, frames):
    """y[t] = sum_k w[k] x[t + k - 1] + b per channel, zero beyond the clip: the (3, 1, 1) kernel written out."""
    n, hw, r = x.shape
    seq = x.view(n // frames, frames, hw, r)
    weight = conv.weight.view(r, 3)
    out = conv.bias.expand_as(seq).clone()
    for t in range(frames):
        for k in range(3):
            if 0 <= t + k - 1 < frames:
                out[:, t] += weight[:, k] * seq[:, t + k - 1]
    return out.reshape(n, hw, r)


def test_the_temporal_mixing_forms_agree_with_the_definition_and_with_st_adapter():
    from peft_bench.methods.st_adapter import STAdapter

    torch.manual_seed(0)
    adapter = STAdapter(16, 8, (3, 1, 1), "none")
    torch.nn.init.normal_(adapter.conv.weight)
    torch.nn.init.normal_(adapter.conv.bias)
    x = torch.randn(2 * 4, 9, 8)  # (B*T, H*W, r): 2 clips of 4 frames, 3 x 3 patches
    reference = depthwise_temporal_conv_by_definition(x, adapter.conv, 4)
    for mix in temporal_conv.FORMS.values():
        torch.testing.assert_close(mix(x, adapter.conv, 4, 3), reference)
    # And the adapter computes it on its bottleneck.
    tokens = torch.randn(8, 10, 16)
    delta = adapter.up(depthwise_temporal_conv_by_definition(adapter.down(tokens[:, 1:]), adapter.conv, 4))
    torch.testing.assert_close(adapter(tokens, 4)[:, 1:], tokens[:, 1:] + delta)


def test_st_adapter_with_a_spatial_kernel_mixes_neighbouring_positions():
    from peft_bench.methods.st_adapter import STAdapter

    torch.manual_seed(0)
    adapter = STAdapter(16, 8, (3, 3, 3), "none")
    torch.nn.init.normal_(adapter.conv.weight)
    tokens = torch.randn(8, 10, 16)  # 2 clips of 4 frames, [CLS] + 3 x 3 patches
    changed = tokens.clone()
    changed[0, 1 + 4] += 1.0  # the centre patch of clip 0's first frame
    delta = (adapter(changed, 4) - adapter(tokens, 4))[:, 1:].abs().amax(dim=-1)  # (B*T, HW)
    # A 3x3x3 kernel reaches every patch of frames 0 and 1 (a 3x3 grid), nothing in frames 2-3 or clip 1.
    assert (delta[:2] > 0).all() and (delta[2:] == 0).all()
