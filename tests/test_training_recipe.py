"""The released ST-Adapter code's optimisation settings in the runner: warm-up from lr 0, no gradient clipping,
``train.precision`` (fp32, and CPU autocast for bf16 and fp16 with fp16 frozen weights and a gradient
scaler), and a run's data recipe with per-run changes (``--set recipe.KEY=VALUE``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from peft_bench.backbones import create_backbone
from peft_bench.config import resolve_config
from peft_bench.dataclass_io import ConfigError, parse_overrides
from peft_bench.precision import autocast, grad_scaler, hold_frozen_in, resolve_precision
from peft_bench.train import runner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def lrs_of_first_steps(from_zero: bool, steps: int = 6) -> list[float]:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = runner.warmup_cosine(optimizer, warmup_steps=4, total_steps=20, min_ratio=0.0, from_zero=from_zero)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warm_up_starts_at_lr_zero_as_released():
    # main.py's lr_func: epoch / warmup_epochs with epoch = step / steps_per_epoch, so step s runs at s / W.
    assert lrs_of_first_steps(from_zero=True)[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert lrs_of_first_steps(from_zero=False)[:4] == [0.25, 0.5, 0.75, 1.0]  # the earlier peft-bench warm-up
    assert lrs_of_first_steps(from_zero=True)[5] == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 16))  # cosine


# --------------------------------------------------------------------------------- a training loop


class Clips(torch.utils.data.Dataset):
    def __init__(self, count: int = 8, frames: int = 2):
        generator = torch.Generator().manual_seed(0)
        self.videos = torch.randn(count, 1, frames, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 4, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index], "label": self.labels[index]}


def train(method: str, overrides: dict, steps_seen: list[float] | None = None, frozen_dtype=None):
    """One epoch of 2 steps (batch 4) of `method` on tiny with random weights; returns (model, scaler)."""
    cfg = resolve_config(
        {
            "method": method,
            "dataset": "synthetic-motion",
            "pretrained": "none",
            "train": {"batch_size": 4, "warmup_epochs": 0, "num_workers": 0, **overrides},
        }
    )
    torch.manual_seed(0)
    model = runner.build_model(cfg, 4, create_backbone("tiny", "none"))
    if frozen_dtype is not None:
        hold_frozen_in(model, frozen_dtype)
    optimizer = runner.make_optimizer(model, cfg.train)
    if steps_seen is not None:
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps_seen.append(opt.param_groups[0]["lr"]))
    scheduler = runner.warmup_cosine(optimizer, 0, 2, 0.0)
    scaler = grad_scaler(CPU, cfg.train.precision)
    loader = torch.utils.data.DataLoader(Clips(), batch_size=4)
    runner.train_one_epoch(model, loader, optimizer, scheduler, CPU, cfg, 1, False, "", scaler=scaler)
    return model, scaler


def test_no_gradient_clipping_unless_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: calls.append(max_norm))
    train("linear_probe", {"grad_clip_norm": 0.0})  # the released recipes' value (synthetic ones clip at 1e3)
    assert calls == []
    train("linear_probe", {"grad_clip_norm": 5.0})
    assert calls == [5.0, 5.0]


@pytest.mark.parametrize(
    "precision,expected",
    [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_autocast_on_cpu_computes_in_the_asked_precision(precision, expected):
    with autocast(CPU, precision):
        out = nn.Linear(8, 8)(torch.randn(2, 8))
    assert out.dtype == expected


def test_auto_is_bf16_on_gpu_and_fp32_on_cpu_and_only_fp16_scales_gradients():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"
    assert [grad_scaler(CPU, p).is_enabled() for p in ("auto", "fp32", "bf16", "fp16")] == [False, False, False, True]
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_on_cpu_with_fp32_trainable_weights(precision):
    lrs: list[float] = []
    frozen = torch.float16 if precision == "fp16" else None  # as the runner holds them for fp16
    model, scaler = train("adapter", {"precision": precision}, lrs, frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainable)
    assert len(lrs) == 2 and lrs[0] > 0
    frozen_dtypes = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen_dtypes == ({torch.float16} if precision == "fp16" else {torch.float32})
    assert scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert scaler.get_scale() > 0


def test_fp16_checkpoints_keep_the_loss_scale(tmp_path):
    model, scaler = train("linear_probe", {"precision": "fp16"}, frozen_dtype=torch.float16)
    optimizer = runner.make_optimizer(model, resolve_config({"method": "linear_probe"}).train)
    scheduler = runner.warmup_cosine(optimizer, 0, 2, 0.0)
    runner.save_checkpoint(tmp_path / "c.pt", model, optimizer, scheduler, runner.EpochPosition(), None, scaler)
    assert runner.load_checkpoint(tmp_path / "c.pt")["grad_scaler"]["scale"] == scaler.get_scale()


# ------------------------------------------------------------------------------------------ configs


def test_the_released_recipes_train_in_fp16_and_the_embedded_default_as_before():
    for dataset in ("k400", "ssv2"):
        train_cfg = resolve_config({"dataset": dataset}).train
        assert (train_cfg.precision, train_cfg.warmup_from_zero, train_cfg.grad_clip_norm) == ("fp16", True, 0.0)
    for dataset in ("synthetic-appearance", "synthetic-motion"):  # the stand-ins keep what they were tuned with
        train_cfg = resolve_config({"dataset": dataset}).train
        assert (train_cfg.precision, train_cfg.warmup_from_zero, train_cfg.grad_clip_norm) == ("auto", False, 1000.0)
    with pytest.raises(ConfigError, match="precision"):
        resolve_config({"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="grad_clip_norm"):
        resolve_config({"train": {"grad_clip_norm": -1}})


def test_a_run_carries_its_data_recipe_and_changes_to_it():
    plain = resolve_config({"dataset": "ssv2"})
    assert plain.recipe["randaugment"] == "rand-m7-n4-mstd0.5-inc1" and plain.recipe["interpolation"] == "bicubic"
    changed = resolve_config(
        {"dataset": "ssv2", **parse_overrides(["recipe.interpolation=bilinear", "recipe.antialias=true"])}
    )
    assert changed.recipe["interpolation"] == "bilinear" and changed.recipe["antialias"] is True
    assert changed.digest() != plain.digest()  # a changed recipe is another experiment
    assert (
        resolve_config(base=plain.__dict__ | {"train": plain.train.__dict__, "speed": plain.speed.__dict__}).digest()
        == plain.digest()
    )
    for recipe, message in [
        ({"interpolaton": "bilinear"}, "recipe.interpolaton"),
        ({"randaugment": "rand-q1"}, "recipe.randaugment"),
        ({"num_frames": 16}, "num_frames"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_config({"dataset": "ssv2", "recipe": recipe})


def test_the_runner_builds_its_datasets_with_the_runs_recipe(monkeypatch):
    seen = []

    def stop_after_recording(name, split, **kwargs):
        seen.append(kwargs["recipe"])
        raise RuntimeError("enough")

    monkeypatch.setattr(runner, "build_dataset", stop_after_recording)
    monkeypatch.setattr(runner, "create_backbone", lambda *args: create_backbone("tiny", "none"))
    cfg = resolve_config({"dataset": "synthetic-motion", "recipe": {"frame_indices": "released"}})
    with pytest.raises(RuntimeError, match="enough"):
        runner.run(cfg, progress=False)
    assert seen == [cfg.recipe] and seen[0]["frame_indices"] == "released"


@pytest.mark.parametrize("from_zero", [True, False])
def test_the_runner_warms_up_as_the_config_says(monkeypatch, from_zero):
    seen = []

    def stop_after_recording(optimizer, warmup_steps, total_steps, min_ratio, from_zero):
        seen.append(from_zero)
        raise RuntimeError("enough")

    monkeypatch.setattr(runner, "warmup_cosine", stop_after_recording)
    cfg = resolve_config(
        {
            "dataset": "synthetic-appearance",
            "pretrained": "none",
            "num_frames": 2,
            "train": {"warmup_from_zero": from_zero, "num_workers": 0},
        }
    )
    with pytest.raises(RuntimeError, match="enough"):
        runner.run(cfg, progress=False)
    assert seen == [from_zero]
