"""The measured effect of each runner option on one training step (CPU figures, small settings).

    python -m benchmarks.runner_options      # writes results/runner_options.md and .csv

* backbone without autograd (automatic for post-backbone methods): linear_probe and attentional_pooling
  with it, and with it switched off (the backbone then keeps its graph as before this option existed);
* activation checkpointing: st_adapter and full_ft with and without;
* torch.compile: st_adapter with and without;
* bf16 autocast on CPU (fp32 is what ``precision: auto`` gives there): full_ft and st_adapter.

``--threads 1`` measures a step as ``peft-bench run`` takes it on the embedded default (one thread per run).

Each variant runs in a fresh process (``peft-bench bench``'s isolation), so resident-set peaks are its own.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .method_speed import BenchConfig, Row, measure_method, peak_matmul_flops, resolve_device

VARIANTS = [  # (what is compared, option name, method, BenchConfig changes, autograd through the frozen backbone)
    ("backbone without autograd", "off", "linear_probe", {}, True),
    ("backbone without autograd", "on", "linear_probe", {}, False),
    ("backbone without autograd", "off", "attentional_pooling", {}, True),
    ("backbone without autograd", "on", "attentional_pooling", {}, False),
    ("activation checkpointing", "off", "st_adapter", {}, False),
    ("activation checkpointing", "on", "st_adapter", {"activation_checkpointing": True}, False),
    ("activation checkpointing", "off", "full_ft", {}, False),
    ("activation checkpointing", "on", "full_ft", {"activation_checkpointing": True}, False),
    ("torch.compile", "off", "st_adapter", {}, False),
    ("torch.compile", "on", "st_adapter", {"compile": True}, False),
    ("bf16 autocast", "off", "full_ft", {"precision": "fp32"}, False),
    ("bf16 autocast", "on", "full_ft", {"precision": "bf16"}, False),
    ("bf16 autocast", "off", "st_adapter", {"precision": "fp32"}, False),
    ("bf16 autocast", "on", "st_adapter", {"precision": "bf16"}, False),
]


def measure_variant(cfg: BenchConfig, method: str, peak: float, frozen_autograd: bool) -> Row:
    if frozen_autograd:  # the behaviour before: the frozen backbone's graph is built and kept
        from peft_bench.method_api.model import VideoClassifier  # in the measured process: see method_speed.build

        VideoClassifier.backbone_is_frozen = lambda self: False
    return measure_method(cfg, method, peak)


def in_fresh_process(cfg: BenchConfig, method: str, peak: float, frozen_autograd: bool, threads: int = 0) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        payload = json.dumps(
            {
                "config": dataclasses.asdict(cfg),
                "method": method,
                "peak": peak,
                "frozen_autograd": frozen_autograd,
                "threads": threads,
            }
        )
        # The child imports this module under the name it has here (peft_bench.benchmarks or, from a clone's
        # root, benchmarks), from the caller's working folder.
        subprocess.run([sys.executable, "-m", __spec__.name, "--child", payload, str(out)], check=True)
        return Row(**json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        data = json.loads(argv[1])
        if data.get("threads"):
            torch.set_num_threads(data["threads"])
        fields = {**data["config"], "methods": tuple(data["config"]["methods"])}
        row = measure_variant(BenchConfig(**fields), data["method"], data["peak"], data["frozen_autograd"])
        Path(argv[2]).write_text(json.dumps(dataclasses.asdict(row)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner_options")
    parser.add_argument("--backbone", default="clip_vitb16")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per measured process (0: torch's)")
    parser.add_argument("--only", help="comma-separated comparisons to run (default: all)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--name", default="runner_options", help="results file stem")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    base = BenchConfig(
        backbone=args.backbone, frames=args.frames, batch=args.batch, warmup=1, repeats=args.repeats, isolate=True
    )
    device = resolve_device(base.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # the peak below, as the measured processes run
    peak = peak_matmul_flops(device, base.resolved_precision(device))
    chosen = [v for v in VARIANTS if not args.only or v[0] in args.only.split(",")]
    results = []
    for comparison, option, method, changes, frozen_autograd in chosen:
        row = in_fresh_process(dataclasses.replace(base, **changes), method, peak, frozen_autograd, args.threads)
        results.append((comparison, option, row))
        print(comparison, option, method, f"{row.train_step_ms:.0f} ms", f"{row.peak_memory_mib:.0f} MiB", flush=True)
    write(results, args, Path(args.results_dir), args.name, peak)
    return 0


def write(results, args, folder: Path, name: str, peak: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["comparison", "option", "method", "train_step_ms", "train_clips_per_s", "peak_memory_mib"])
        for comparison, option, row in results:
            writer.writerow(
                [
                    comparison,
                    option,
                    row.method,
                    round(row.train_step_ms, 1),
                    round(row.train_clips_per_s, 4),
                    round(row.peak_memory_mib, 1),
                ]
            )
    off = {(c, r.method): r for c, o, r in results if o == "off"}
    lines = [
        "# Runner options: measured effect on one training step",
        "",
        "Generated by `python -m benchmarks.runner_options`; do not edit by hand.",
        "",
        "| option | method | step ms off | step ms on | time on/off | peak RSS off (MiB) | peak RSS on (MiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for comparison, option, row in results:
        base = off.get((comparison, row.method))
        if option == "on" and base is not None:
            lines.append(
                f"| {comparison} | {row.method} | {base.train_step_ms:.0f} | {row.train_step_ms:.0f} | "
                f"{row.train_step_ms / base.train_step_ms:.2f} | {base.peak_memory_mib:.0f} | "
                f"{row.peak_memory_mib:.0f} |"
            )
    first = results[0][2]
    lines += [
        "",
        (
            f"- {first.backbone}, random weights, {first.frames} frames, {first.resolution} px, batch "
            f"{first.batch}, the device's `auto` precision (bf16 autocast rows aside), {first.hardware}; each "
            f"variant in a fresh process; one warm-up step (it compiles, for torch.compile), median of {args.repeats}."
        ),
        "- peak RSS: the whole process's resident set (torch and the model included), sampled every 2 ms.",
        (
            f"- the device's matmul rate at these threads: {peak / 1e9:.0f} GFLOP/s (square 2048 products in the "
            "step's precision, `method_speed.peak_matmul_flops`)."
        ),
        f"- {time.strftime('%Y-%m-%d')}." + (f" {args.note}" if args.note else ""),
    ]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
