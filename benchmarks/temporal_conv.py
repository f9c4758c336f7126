"""ST-Adapter's temporal depthwise convolution in three forms: nn.Conv3d on (B, r, T, H, W), a depthwise
Conv1d over each position's frames (what methods/st_adapter.py runs for a (3, 1, 1) kernel), and a
time-shifted weighted sum; at the size of a clip_vitb16 adapter (width 384, 8 frames, 14 x 14 patches)
and of the embedded default's (width 384 on the tiny backbone's 96-wide tokens, 4 x 4 patches, batch 16).

    python -m benchmarks.temporal_conv      # writes results/temporal_conv.md

All forms compute y[t] = w0 x[t-1] + w1 x[t] + w2 x[t+1] + b per channel with zero padding, from the same
parameters. Each is timed (forward + backward, median of repeats) twice: the convolution alone, in the
layout it needs, and inside the whole adapter (down projection, temporal mixing, up projection), which
is the part of a training step the choice can change. Outputs and gradients are checked equal first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peft_bench.methods.st_adapter import mix_in_space_time, mix_over_time


def conv3d_mix(x: Tensor, conv: nn.Conv3d, frames: int, side: int) -> Tensor:
    """(B*T, HW, r) -> same, through Conv3d on (B, r, T, H, W) (st_adapter's form for spatial kernels)."""
    return mix_in_space_time(x, conv, frames, side)


def conv1d_mix(x: Tensor, conv: nn.Conv3d, frames: int, side: int) -> Tensor:
    """The same from a depthwise Conv1d over (B*HW, r, T) (st_adapter's form for a (3, 1, 1) kernel)."""
    return mix_over_time(x, conv, frames)


def shifted_sum_mix(x: Tensor, conv: nn.Conv3d, frames: int, side: int) -> Tensor:
    """The same result from time-shifted copies, in the token layout (no permutes)."""
    n, hw, r = x.shape
    kt = conv.kernel_size[0]
    seq = F.pad(x.view(n // frames, frames, hw, r), (0, 0, 0, 0, kt // 2, kt // 2))  # zero frames at both ends
    weight = conv.weight.view(r, kt)
    out = conv.bias.view(1, 1, 1, r)
    for k in range(kt):
        out = out + seq[:, k : k + frames] * weight[:, k]
    return out.reshape(n, hw, r)


FORMS = {"Conv3d": conv3d_mix, "Conv1d over time": conv1d_mix, "time-shifted sum": shifted_sum_mix}


class Adapter(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        self.conv = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), groups=width)

    def forward(self, x: Tensor, frames: int, side: int, mix) -> Tensor:
        return x + self.up(mix(self.down(x), self.conv, frames, side))


def median_ms(fn, repeats: int, device: torch.device) -> float:
    def synced():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synced()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synced()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def check_equal(adapter: Adapter, x: Tensor, frames: int, side: int) -> float:
    """Largest difference of outputs and input gradients between the forms (asserted small)."""
    results = []
    for mix in FORMS.values():
        xi = x.clone().requires_grad_(True)
        out = adapter(xi, frames, side, mix)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, adapter.conv.weight.grad.clone()))
        adapter.zero_grad(set_to_none=True)
    diff = 0.0
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            diff = max(diff, (a - b).abs().max().item())
    return diff


CPU = torch.device("cpu")


def measure(batch: int, frames: int, side: int, dim: int, width: int, repeats: int, device: torch.device = CPU):
    torch.manual_seed(0)
    adapter = Adapter(dim, width)
    nn.init.normal_(adapter.conv.weight, std=0.2)
    adapter = adapter.to(device)
    x = torch.randn(batch * frames, side * side, dim, device=device)
    diff = check_equal(adapter, x, frames, side)
    low = torch.randn(batch * frames, side * side, width, device=device, requires_grad=True)
    rows = []
    for name, mix in FORMS.items():
        alone = median_ms(lambda mix=mix: mix(low, adapter.conv, frames, side).sum().backward(), repeats, device)
        whole = median_ms(lambda mix=mix: adapter(x, frames, side, mix).sum().backward(), repeats, device)
        rows.append((name, alone, whole))
    print(f"largest difference between the forms (outputs and gradients): {diff:.2e}")
    return rows, diff


# (label, batch, frames, side, dim, width): a clip_vitb16 adapter, and the embedded default's (tiny backbone).
SIZES = (("clip_vitb16", 2, 8, 14, 768, 384), ("tiny", 16, 8, 4, 96, 384))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.temporal_conv")
    parser.add_argument(
        "--batch", type=int, default=None, help="clips per batch (default: 2 for clip_vitb16, 16 for tiny)"
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="temporal_conv", help="results file stem")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    lines = [
        "# ST-Adapter temporal mixing: Conv3d, Conv1d over time and a time-shifted sum",
        "",
        "Generated by `python -m benchmarks.temporal_conv`; do not edit by hand.",
        "",
        "| adapter size | form | mixing alone, fwd+bwd (ms) | vs Conv3d | whole adapter, fwd+bwd (ms) | vs Conv3d |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    sizes, diffs = [], []
    for label, default_batch, frames, side, dim, width in SIZES:
        batch = args.batch or default_batch
        rows, diff = measure(batch, frames, side, dim, width, args.repeats, device)
        base_alone, base_whole = rows[0][1], rows[0][2]
        for name, alone, whole in rows:
            lines.append(
                f"| {label} | {name} | {alone:.1f} | {base_alone / alone:.2f}x | {whole:.1f} | "
                f"{base_whole / whole:.2f}x |"
            )
        sizes.append(
            f"{label}: width {width} on {dim}-wide tokens, {frames} frames, {side}x{side} patches, batch {batch}"
        )
        diffs.append(diff)
    lines += [
        "",
        f"- adapter sizes: {'; '.join(sizes)}; fp32, {device.type}; median of {args.repeats} after one warm-up.",
        f"- largest difference between the forms' outputs and gradients: {max(diffs):.1e} (checked before timing).",
        (
            f"- {time.strftime('%Y-%m-%d')}, {platform.processor() or 'CPU'}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}."
        ),
    ]
    if args.note:
        lines.append(f"- {args.note}")
    text = "\n".join(lines) + "\n"
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.results_dir) / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
