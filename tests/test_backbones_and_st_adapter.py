"""Backbones behave like their libraries' models; ST-Adapter matches the released code; frozen stays frozen."""

from __future__ import annotations

import pytest
import torch

from peft_bench.backbones import MissingWeightsError, create_backbone
from peft_bench.backbones.base import FrameBlock
from peft_bench.config import TrainConfig
from peft_bench.method_api.model import count_parameters
from peft_bench.method_api.registry import RunContext, get_method
from peft_bench.train.runner import make_optimizer


def build(method: str, backbone: str, num_classes: int, preset: str | None = None, **overrides):
    spec = get_method(method)
    return spec.create(create_backbone(backbone, "none"), RunContext(num_classes), spec.make_config(preset, overrides))


def test_clip_backbone_reproduces_open_clip_features():
    """The SDPA re-implementation of the blocks gives open_clip's own output, before and after ln_post."""
    from open_clip.model import VisionTransformer

    from peft_bench.backbones.base import BackboneInfo
    from peft_bench.backbones.clip import ClipBackbone

    torch.manual_seed(0)
    visual = VisionTransformer(
        image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4, output_dim=16
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = visual(x)  # before ClipBackbone takes the tower's blocks over
    backbone = ClipBackbone(visual, BackboneInfo("t", "none", 64, 2, 4, 8, 32))
    ours = backbone.final_norm(backbone(x.unsqueeze(1))[:, 0, 0]) @ visual.proj
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_timm_backbone_reproduces_timm_features():
    import timm

    from peft_bench.backbones.base import BackboneInfo
    from peft_bench.backbones.timm_vit import TimmViTBackbone

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False, num_classes=0, depth=2).eval()
    backbone = TimmViTBackbone(vit, BackboneInfo("t", "none", 768, 2, 12, 16, 224))
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(backbone.final_norm(backbone(x.unsqueeze(1))[:, 0, 0]), vit(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, width, depth, tokens",
    [
        ("clip_vitb16", 768, 12, 197),
        ("clip_vitl14", 1024, 24, 257),
        ("in21k_vitb16", 768, 12, 197),
        ("tiny", 96, 4, 17),
    ],
)
def test_backbone_interface(name, width, depth, tokens):
    bb = create_backbone(name, "none")
    assert (bb.width, len(bb.blocks), bb.num_tokens) == (width, depth, tokens)
    assert all(isinstance(b, FrameBlock) for b in bb.blocks)
    assert bb.info.pretrained == "none"  # random weights are recorded as such


@pytest.mark.parametrize("name", ["clip_vitb16", "in21k_vitb16"])
def test_missing_weights_stop_with_where_we_looked(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        create_backbone(name, "auto")
    text = str(err.value)
    assert "Looked in" in text and "--pretrained PATH" in text and "--pretrained none" in text


def test_explicit_weights_file_that_does_not_exist(tmp_path):
    with pytest.raises(MissingWeightsError, match="not found"):
        create_backbone("clip_vitb16", tmp_path / "ViT-B-16.safetensors")


def test_weights_file_is_loaded_not_ignored(tmp_path):
    """A saved state dict comes back bit-identical (under open_clip's `visual.` prefix, as CLIP files have)."""
    from safetensors.torch import save_file

    source = create_backbone("tiny", "none")
    from peft_bench.backbones.tiny import TinyConfig, build_visual

    torch.manual_seed(1)
    visual = build_visual(TinyConfig())
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_backbone("tiny", tmp_path / "w.safetensors")
    assert torch.equal(loaded.conv1.weight, visual.conv1.weight)
    assert not torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert loaded.info.pretrained.endswith("w.safetensors")


@pytest.mark.parametrize("preset, num_classes, expected", [("k400", 400, 7_417_744), ("ssv2", 174, 14_354_094)])
def test_st_adapter_trainable_parameters_match_released_code(preset, num_classes, expected):
    model = build("st_adapter", "clip_vitb16", num_classes, preset)
    assert count_parameters(model).trainable == expected


def test_st_adapter_starts_as_the_frozen_backbone_and_leaves_cls_alone():
    import copy

    from peft_bench.methods.st_adapter import STAdapter

    backbone = create_backbone("tiny", "none").requires_grad_(False)
    plain = get_method("linear_probe").create(copy.deepcopy(backbone), RunContext(5))
    spec = get_method("st_adapter")
    adapted = spec.create(copy.deepcopy(backbone), RunContext(5), spec.make_config("ssv2"))
    adapted.head.load_state_dict(plain.head.state_dict())
    plain.eval(), adapted.eval()
    video = torch.randn(2, 4, 3, 32, 32)
    torch.testing.assert_close(adapted(video), plain(video), rtol=0, atol=0)

    # With non-zero weights the adapter changes patch tokens but never the [CLS] token.
    adapter = STAdapter(dim=8, width=4, kernel_size=(3, 1, 1), activation="none")
    for p in adapter.parameters():
        torch.nn.init.normal_(p)
    tokens = torch.randn(2 * 3, 1 + 4, 8)
    out = adapter(tokens, num_frames=3)
    assert torch.equal(out[:, 0], tokens[:, 0])
    assert not torch.allclose(out[:, 1:], tokens[:, 1:])


def test_st_adapter_models_time_and_linear_probe_does_not():
    torch.manual_seed(0)
    video = torch.randn(2, 4, 3, 32, 32)
    shuffled = video[:, [2, 0, 3, 1]]
    for method, should_change in [("st_adapter", True), ("linear_probe", False)]:
        model = build(method, "tiny", 5).eval()
        for _name, p in model.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        with torch.no_grad():
            changed = not torch.allclose(model(video), model(shuffled), atol=1e-5)
        assert changed == should_change, method


def test_frozen_weights_bit_identical_after_an_optimizer_step():
    model = build("st_adapter", "tiny", 5, "ssv2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 3, 32, 32)), torch.tensor([1, 3]))
    loss.backward()
    optimizer.step()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and trainable
    for name, p in frozen:
        assert torch.equal(p, before[name]), name
        assert p.grad is None and p not in optimizer.state, name
    assert any(not torch.equal(p, before[n]) for n, p in trainable)
    assert all(n.startswith(("backbone.blocks", "head")) for n, _ in trainable)


def test_no_weight_decay_on_biases_and_norms():
    model = build("st_adapter", "tiny", 5)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.01))
    for group in optimizer.param_groups:
        assert all((p.ndim > 1) == (group["weight_decay"] > 0) for p in group["params"])
