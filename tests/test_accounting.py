"""GFLOPs and parameter accounting: parity with the paper's figures, and the counting rules themselves."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.measure.accounting import (
    Account,
    account,
    add_account_parser,
    cmd_account,
    count_flops,
    dataset_setting,
    parse_views,
    render,
)

# (method, backbone, preset, classes, paper GFLOPs, reference fvcore GFLOPs; 8 frames, 224 px, 3 views).
# The reference column is peft_bench/reference/README.md's "fvcore, all ops"; the paper's are ±1%.
VIT_B_PARITY = [
    ("linear_probe", "clip_vitb16", "k400", 400, 419, 421.97),
    ("st_adapter", "clip_vitb16", "k400", 400, 455, 455.33),
    ("st_adapter", "clip_vitb16", "ssv2", 174, 489, 488.69),
]
VIT_L_PARITY = [
    ("linear_probe", "clip_vitl14", "k400", 400, 1941, 1945.8),
    ("st_adapter", "clip_vitl14", "k400", 400, 2062, 2062.0),  # layers=None: 24 pre-MLP adapters
]


@pytest.mark.slow
@pytest.mark.parametrize("method,backbone,preset,classes,paper,reference", VIT_B_PARITY)
def test_vit_b16_gflops_match_the_paper(method, backbone, preset, classes, paper, reference):
    a = account(method, backbone, num_classes=classes, preset=preset, frames=8, views=3)
    assert a.gflops_total == pytest.approx(paper, rel=0.01)
    assert a.gflops_total == pytest.approx(reference, abs=0.01)
    assert a.uncounted_ops == {}


def test_linear_plus_matmul_convention_gives_the_papers_419():
    a = account("linear_probe", "clip_vitb16", num_classes=400, convention="matmul")
    assert a.gflops_total == pytest.approx(418.74, abs=0.01)


def test_parameters_of_the_released_st_adapter_configurations():
    k400 = account("st_adapter", "tiny", num_classes=400, preset="k400", frames=2)
    # tiny is D=96; width 384 adapters: down 96*384+384, conv 4*384, up 384*96+96, 4 blocks; head 96*400+400.
    per_adapter = 96 * 384 + 384 + 4 * 384 + 384 * 96 + 96
    assert k400.trainable_params == 4 * per_adapter + 96 * 400 + 400
    assert k400.total_params > k400.trainable_params


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PEFT_BENCH_SLOW"), reason="ViT-L/14 takes 10-20 s per count; PEFT_BENCH_SLOW=1")
@pytest.mark.parametrize("method,backbone,preset,classes,paper,reference", VIT_L_PARITY)
def test_vit_l14_gflops_match_the_paper(method, backbone, preset, classes, paper, reference):
    a = account(method, backbone, num_classes=classes, preset=preset)
    assert a.gflops_total == pytest.approx(paper, rel=0.01)
    assert a.gflops_total == pytest.approx(reference, abs=0.05)


# --- counting rules on small models ---------------------------------------------------------------------


class SelfAttention(nn.Module):
    """One multi-head self-attention layer, either through SDPA or written out with matrix products."""

    def __init__(self, dim: int = 32, heads: int = 4, fused: bool = True):
        super().__init__()
        self.qkv, self.out, self.heads, self.fused = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads, fused

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5).softmax(dim=-1)
            attended = weights @ v
        return self.out(attended.transpose(1, 2).reshape(n, length, dim))


def test_sdpa_counts_the_same_as_explicit_matrix_products():
    x = torch.zeros(2, 10, 32)
    fused, explicit = count_flops(SelfAttention(fused=True), (x,)), count_flops(SelfAttention(fused=False), (x,))
    projections = 2 * 10 * 32 * (3 * 32 + 32)
    attention = 2 * 2 * 10 * 10 * 32  # two products of L*S*E each, summed over heads
    assert fused.total == explicit.total == projections + attention
    assert fused.by_operator["attention"] == attention
    assert fused.uncounted_ops == explicit.uncounted_ops == {}


class AttentionKernel(nn.Module):
    """Calls one of SDPA's kernels directly, as a trace may show them."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def forward(self, q, k, v):
        return self.kernel(q, k, v)[0]


@pytest.mark.parametrize(
    "kernel",
    [torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, torch.ops.aten._scaled_dot_product_attention_math],
)
def test_attention_kernels_are_counted_like_the_public_op(kernel):
    q, k, v = torch.zeros(2, 4, 10, 8), torch.zeros(2, 4, 6, 8), torch.zeros(2, 4, 6, 8)
    counted = count_flops(AttentionKernel(kernel), (q, k, v))
    assert counted.by_operator == {"attention": 2 * 4 * 10 * 6 * (8 + 8)}


def test_matmul_with_a_broadcast_first_operand():
    class Product(nn.Module):
        def forward(self, a, b):
            return a @ b

    assert count_flops(Product(), (torch.zeros(10, 8), torch.zeros(3, 8, 6))).total == 3 * 10 * 6 * 8


def test_st_adapter_grid_side_traces():
    """ST-Adapter finds its patch grid from the token count; that must survive tracing (sizes are tensors)."""
    from peft_bench.methods.st_adapter import STAdapter

    adapter = STAdapter(dim=8, width=4, kernel_size=(3, 1, 1), activation="none")

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = adapter

        def forward(self, x):
            return self.adapter(x, 2)

    assert count_flops(Wrapped(), (torch.zeros(2, 17, 8),)).uncounted_ops == {}


def test_fused_multihead_attention_counts_projections_and_attention():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).requires_grad_(False)  # frozen + eval: fused path

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x)[0]

    counted = count_flops(Wrapped(), (torch.zeros(2, 10, 32),))
    assert counted.total == 2 * 10 * 32 * 32 * 4 + 2 * 2 * 10 * 10 * 32
    assert counted.uncounted_ops == {}


def test_depthwise_conv3d_counts_one_kernel_per_output_channel_and_position():
    channels, kernel, grid = 12, (3, 1, 1), (8, 5, 5)
    conv = nn.Conv3d(channels, channels, kernel, padding=(1, 0, 0), groups=channels)
    counted = count_flops(conv, (torch.zeros(1, channels, *grid),))
    assert counted.total == channels * 3 * 1 * 1 * (8 * 5 * 5)  # not channels * channels * ...


def test_an_op_without_handler_is_reported_not_dropped():
    class Distances(nn.Module):
        def forward(self, x):
            return torch.cdist(x, x).relu() + 1  # cdist has no handler; relu and + are free by convention

    counted = count_flops(Distances(), (torch.zeros(1, 6, 4),))
    assert counted.uncounted_ops == {"aten::cdist": 1}


def test_matmul_convention_leaves_out_convolutions_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2), nn.LayerNorm(4), nn.Linear(4, 4))
    x = torch.zeros(1, 3, 8, 8)
    everything, matmul = count_flops(model, (x,), "all"), count_flops(model, (x,), "matmul")
    assert matmul.total == 8 * 4 * 4
    assert everything.total == matmul.total + 8 * 3 * 16 * 4 + 5 * 8 * 4  # conv, then fvcore's norm estimate
    assert matmul.uncounted_ops == {}


@pytest.mark.slow
def test_every_registered_method_is_counted_fully_on_tiny():
    from peft_bench.method_api.registry import available_methods

    for method in available_methods():
        for preset in ("k400", "ssv2"):
            a = account(method, "tiny", num_classes=10, frames=4, preset=preset)
            assert a.gflops_per_view > 0, method
            assert a.uncounted_ops == {}, f"{method}: ops without a FLOP handler: {a.uncounted_ops}"


# --- command ----------------------------------------------------------------------------------------------


def test_views_and_dataset_settings():
    assert parse_views("3x1") == 3 and parse_views("1x3") == 3 and parse_views("4") == 4
    with pytest.raises(ValueError, match="3x"):
        parse_views("3x")
    assert dataset_setting("k400") == (400, "k400")
    assert dataset_setting("ssv2") == (174, "ssv2")
    assert dataset_setting("synthetic-appearance") == (8, "k400")
    assert dataset_setting("synthetic-motion") == (10, "ssv2")


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_account_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["account", *argv])


def test_account_command_writes_every_format(tmp_path, capsys):
    out = tmp_path / "account.json"
    args = _parse(
        [
            "--methods",
            "linear_probe,st_adapter",
            "--backbone",
            "tiny",
            "--dataset",
            "synthetic-motion",
            "--frames",
            "2",
            "--views",
            "3x1",
            "--format",
            "json",
            "--out",
            str(out),
        ]
    )
    assert cmd_account(args) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["linear_probe", "st_adapter"]
    assert all(r["num_classes"] == 10 and r["views"] == 3 for r in rows)
    assert rows[1]["preset"] == "ssv2" and rows[0]["preset"] is None
    assert json.loads(capsys.readouterr().out) == rows

    accounts = [Account(**rows[0])]
    assert render(accounts, "csv").splitlines()[0].startswith("method,backbone,num_classes")
    markdown = render(accounts, "markdown")
    assert "| linear_probe |" in markdown and "'all'" in markdown


def test_account_command_reports_a_failing_method_and_keeps_the_others(capsys):
    args = _parse(["--methods", "linear_probe,no_such_method", "--backbone", "tiny", "--frames", "2"])
    assert cmd_account(args) == 1
    captured = capsys.readouterr()
    assert "| linear_probe |" in captured.out and "no_such_method" in captured.err
