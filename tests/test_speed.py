"""No wasted work: a frozen backbone runs without autograd, frozen weights get no gradients or optimizer
state, and the frozen-feature cache (hit, miss, invalidation, corrupt entries, same training as without)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import peft_bench.train.runner as runner
from peft_bench.backbones import create_backbone
from peft_bench.cli import main
from peft_bench.config import SpeedConfig, TrainConfig, resolve_config
from peft_bench.data.build import build_dataset
from peft_bench.method_api.checks import build_method
from peft_bench.train import feature_cache
from peft_bench.train.efficiency import enable_activation_checkpointing, hold_frozen_in_bf16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(method: str, num_classes: int = 5):
    torch.manual_seed(0)
    return build_method(method, create_backbone("tiny", "none"), num_classes)


def clip(batch: int = 2, frames: int = 4):
    return torch.randn(batch, frames, 3, 32, 32)


def saved_tensor_count(fn) -> int:
    """How many tensors autograd keeps for backward while ``fn`` runs."""
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return len(saved)


# --- the backbone runs without autograd when nothing in it trains --------------------------------------


@pytest.mark.parametrize("method", ["linear_probe", "attentional_pooling"])
def test_post_backbone_methods_run_the_backbone_without_autograd(method):
    """No graph and no saved activations in the backbone. (With every backbone weight frozen and an input
    that needs no gradient, autograd records nothing anyway; ``backbone_tokens`` makes it explicit, and this
    test keeps it so if a method's frozen backbone ever meets a tensor that requires grad.)"""
    model = tiny_model(method)
    assert model.backbone_is_frozen()
    tokens = model.backbone_tokens(clip())
    assert tokens.grad_fn is None and not tokens.requires_grad
    assert saved_tensor_count(lambda: model.backbone_tokens(clip())) == 0
    needs_grad = clip().requires_grad_(True)  # e.g. an input-gradient probe: still no graph in the backbone
    assert model.backbone_tokens(needs_grad).grad_fn is None
    logits = model(clip())
    assert logits.requires_grad  # the layers after the backbone still train


@pytest.mark.parametrize("method", ["st_adapter", "prompt_tuning", "partial_ft"])
def test_methods_that_train_inside_the_backbone_keep_its_graph(method):
    model = tiny_model(method)
    assert not model.backbone_is_frozen()
    assert model.backbone_tokens(clip()).grad_fn is not None


def test_the_no_autograd_backbone_computes_the_same_logits_and_head_gradient():
    model = tiny_model("attentional_pooling").eval()
    video = clip()
    with torch.no_grad():
        reference = model.head_from_tokens(model.backbone(video))
    torch.testing.assert_close(model(video), reference)


@pytest.mark.parametrize("method", ["linear_probe", "st_adapter"])
def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(method):
    model = tiny_model(method)
    optimizer = runner.make_optimizer(model, TrainConfig(lr=1e-3))
    loss = F.cross_entropy(model(clip()), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert frozen and trainable
    assert all(p.grad is None for p in frozen)
    assert {id(p) for p in optimizer.state} == {id(p) for p in trainable}
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_groups == {id(p) for p in trainable}


def test_activation_checkpointing_gives_the_same_gradients_with_fewer_saved_tensors():
    video, labels = clip(), torch.tensor([0, 1])

    def grads_and_saved(checkpointing: bool):
        model = tiny_model("st_adapter")
        with torch.no_grad():  # the adapters start at zero; move them so their gradients are not trivial
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        if checkpointing:
            assert enable_activation_checkpointing(model)
        model.eval()  # no head dropout: both runs compute the same thing
        saved = saved_tensor_count(lambda: F.cross_entropy(model(video), labels))
        F.cross_entropy(model(video), labels).backward()
        return [p.grad for p in model.parameters() if p.requires_grad], saved

    plain, plain_saved = grads_and_saved(False)
    checkpointed, checkpointed_saved = grads_and_saved(True)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)
    assert checkpointed_saved < plain_saved


def test_frozen_weights_in_bf16_leave_trainable_ones_in_fp32():
    model = tiny_model("st_adapter")
    assert hold_frozen_in_bf16(model) > 0
    assert all((p.dtype == torch.float32) == p.requires_grad for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as a GPU step would run
        logits = model(clip())
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# --- the feature cache --------------------------------------------------------------------------------


def small_clip_set(split: str, count: int):
    """The first ``count`` clips of the embedded appearance dataset (augmented in training) for tiny."""
    backbone = create_backbone("tiny", "none")
    data = build_dataset(
        "synthetic-appearance",
        split,
        root=None,
        input_size=backbone.input_size,
        mean=backbone.mean,
        std=backbone.std,
        num_frames=4,
        seed=0,
    )
    return torch.utils.data.Subset(data, range(count))


def build(cache_dir, model, dataset, epoch=0, dtype="float32"):
    return feature_cache.get_or_build(
        cache_dir, model, dataset, epoch, dtype, torch.device("cpu"), batch_size=4, num_workers=0
    )


def test_cache_miss_then_hit_with_the_same_tokens_the_backbone_gives(tmp_path):
    model, data = tiny_model("linear_probe"), small_clip_set("val", 6)
    built = build(tmp_path, model, data, epoch=None)
    read = build(tmp_path, model, data, epoch=None)
    assert (built.hit, read.hit) == (False, True)
    assert read.tokens.shape == (6, 2, 4, 17, 96)  # clips, views (2 test clips), frames, tokens, width
    with torch.no_grad():
        expected = model.backbone(data[3]["video"]).numpy()
    np.testing.assert_allclose(read.tokens[3], expected, rtol=1e-5, atol=1e-5)
    assert list(read.labels) == [data[i]["label"] for i in range(6)]


def test_a_changed_backbone_dataset_epoch_or_dtype_is_a_new_entry(tmp_path):
    model, data = tiny_model("linear_probe"), small_clip_set("train", 4)
    build(tmp_path, model, data)
    assert build(tmp_path, model, data).hit
    assert not build(tmp_path, model, data, epoch=1).hit  # another augmentation draw
    assert not build(tmp_path, model, data, dtype="float16").hit
    assert not build(tmp_path, model, small_clip_set("train", 5)).hit
    with torch.no_grad():
        model.backbone.final_norm.weight.mul_(2)  # any weight, even one the tokens do not pass through
    assert not build(tmp_path, model, data).hit
    assert len([p for p in Path(tmp_path).iterdir() if p.is_dir()]) == 5


@pytest.mark.parametrize("damage", ["truncate", "meta", "remove"])
def test_a_damaged_entry_is_rebuilt_with_a_logged_message(tmp_path, caplog, damage):
    model, data = tiny_model("linear_probe"), small_clip_set("train", 4)
    good = np.array(build(tmp_path, model, data).tokens)
    folder = next(p for p in Path(tmp_path).iterdir() if p.is_dir())
    if damage == "truncate":
        path = folder / "tokens.npy"
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "meta":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "shape": [1, 2, 3]}))
    else:
        (folder / "labels.npy").unlink()
    rebuilt = build(tmp_path, model, data)
    assert not rebuilt.hit and "rebuilding" in caplog.text
    np.testing.assert_array_equal(rebuilt.tokens, good)


def test_cache_files_hold_no_pickled_objects(tmp_path):
    model, data = tiny_model("linear_probe"), small_clip_set("train", 4)
    build(tmp_path, model, data)
    folder = next(p for p in Path(tmp_path).iterdir() if p.is_dir())
    for name in ("tokens.npy", "labels.npy"):
        np.load(folder / name, allow_pickle=False)  # raises on object arrays
    assert sorted(p.name for p in folder.iterdir()) == ["labels.npy", "meta.json", "tokens.npy"]


def test_training_from_the_cache_gives_the_same_losses_as_training_on_clips(tmp_path):
    """With one augmented copy per epoch, cached training sees exactly the clips uncached training sees."""
    epochs = 2
    train, val = small_clip_set("train", 16), small_clip_set("val", 8)
    cfg = resolve_config(
        {
            "method": "attentional_pooling",
            "dataset": "synthetic-appearance",
            "pretrained": "none",
            "num_frames": 4,
            "train": {"epochs": epochs, "batch_size": 4, "num_workers": 0},
        }
    )

    def train_and_evaluate(cached: bool):
        torch.manual_seed(0)
        model = tiny_model("attentional_pooling", num_classes=8)
        train_set, val_set = train, val
        if cached:
            speed = SpeedConfig(feature_cache=True, augmented_copies=epochs)
            train_set, val_set, report = feature_cache.cached_datasets(
                model, train, val, epochs, speed, torch.device("cpu"), 4, 0, cache_dir=tmp_path
            )
            assert report.copies == epochs and report.misses == epochs + 1
        optimizer = runner.make_optimizer(model, cfg.train)
        scheduler = runner.warmup_cosine(optimizer, 1, epochs * 4, 0.0)
        sampler = runner.EpochSampler(len(train_set), seed=0)
        loader = runner._loader(train_set, 4, cfg, sampler)
        losses = []
        torch.manual_seed(1)  # head dropout draws the same masks in both
        for epoch in range(epochs):
            (train_set if cached else train.dataset).set_epoch(epoch)
            sampler.set_position(epoch, 0)
            stats = runner.train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"), cfg, 1, False, "")
            losses.append(stats["loss"])
        top1 = runner.evaluate(model, runner._loader(val_set, 4, cfg), torch.device("cpu"))["top1"]
        return losses, top1

    clips_losses, clips_top1 = train_and_evaluate(cached=False)
    cached_losses, cached_top1 = train_and_evaluate(cached=True)
    np.testing.assert_allclose(cached_losses, clips_losses, rtol=1e-4)
    assert cached_top1 == clips_top1
    assert clips_losses[0] != clips_losses[1]  # the epochs did differ: the comparison is not vacuous


@pytest.mark.slow
def test_a_cached_run_records_its_choice_and_a_backbone_training_method_ignores_the_cache(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        "run",
        "--dataset",
        "synthetic-appearance",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(tmp_path / "runs"),
        "--no-table",
        "--pretrained",
        "none",
        "--no-progress",
        "--frames",
        "2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.val_subset=8",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.batch_size=16",
        "--set",
        "speed.feature_cache=true",
    ]
    assert main([*common, "--methods", "linear_probe,prompt_tuning"]) == 0
    runs = {
        r.data.tags["peft_bench.method"]: r
        for r in mlflow.search_runs(experiment_names=["peft-bench"], output_format="list")
    }
    assert runs["linear_probe"].data.tags["peft_bench.train.feature_cache"].startswith("on: 1 augmented copy")
    assert runs["linear_probe"].data.params["speed.augmented_copies"] == "1"
    assert runs["prompt_tuning"].data.tags["peft_bench.train.feature_cache"] == "off: the backbone trains"
    assert 0 <= runs["linear_probe"].data.metrics["top1"] <= 100


def test_speed_settings_left_at_their_defaults_keep_the_config_digest():
    cfg = resolve_config({"method": "linear_probe", "dataset": "synthetic-motion", "speed": {"feature_cache": False}})
    assert replace(cfg, speed=SpeedConfig()).digest() == cfg.digest()
    assert replace(cfg, speed=SpeedConfig(feature_cache=True)).digest() != cfg.digest()


@pytest.mark.parametrize("method", ["full_ft_ts", "temporal_ft", "attentional_pooling", "prompt_tuning", "st_adapter"])
def test_every_attention_goes_through_sdpa(method):
    """No hand-written attention anywhere in the model: a softmax or batched matmul outside SDPA would show
    up as its own op in the dispatched forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: ClassVar[set] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = tiny_model(method).eval()
    with torch.no_grad(), Ops():
        model(clip())
    assert any("scaled_dot_product" in op for op in Ops.seen)
    assert not {"_softmax", "softmax", "bmm", "baddbmm"} & Ops.seen
