"""The embedded `tiny` backbone: shipped weights that this code regenerates, deterministic pre-training,
other configs cached once, loaded rather than re-made."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from peft_bench.backbones import create_backbone, tiny

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


def _shipped() -> tuple[dict, dict]:
    found = tiny.read_shipped(tiny.TinyConfig())
    assert found is not None, (
        "the package ships no tiny weights for the default config: regenerate them with "
        "`peft-bench tiny pretrain --out peft_bench/backbones/tiny.safetensors`"
    )
    return found


def test_the_shipped_weights_are_what_this_code_makes():
    """Regenerates the first steps of the shipped config and compares them with the fingerprint the
    pre-training command stored in the file. A changed recipe (images, seed, initialisation, lr, loss) or
    config without regenerated weights fails here; floating-point noise of another CPU does not."""
    state, metadata = _shipped()
    shipped = json.loads(metadata["fingerprint"])
    again = tiny.fingerprint(tiny.TinyConfig(), steps=shipped["steps"])
    np.testing.assert_allclose(again["losses"], shipped["losses"], rtol=1e-4)
    assert again["tensors"].keys() == shipped["tensors"].keys() == state.keys()
    for name, stats in shipped["tensors"].items():
        np.testing.assert_allclose(again["tensors"][name], stats, rtol=1e-4, atol=1e-6, err_msg=name)
    assert shipped["losses"][-1] < shipped["losses"][0]  # the fingerprint covers steps that learn


def test_auto_loads_the_shipped_weights_without_pretraining(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "pretrain", lambda *a, **k: pytest.fail("pre-trained although weights ship"))
    state, _ = _shipped()
    backbone = create_backbone("tiny", "auto")
    assert backbone.info.pretrained == "peft_bench/backbones/tiny.safetensors"
    for name in ("conv1.weight", "class_embedding", "positional_embedding"):
        assert torch.equal(backbone.get_parameter(name), state[name])
    assert not (tmp_path / "backbones").exists()  # nothing made, nothing cached
    assert os.path.getsize(tiny.shipped_weights()) < 2_000_000


def test_a_config_other_than_the_shipped_one_is_not_given_the_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    assert tiny.read_shipped(SMALL) is None
    assert tiny.create_tiny("auto", SMALL).info.pretrained == str(tiny.weights_path(SMALL))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PEFT_BENCH_SLOW"),
    reason="the whole pre-training (about a minute on one core); set PEFT_BENCH_SLOW=1 (the CI does)",
)
def test_regenerating_the_whole_pre_training_gives_the_shipped_weights():
    from peft_bench.system import cpu_model_name

    state, metadata = _shipped()
    again = tiny.pretrain(tiny.TinyConfig())
    if (metadata["torch"], metadata["cpu"]) == (torch.__version__, cpu_model_name()):
        # One thread, the same kernels: the same bits.
        assert all(torch.equal(again[k], state[k]) for k in state)
    else:  # another CPU's kernels round differently; 900 steps must still land on the same weights
        for name, tensor in state.items():
            torch.testing.assert_close(again[name], tensor, rtol=1e-2, atol=1e-3, msg=name)
