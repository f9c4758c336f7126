"""ZeroI2V (methods/zeroi2v.py): the hand count on CLIP ViT-B/16, what trains, the merged model against the
unmerged one (same logits, the image model's parameters and GFLOPs), STDHA against the released shift of
keys and values, which frames a block mixes, and the config's checks. Random weights throughout."""

from __future__ import annotations

import copy

import pytest
import torch

from peft_bench.backbones import NO_WEIGHTS, create_backbone
from peft_bench.measure.accounting import count_video_flops
from peft_bench.method_api import checks as method_checks
from peft_bench.method_api.layers import HookedBlock, LinearAdapter, merge_modules
from peft_bench.method_api.model import NormedClsMean, count_parameters
from peft_bench.method_api.registry import RunContext, get_method
from peft_bench.methods.zeroi2v import DualHeadAttentionBlock, ZeroI2VConfig

D, DEPTH = 768, 12
WIDTH = D // 4  # the released mlp_ratio=0.25
ADAPTER = D * WIDTH + WIDTH + WIDTH * D + D  # down and up, with biases
LN_POST = 2 * D


def head(classes: int) -> int:
    return D * classes + classes


def vitb16_trainable(classes: int, preset: str | None = None, **args) -> int:
    spec = get_method("zeroi2v")
    with torch.device("meta"):
        model = spec.create(
            create_backbone("clip_vitb16", NO_WEIGHTS),
            RunContext(num_classes=classes, num_frames=8),
            spec.make_config(preset, args or None),
        )
    return count_parameters(model).trainable


def build_tiny(args: dict | None = None, frames: int = 4, classes: int = 10):
    torch.manual_seed(0)
    return method_checks.build_method("zeroi2v", create_backbone("tiny", NO_WEIGHTS), classes, args, num_frames=frames)


def clip(frames: int = 4, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vitb16_k400_count_by_hand():
    # Four linear adapters per block, ln_post and the head.
    expected = DEPTH * 4 * ADAPTER + LN_POST + head(400)
    assert vitb16_trainable(400) == expected == 14_510_992
    # The released code's temporal embedding adds 8 x 768 when asked for.
    assert vitb16_trainable(400, temporal_embedding=True) == expected + 8 * D == 14_517_136
    # The authors give no trained count (only "0 new parameters" after merging): nothing to hold it to.
    assert "zeroi2v" not in method_checks.authors_params_m()


def test_ssv2_preset_changes_offsets_scale_and_dropout_but_not_the_count():
    assert vitb16_trainable(174, "ssv2") == DEPTH * 4 * ADAPTER + LN_POST + head(174) == 14_337_198
    cfg = get_method("zeroi2v").make_config("ssv2")
    assert (cfg.head_offsets, cfg.scale, cfg.dropout) == ((-1, 1, -2, 2), 1.0, 0.0)


def test_only_the_adapters_the_final_norm_and_the_head_train():
    model = build_tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"backbone.final_norm.weight", "backbone.final_norm.bias", "head.weight", "head.bias"} <= trainable
    others = trainable - {"backbone.final_norm.weight", "backbone.final_norm.bias", "head.weight", "head.bias"}
    sites = ("after_norm1", "after_attention", "after_norm2", "after_mlp")
    assert {n.split(".")[3] for n in others} == set(sites)  # backbone.blocks.<i>.<site>.<down|up>...
    assert len(others) == 4 * 4 * 4  # 4 blocks x 4 adapters x (down, up) x (weight, bias)
    for block in model.backbone.blocks:
        assert isinstance(block, HookedBlock) and isinstance(block.inner, DualHeadAttentionBlock)
        assert all(isinstance(h, LinearAdapter) and h.down.out_features == 24 for h in block.hooks().values())


def test_merged_model_gives_the_unmerged_logits_with_the_image_models_parameters_and_gflops():
    difference, unmerged, merged = method_checks.merge_difference("zeroi2v")
    assert difference < 1e-10  # double precision, adapters perturbed away from the identity
    plain = method_checks.build_method("linear_probe", create_backbone("tiny", NO_WEIGHTS), method_checks.NUM_CLASSES)
    assert count_parameters(merged).total == count_parameters(plain).total < count_parameters(unmerged).total
    assert not any(isinstance(m, (HookedBlock, LinearAdapter)) for m in merged.modules())
    assert all(isinstance(b, DualHeadAttentionBlock) for b in merged.backbone.blocks)  # STDHA stays: it has no weights
    plain.pool = NormedClsMean()  # the released pooling normalises 8 [CLS] tokens instead of one: same for both
    flops = {
        name: count_video_flops(copy.deepcopy(m).float(), 8, 32).total
        for name, m in {"plain": plain, "merged": merged, "unmerged": unmerged}.items()
    }
    assert flops["merged"] == flops["plain"] < flops["unmerged"]


def test_merging_keeps_the_released_temporal_embedding_and_nothing_else():
    model = build_tiny({"temporal_embedding": True}).double().eval()
    method_checks.perturb_trainable(model)
    video = clip().double()
    with torch.no_grad():
        before = model(video)
        merged = merge_modules(model)
        torch.testing.assert_close(merged(video), before, rtol=0, atol=1e-10)
    plain = method_checks.build_method("linear_probe", create_backbone("tiny", NO_WEIGHTS), 10)
    assert count_parameters(merged).total == count_parameters(plain).total + 4 * 96  # 4 frames x width


def released_shift(x: torch.Tensor, num_frames: int, fold: int, long_fold: int = 0) -> torch.Tensor:
    """The released ``TemporalShift`` (stdha.py, divide_head=False; the ablation's long shift right) on
    (B*T, heads, L, d), with its channels laid out as the released (L, B*T, C) sees them."""
    n, heads, length, dim = x.shape
    feat = x.permute(2, 0, 1, 3).reshape(length, n // num_frames, num_frames, heads * dim)
    out = feat.clone()
    out[:, :, 1:, :fold] = feat[:, :, :-1, :fold]
    out[:, :, :-1, fold : 2 * fold] = feat[:, :, 1:, fold : 2 * fold]
    if long_fold:
        a, b = 2 * fold, 2 * fold + long_fold
        out[:, :, 2:, a:b] = feat[:, :, :-2, a:b]
        out[:, :, :-2, b : b + long_fold] = feat[:, :, 2:, b : b + long_fold]
    return out.reshape(length, n, heads, dim).permute(1, 2, 0, 3)


@pytest.mark.parametrize("offsets, long_fold", [((-1, 1), 0), ((-1, 1, -2, 2), 1)])
def test_stdha_shifts_keys_and_values_as_the_released_code(offsets, long_fold):
    backbone = create_backbone("tiny", NO_WEIGHTS)
    block = DualHeadAttentionBlock(backbone.blocks[0], offsets)
    frames, heads, dim = 5, backbone.num_heads, backbone.width // backbone.num_heads
    x = torch.randn(2 * frames, heads, 6, dim, generator=torch.Generator().manual_seed(1))
    # shift_div = width / head width moves exactly one head per direction, as 768 / 12 does on ViT-B/16.
    expected = released_shift(x, frames, fold=dim, long_fold=dim * long_fold)
    assert torch.equal(block.shift(x, frames), expected)
    assert not torch.equal(expected, x)


def test_a_block_mixes_only_the_frames_its_heads_read():
    model = build_tiny(frames=5).eval()
    block = model.backbone.blocks[0]
    x = torch.randn(2 * 5, 17, 96, generator=torch.Generator().manual_seed(3))
    moved = x.clone()
    moved[7] += torch.randn(17, 96, generator=torch.Generator().manual_seed(5))  # clip 1, frame 2
    with torch.no_grad():
        changed = (block(moved, 5) - block(x, 5)).abs().amax(dim=(1, 2)) > 1e-6
    # Frame 2 itself, frame 3 (head 0 reads t - 1) and frame 1 (head 1 reads t + 1); nothing in clip 0.
    expected = torch.zeros(10, dtype=torch.bool)
    expected[[6, 7, 8]] = True
    assert torch.equal(changed, expected)


def test_time_comes_from_stdha_alone():
    # STDHA changes the frozen attention from the start; without offsets the model is the image model.
    assert method_checks.starts_as_backbone("zeroi2v") > 1e-3
    assert method_checks.measures_time("zeroi2v")
    assert not method_checks.measures_time("zeroi2v", {"head_offsets": ()})
    torch.manual_seed(0)
    backbone = create_backbone("tiny", NO_WEIGHTS)
    plain = method_checks.build_method("linear_probe", copy.deepcopy(backbone), 10).eval()
    spatial = method_checks.build_method("zeroi2v", copy.deepcopy(backbone), 10, {"head_offsets": ()}).eval()
    with torch.no_grad():
        torch.testing.assert_close(spatial.backbone_tokens(clip()), plain.backbone_tokens(clip()), rtol=0, atol=1e-6)


def test_released_pooling_normalises_each_frame_before_the_mean():
    model = build_tiny().eval()
    video = clip()
    with torch.no_grad():
        tokens = model.backbone_tokens(video)
        expected = model.backbone.final_norm(tokens[:, :, 0]).mean(dim=1)
        torch.testing.assert_close(model.pooled_features(video), expected, rtol=0, atol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="merge into a linear layer"):
        ZeroI2VConfig(sites=("before_attention",))
    with pytest.raises(ValueError, match="ratio"):
        ZeroI2VConfig(ratio=0)
    with pytest.raises(ValueError, match="head offsets"):
        build_tiny({"head_offsets": (1, -1, 1, -1, 1)})  # tiny has 4 heads
