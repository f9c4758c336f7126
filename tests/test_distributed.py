"""Training over several processes: `peft-bench run` under torchrun (2 gloo processes on CPU train one run, and its
metrics cover both ranks), and DDP's step against one process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from mlflow.tracking import MlflowClient
from torch.nn.parallel import DistributedDataParallel

from peft_bench.backbones import create_backbone
from peft_bench.config import resolve_config
from peft_bench.method_api.optim import make_optimizer
from peft_bench.method_api.registry import get_method
from peft_bench.train import runner

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_gloo_processes_make_one_run_with_metrics_gathered_over_both(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "peft_bench.cli",
        "run",
        "--methods",
        "linear_probe",
        "--dataset",
        "synthetic-appearance",
        "--pretrained",
        "none",
        "--frames",
        "2",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "runs"),
        "--no-table",
        "--no-progress",
        "--set",
        "train.epochs=1",
        "--set",
        "train.val_subset=9",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.num_workers=0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("peft-bench").experiment_id])
    assert len(runs) == 1  # rank 0 alone tracks
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["peft_bench.world_size"] == "2" and run.data.tags["peft_bench.rank_batch"] == "8"
    assert run.data.params["train.batch_size"] == "16"  # the global batch, as configured
    # 9 validation clips split 5 + 4: a rank alone would report 5 or 4.
    assert run.data.metrics["eval_clips"] == 9
    # 480 training clips, half per rank, every one of them counted in the epoch's loss and accuracy.
    assert run.data.metrics["train_clips"] == 480


# --- DDP against one process -------------------------------------------------------------------------------
#
# Two gloo processes, each with half of a 4-clip batch in micro-batches of one (so DDP's no_sync carries the first
# backward pass of each step), against one process on the whole batch at once: the same gradients and, after one
# AdamW step, the same weights. Once on clips (ST-Adapter: trainable layers inside the frozen backbone) and once on
# cached backbone features (attentional pooling: DDP wraps only what follows the backbone).

CLIPS, FRAMES, CLASSES = 4, 2, 4


class Batches(torch.utils.data.Dataset):
    """Items the runner's loaders yield: a clip of one view, or the cached features of one."""

    num_classes = CLASSES

    def __init__(self, key: str, inputs: torch.Tensor, labels: torch.Tensor):
        self.key, self.inputs, self.labels = key, inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {self.key: self.inputs[index][None], "label": self.labels[index]}


def one_step(method: str, cached: bool, rank: int = 0, world: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """The gradients of one optimizer step and the trainable weights after it, from the runner's own pieces."""
    cfg = resolve_config(
        {
            "method": method,
            "dataset": "synthetic-motion",
            "pretrained": "none",
            "num_frames": FRAMES,
            "method_args": {"width": 16} if method == "st_adapter" else {},
            "train": {
                "batch_size": CLIPS,
                "micro_batch_size": 1 if world > 1 else 0,
                "head_dropout": 0.0,
                "warmup_epochs": 0,
                "num_workers": 0,
            },
        }
    )
    torch.manual_seed(0)
    built = runner.build_run_model(
        cfg,
        get_method(method),
        create_backbone("tiny", "none"),
        Batches("video", torch.empty(0), torch.empty(0)),
        torch.device("cpu"),
    )
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(CLIPS, FRAMES, 3, 32, 32, generator=generator)
    labels = torch.randint(0, CLASSES, (CLIPS,), generator=generator)
    if cached:
        with torch.no_grad():
            inputs = built.model.pack_features(built.model.forward_features(clips))
    share = slice(rank * CLIPS // world, (rank + 1) * CLIPS // world)  # the ranks' halves make the whole batch
    items = Batches("tokens" if cached else "video", (inputs if cached else clips)[share], labels[share])
    micro, accumulate = runner.rank_batch_sizes(cfg, world)
    module = runner.training_module(built, cached, compile_steps=False)
    assert isinstance(module, DistributedDataParallel) == (world > 1)
    optimizer = make_optimizer(built.model, cfg.train, built.pretrained_ids)
    names = {p: name for name, p in built.model.named_parameters() if p.requires_grad}
    grads = {}
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.update(
            {names[p]: p.grad.clone() for group in opt.param_groups for p in group["params"]}
        )
    )
    runner.train_one_epoch(
        module,
        torch.utils.data.DataLoader(items, batch_size=micro),
        optimizer,
        runner.warmup_cosine(optimizer, 0, 1, 0.0),
        torch.device("cpu"),
        cfg,
        accumulate,
        False,
        "",
    )
    return {"grads": grads, "weights": runner.trainable_state_dict(built.model)}


def ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {
            f"{method}/{cached}": one_step(method, cached, rank, world)
            for method, cached in (("st_adapter", False), ("attentional_pooling", True))
        }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_two_processes_gives_the_gradients_and_step_of_one_process_on_the_whole_batch(
    tmp_path, one_torch_thread
):
    torch.multiprocessing.spawn(ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    for method, cached in (("st_adapter", False), ("attentional_pooling", True)):
        alone = one_step(method, cached)
        assert alone["grads"] and any(g.abs().max() > 0 for g in alone["grads"].values())
        for rank in range(2):
            saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)  # noqa: TID251  -- weights only
            ranked = saved[f"{method}/{cached}"]
            assert ranked["grads"].keys() == alone["grads"].keys()  # the same names: no "module." prefix
            assert ranked["weights"].keys() == alone["weights"].keys()
            for kind in ("grads", "weights"):
                for name, value in alone[kind].items():
                    torch.testing.assert_close(
                        ranked[kind][name], value, rtol=1e-5, atol=1e-6, msg=f"{method} {kind} {name} on rank {rank}"
                    )
