"""A run's wall time with tracking away, against the same run with tracking up.

    python -m benchmarks.tracking_outage          # writes results/tracking_outage.md

The same `peft-bench run` (linear_probe on tiny, synthetic-appearance, a few epochs; mlflow's own retry
settings left at their defaults, as in a user's run) is timed end to end, each variant in a fresh
process and folder, interleaved over the repeats so that a change in the machine's load hits all of them:

* up: an `mlflow server` on 127.0.0.1 that answers;
* refused: a port nothing listens on (the issue's `http://127.0.0.1:9`, which blocked a run ~8.5 min);
* never answers: a socket that accepts connections and never replies (a hung or firewalled server).

The claim checked: with tracking away a run takes within 5% of the time it takes with tracking up.
Wall-clock figures: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RUN = [
    "run",
    "--methods",
    "linear_probe",
    "--dataset",
    "synthetic-appearance",
    "--pretrained",
    "none",
    "--frames",
    "2",
    "--no-progress",
    "--no-table",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.batch_size=16",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        raise SystemExit("no mlflow executable beside this python")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'store.db'}",
            "--artifacts-destination",
            str(folder / "a"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit("the mlflow server did not start within 120 s")


def timed_run(uri: str, epochs: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `peft-bench run` from its start to its exit, in a fresh folder. The CPU time
    does not depend on the machine's load; waiting (what an outage could add) shows in the wall time only."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "peft_bench.cli", *RUN, "--set", f"train.epochs={epochs}", "--tracking-uri", uri],
            cwd=folder,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the timed run (default 4)")
    parser.add_argument("--out", default="results/tracking_outage.md")  # relative: the clone's root, like the others
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        server, up_uri = start_server(Path(folder))
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts (the kernel does), never answers
        variants = {
            "up": up_uri,
            "refused": f"http://127.0.0.1:{free_port()}",
            "never answers": f"http://127.0.0.1:{silent.getsockname()[1]}",
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        try:
            timed_run(up_uri, 1)  # warm caches (synthetic data, tiny weights) outside the measurement
            for repeat in range(args.repeats):
                for name, uri in variants.items():
                    wall, used = timed_run(uri, args.epochs)
                    times[name].append(wall)
                    cpu[name].append(used)
                    print(f"repeat {repeat + 1}: {name}: {wall:.1f} s ({used:.1f} s CPU)", flush=True)
        finally:
            silent.close()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()

    up = statistics.median(times["up"])
    lines = [
        "# A run's wall time with tracking away",
        "",
        (
            f"`python -m benchmarks.tracking_outage --repeats {args.repeats} --epochs {args.epochs}`: "
            f"`peft-bench run` of linear_probe on tiny (synthetic-appearance, 2 frames, {args.epochs} epochs), "
            "end to end in a fresh process and folder, mlflow's retry settings at their defaults; the median of "
            f"{args.repeats} interleaved repeats."
        ),
        "",
        "| tracking | median wall time (s) | runs (s) | vs up | median CPU time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
            f"{100 * (median / up - 1):+.1f}% | {statistics.median(cpu[name]):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
