"""Speed and memory of every method on the current device: ``peft-bench bench``.

For each method, on random clips of the given shape (backbone, frames, resolution, batch, precision):

* training-step throughput: forward, loss, backward, optimizer step; warm-up steps first, then the median
  of timed repeats (clips/s);
* evaluation throughput: forward without autograd, same batch (clips/s);
* peak memory: on GPU, allocated and reserved (torch's peak counters); on CPU, the process's resident set,
  sampled during the steps (each method in a fresh process by default, so earlier methods do not count);
* the FLOPs a training step really performs, counted by ``torch.utils.flop_counter`` on one step (forward
  and backward as dispatched: a frozen backbone run without autograd has no backward; 1 multiply-add =
  2 FLOPs), their rate, and that rate as a share of the device's peak matrix rate, measured here on large
  square matmuls in the same precision.

Results: ``results/<name>.csv`` and ``.md``, and one mlflow run per method (experiment ``peft-bench-speed``),
with the hardware named.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from peft_bench.system import cpu_model_name

log = logging.getLogger(__name__)

EXPERIMENT = "peft-bench-speed"


@dataclass
class BenchConfig:
    backbone: str = "clip_vitb16"
    pretrained: str = "none"  # random weights: speed does not depend on their values
    frames: int = 8
    resolution: int = 0  # 0 = the backbone's input size (the only one its position embedding fits)
    batch: int = 2
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16" or "fp32"
    methods: tuple[str, ...] = ()  # () = every registered method
    warmup: int = 1
    repeats: int = 3
    num_classes: int = 400
    device: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    frozen_bf16: bool = False
    isolate: bool = True  # each method in a fresh process: a clean peak resident set
    matmul_size: int = 0  # 0 = 2048 on CPU, 8192 on GPU

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision}")
        return self.precision


@dataclass
class Row:
    method: str
    trainable_params: int
    train_clips_per_s: float
    train_step_ms: float
    eval_clips_per_s: float
    step_gflop: float  # FLOPs one training step performs (forward + backward), in 1e9
    achieved_tflops: float
    share_of_peak_pct: float
    peak_memory_mib: float  # GPU: reserved; CPU: resident set
    gpu_allocated_mib: float
    gpu_reserved_mib: float
    backbone: str
    frames: int
    resolution: int
    batch: int
    precision: str
    device: str
    hardware: str


# --- the device ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    from peft_bench.train.runner import resolve_device as resolve  # loads the runner: see build()

    return resolve(name)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpu_model_name() or "CPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores visible)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_matmul_flops(device: torch.device, precision: str, size: int = 0, repeats: int = 5) -> float:
    """The device's matrix rate in FLOP/s (2 n^3 per n x n product), measured on large square matmuls."""
    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    chain = 10 if device.type == "cuda" else 1  # many products per timing: launch overhead drops out

    def products():
        for _ in range(chain):
            torch.mm(a, b)

    seconds = median_seconds(products, device, warmup=2, repeats=repeats)
    return 2 * size**3 * chain / seconds


# --- memory -------------------------------------------------------------------------------------------


def resident_set_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak so far is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ResidentSetPeak:
    """The largest resident set seen while the block runs (a thread samples it every 2 ms; torch releases
    the GIL inside its kernels, so the samples land during the steps)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_set_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak = resident_set_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_set_bytes())


# --- one method ---------------------------------------------------------------------------------------


def build(cfg: BenchConfig, method: str, device: torch.device):
    # peft_bench's training modules (data, backbones: torchvision, open_clip) load when a benchmark runs, not when
    # the CLI builds `bench`'s parser from this module on every command.
    from peft_bench.backbones import create_backbone
    from peft_bench.config import SpeedConfig  # (the same)
    from peft_bench.method_api.registry import RunContext, get_method  # (the same)
    from peft_bench.train.efficiency import apply_speed_options  # (the same)

    backbone = create_backbone(cfg.backbone, cfg.pretrained)
    resolution = cfg.resolution or backbone.input_size
    if resolution != backbone.input_size:
        raise ValueError(f"{cfg.backbone} takes {backbone.input_size} px (its position embedding), not {resolution}")
    spec = get_method(method)
    # The method's configuration for this backbone (e.g. fewer prompts on tiny), K400 preset; what it
    # leaves to the run (its temporal embedding's length) from the benchmark's clips.
    context = RunContext(num_classes=cfg.num_classes, num_frames=cfg.frames)
    model = spec.create(backbone, context, spec.make_config(["k400", cfg.backbone])).to(device)
    speed = SpeedConfig(
        frozen_bf16=cfg.frozen_bf16, activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile
    )
    step_model, _ = apply_speed_options(model, speed, device)
    return model, step_model, resolution


def step_flops(step) -> float:
    """FLOPs one call of ``step`` performs, as dispatched (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measure_method(cfg: BenchConfig, method: str, peak_flops: float) -> Row:
    # peft_bench's training modules (data, backbones: torchvision, open_clip) load when a benchmark runs, not when
    # the CLI builds `bench`'s parser from this module on every command.
    from peft_bench.config import TrainConfig
    from peft_bench.method_api.model import count_parameters  # (the same)
    from peft_bench.method_api.optim import make_optimizer  # (the same)

    device = resolve_device(cfg.device)
    precision = cfg.resolved_precision(device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with ResidentSetPeak() as rss:
        model, step_model, resolution = build(cfg, method, device)
        optimizer = make_optimizer(model, TrainConfig(lr=1e-4))
        video = torch.randn(cfg.batch, cfg.frames, 3, resolution, resolution, device=device)
        labels = torch.randint(0, cfg.num_classes, (cfg.batch,), device=device)

        def train_step():
            with autocast(device, precision):
                logits = step_model(video)
            F.cross_entropy(logits.float(), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        @torch.no_grad()
        def eval_step():
            with autocast(device, precision):
                step_model(video)

        model.train()
        # The first step is counted (and, without torch.compile, is the first warm-up step: it runs the same work).
        if cfg.compile:
            flops = step_flops(_uncompiled_step(model, optimizer, video, labels, device, precision))
        else:
            flops = step_flops(train_step)
        train_s = median_seconds(train_step, device, max(0, cfg.warmup - (not cfg.compile)), cfg.repeats)
        model.eval()
        eval_s = median_seconds(eval_step, device, cfg.warmup, cfg.repeats)
    allocated = reserved = 0.0
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(device) / 2**20
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
    achieved = flops / train_s
    return Row(
        method=method,
        trainable_params=count_parameters(model).trainable,
        train_clips_per_s=cfg.batch / train_s,
        train_step_ms=1000 * train_s,
        eval_clips_per_s=cfg.batch / eval_s,
        step_gflop=flops / 1e9,
        achieved_tflops=achieved / 1e12,
        share_of_peak_pct=100 * achieved / peak_flops,
        peak_memory_mib=reserved if device.type == "cuda" else rss.peak / 2**20,
        gpu_allocated_mib=allocated,
        gpu_reserved_mib=reserved,
        backbone=cfg.backbone,
        frames=cfg.frames,
        resolution=resolution,
        batch=cfg.batch,
        precision=precision,
        device=device.type,
        hardware=hardware_name(device),
    )


def _uncompiled_step(model, optimizer, video, labels, device, precision):
    # The FLOP counter cannot look inside a compiled graph: count the same step on the plain module.
    def step():
        with autocast(device, precision):
            logits = model(video)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_in_fresh_process(cfg: BenchConfig, method: str, peak_flops: float) -> Row:
    """``measure_method`` in a child process, so its resident set holds this method alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        payload = json.dumps({"config": dataclasses.asdict(cfg), "method": method, "peak_flops": peak_flops})
        # The child imports this module under the name it has here: peft_bench.benchmarks.method_speed when
        # `peft-bench bench` runs it (from any folder), benchmarks.method_speed from a clone's root.
        subprocess.run([sys.executable, "-m", __spec__.name, "--child", payload, str(out)], check=True)
        return Row(**json.loads(out.read_text()))


def run_bench(cfg: BenchConfig, on_row=None) -> tuple[list[Row], float]:
    """Every method's row, and the measured peak matrix rate (FLOP/s) they are compared with."""
    from peft_bench.method_api.registry import available_methods  # imports every method: see build()

    device = resolve_device(cfg.device)
    precision = cfg.resolved_precision(device)
    peak = peak_matmul_flops(device, precision, cfg.matmul_size)
    log.info("peak %s matmul rate on %s: %.2f TFLOP/s", precision, hardware_name(device), peak / 1e12)
    rows = []
    for method in cfg.methods or tuple(paper_order(available_methods())):
        started = time.time()
        row = measure_in_fresh_process(cfg, method, peak) if cfg.isolate else measure_method(cfg, method, peak)
        log.info(
            "%s: %.2f clips/s train, %.2f eval, %.0f MiB (%.0f s)",
            method,
            row.train_clips_per_s,
            row.eval_clips_per_s,
            row.peak_memory_mib,
            time.time() - started,
        )
        rows.append(row)
        if on_row is not None:  # e.g. write what is measured so far: a slow bench keeps its rows
            on_row(rows, peak)
    return rows, peak


def paper_order(methods: list[str]) -> list[str]:
    # pandas comes with the reference tables: not in a measured process's resident set, not at `--help`
    from peft_bench.reference import paper_method_order

    order = paper_method_order()
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


# --- output -------------------------------------------------------------------------------------------


def write_results(
    rows: list[Row], cfg: BenchConfig, peak: float, results_dir: Path, name: str, note: str = ""
) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = results_dir / f"{name}.csv", results_dir / f"{name}.md"
    order = paper_order([r.method for r in rows])
    rows = sorted(rows, key=lambda r: order.index(r.method))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in dataclasses.fields(Row)])
        for row in rows:
            writer.writerow([round(v, 4) if isinstance(v, float) else v for v in dataclasses.astuple(row)])
    md_path.write_text(markdown(rows, cfg, peak, note))
    return csv_path, md_path


def markdown(rows: list[Row], cfg: BenchConfig, peak: float, note: str = "") -> str:
    first = rows[0] if rows else None
    gpu = first is not None and first.device == "cuda"
    memory = "peak reserved (MiB)" if gpu else "peak resident set (MiB)"
    lines = [
        (
            f"# Method speed: {cfg.backbone}, {cfg.frames} frames, {first.resolution if first else '?'} px, "
            f"batch {cfg.batch}, {first.precision if first else '?'}"
        ),
        "",
        "Generated by `peft-bench bench` (benchmarks/method_speed.py); do not edit by hand.",
        "",
        f"| method | trainable | train clips/s | step ms | eval clips/s | step GFLOP | TFLOP/s | % of peak | "
        f"{memory} |" + (" peak allocated (MiB) |" if gpu else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.trainable_params / 1e6:.2f}M | {r.train_clips_per_s:.3g} | "
            f"{r.train_step_ms:.0f} | {r.eval_clips_per_s:.3g} | {r.step_gflop:.3g} | "
            f"{r.achieved_tflops:.3g} | {r.share_of_peak_pct:.1f} | {r.peak_memory_mib:.0f} |"
            + (f" {r.gpu_allocated_mib:.0f} |" if gpu else "")
        )
    options = [k for k in ("activation_checkpointing", "compile", "frozen_bf16") if getattr(cfg, k)]
    random_weights = "random (--pretrained none): speed does not depend on their values"
    weights = random_weights if cfg.pretrained == "none" else cfg.pretrained
    memory = "torch peak reserved and allocated" if gpu else "peak resident set of the process, sampled every 2 ms"
    lines += [
        "",
        "## Setup",
        "",
        (
            f"- hardware: {first.hardware if first else '?'}; peak {first.precision if first else ''} matmul rate "
            f"measured here: {peak / 1e12:.3g} TFLOP/s."
        ),
        (f"- weights: {weights}; {cfg.num_classes} classes; method presets: k400."),
        (
            f"- {max(cfg.warmup, 1)} warm-up step(s) (the first also counts the FLOPs), then the median of "
            f"{cfg.repeats} timed step(s); a training step is forward + loss + backward + AdamW step."
        ),
        (
            "- step GFLOP: counted by torch.utils.flop_counter on one training step as dispatched (forward and "
            "backward; a frozen backbone run without autograd has no backward); 1 multiply-add = 2 FLOPs."
        ),
        (f"- memory: {memory}{', each method in a fresh process' if cfg.isolate else ''}."),
        f"- runner options: {', '.join(options) or 'none'}.",
        f"- {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, Python {platform.python_version()}.",
    ]
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def log_to_mlflow(rows: list[Row], cfg: BenchConfig, peak: float, tracking_uri: str, run_root: Path) -> None:
    """One mlflow run per row; each one's journal in ``run_root/<run name>``."""
    from peft_bench.track.journal import JournaledTracker  # mlflow: only once the results are in (see paper_order)

    for row in rows:
        name = f"bench-{row.method}-{row.backbone}"
        with JournaledTracker(run_root / name, tracking_uri, EXPERIMENT, name) as tracker:
            tracker.log_config({**dataclasses.asdict(cfg), "method": row.method, "precision": row.precision})
            tracker.set_tags(
                {
                    "peft_bench.kind": "bench",
                    "peft_bench.method": row.method,
                    "peft_bench.backbone": row.backbone,
                    "peft_bench.hardware": row.hardware,
                    "peft_bench.device": row.device,
                }
            )
            tracker.log_metrics(
                {
                    k: v
                    for k, v in dataclasses.asdict(row).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                | {"peak_matmul_tflops": peak / 1e12}
            )


# --- command line -------------------------------------------------------------------------------------


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory of every method on this device")
    p.add_argument("--backbone", default=BenchConfig.backbone)
    p.add_argument("--pretrained", default=BenchConfig.pretrained, help="weights (default none: random)")
    p.add_argument("--frames", type=int, default=BenchConfig.frames)
    p.add_argument("--resolution", type=int, default=0, help="input size (default: the backbone's)")
    p.add_argument("--batch", type=int, default=BenchConfig.batch)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--methods", help="comma-separated (default: all)")
    p.add_argument("--warmup", type=int, default=BenchConfig.warmup)
    p.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--matmul-size", type=int, default=0, help="side of the peak-rate matmuls (default 2048 CPU, 8192 GPU)"
    )
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--frozen-bf16", action="store_true")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure every method in this process (faster; resident-set peaks then include what earlier methods left)",
    )
    p.add_argument("--name", help="results file stem (default: method_speed_<backbone>_<device>)")
    p.add_argument("--note", default="", help="a remark for the setup list")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--tracking-uri", help="mlflow URI (default: MLFLOW_TRACKING_URI, else SQLite in --results-dir)")
    p.add_argument("--no-mlflow", action="store_true")


def config_from_args(args) -> BenchConfig:
    return BenchConfig(
        backbone=args.backbone,
        pretrained=args.pretrained,
        frames=args.frames,
        resolution=args.resolution,
        batch=args.batch,
        precision=args.precision,
        methods=tuple(m.strip() for m in (args.methods or "").split(",") if m.strip()),
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        activation_checkpointing=args.activation_checkpointing,
        compile=args.compile,
        frozen_bf16=args.frozen_bf16,
        isolate=not args.in_process,
        matmul_size=args.matmul_size,
    )


def cmd_bench(args) -> int:
    from peft_bench.track.tracking import default_tracking_uri  # mlflow: see paper_order

    cfg = config_from_args(args)
    device = resolve_device(cfg.device)
    name = args.name or f"method_speed_{cfg.backbone}_{device.type}"

    def write(rows, peak):
        return write_results(rows, cfg, peak, Path(args.results_dir), name, args.note)

    rows, peak = run_bench(cfg, on_row=write)
    csv_path, md_path = write(rows, peak)
    if not args.no_mlflow:
        log_to_mlflow(
            rows,
            cfg,
            peak,
            args.tracking_uri or default_tracking_uri(Path(args.results_dir)),
            Path(args.results_dir) / "runs",
        )
    print(md_path.read_text())
    print(f"(saved {csv_path} and {md_path})", file=sys.stderr)
    return 0


def _child(payload: str, out: str) -> int:
    data = json.loads(payload)
    fields = data["config"]
    fields["methods"] = tuple(fields["methods"])
    row = measure_method(BenchConfig(**fields), data["method"], data["peak_flops"])
    Path(out).write_text(json.dumps(dataclasses.asdict(row)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.method_speed")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cmd_bench(parser.parse_args(["bench", *argv]))


if __name__ == "__main__":
    raise SystemExit(main())
