"""The embedded `tiny` backbone: deterministic pre-training, cached once, loaded rather than re-made."""

from __future__ import annotations

import torch

from peft_bench.backbones import create_backbone
from peft_bench.backbones import tiny

SMALL = tiny.TinyConfig(pretrain_images=64, pretrain_steps=4, batch_size=8)


def test_pretraining_is_deterministic_and_learns_something():
    first, second = tiny.pretrain(SMALL), tiny.pretrain(SMALL)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(SMALL.seed)  # the same initialisation, before any step
    untrained = tiny.build_visual(SMALL).state_dict()
    assert any(not torch.equal(first[k], untrained[k]) for k in first)


def test_weights_are_made_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    calls = []
    real = tiny.pretrain
    monkeypatch.setattr(tiny, "pretrain", lambda cfg: calls.append(cfg) or real(cfg))
    path = tiny.weights_path(SMALL)
    assert path.is_file() and path.parent == tmp_path / "backbones" and len(calls) == 1
    assert tiny.weights_path(SMALL) == path and len(calls) == 1
    assert not list(path.parent.glob("*.tmp*"))  # written atomically


def test_tiny_loads_its_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    path = tiny.weights_path(SMALL)
    backbone = tiny.create_tiny("auto", SMALL)
    assert backbone.info.pretrained == str(path)
    random_init = create_backbone("tiny", "none")
    assert not torch.equal(backbone.conv1.weight, random_init.conv1.weight)
