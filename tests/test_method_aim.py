"""AIM (methods/aim.py): the hand count against the authors' 11M, what trains, the start as the frozen
image model, the temporal branch reusing the block's frozen attention across frames only, order coming
from the temporal embedding, the released drop path, the SSv2 preset and the GFLOPs. Random weights."""

from __future__ import annotations

import copy

import pytest
import torch

from peft_bench.backbones import NO_WEIGHTS, create_backbone
from peft_bench.measure.accounting import account, build_for_counting, count_video_flops
from peft_bench.method_api import checks as method_checks
from peft_bench.method_api.model import count_parameters
from peft_bench.method_api.registry import RunContext, get_method

D, DEPTH = 768, 12
WIDTH = D // 4  # their mlp_ratio=0.25
ADAPTER = D * WIDTH + WIDTH + WIDTH * D + D
TIME_EMBEDDING = 8 * D
LN_POST = 2 * D


def head(classes: int) -> int:
    return D * classes + classes


def vitb16_trainable(preset: str | None, classes: int) -> int:
    spec = get_method("aim")
    with torch.device("meta"):
        model = spec.create(
            create_backbone("clip_vitb16", NO_WEIGHTS), RunContext(num_classes=classes), spec.make_config(preset)
        )
    return count_parameters(model).trainable


def build_tiny(method: str = "aim", args: dict | None = None, frames: int = 4):
    torch.manual_seed(0)
    return method_checks.build_method(method, create_backbone("tiny", NO_WEIGHTS), 10, args, num_frames=frames)


def clip(frames: int = 4, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vitb16_k400_count_by_hand_and_against_the_authors():
    # Three adapters per block, the temporal embedding, ln_post and the head: 10,966,672.
    expected = DEPTH * 3 * ADAPTER + TIME_EMBEDDING + LN_POST + head(400)
    assert vitb16_trainable(None, 400) == vitb16_trainable("k400", 400) == expected == 10_966_672
    authors = method_checks.authors_params_m()["aim"]
    assert authors == 11
    assert abs(expected / 1e6 - authors) / authors < 0.01
    # Their 11M counts the head (tools/train.py logs cls_head as tunable): without it, 3% short.
    assert abs((expected - head(400)) / 1e6 - authors) / authors > 0.02


def test_vitb16_ssv2_preset_adds_the_temporal_input_adapter():
    assert vitb16_trainable("ssv2", 174) == DEPTH * 4 * ADAPTER + TIME_EMBEDDING + LN_POST + head(174) == 14_343_342


def test_only_adapters_temporal_embedding_final_norm_and_head_train():
    model = build_tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for name in trainable:
        assert (
            ".temporal." in name
            or ".spatial." in name
            or ".joint." in name
            or name.startswith(("backbone.before_pre_norm.", "backbone.final_norm.", "head."))
        ), name
    assert not any(".inner." in n for n in trainable)  # the block's own weights stay frozen
    assert {"backbone.before_pre_norm.table", "backbone.final_norm.weight", "backbone.final_norm.bias"} <= trainable
    assert not any(".temporal_in." in n for n in trainable)  # K400: one temporal adapter
    assert any(".temporal_in." in n for n, _ in build_tiny(args={"temporal_input_adapter": True}).named_parameters())


def test_starts_as_the_frozen_image_model_with_the_released_pooling():
    torch.manual_seed(0)
    backbone = create_backbone("tiny", NO_WEIGHTS)
    plain = method_checks.build_method("linear_probe", copy.deepcopy(backbone), 10).eval()
    model = method_checks.build_method("aim", copy.deepcopy(backbone), 10).eval()
    video = clip()
    with torch.no_grad():
        tokens = plain.backbone_tokens(video)
        torch.testing.assert_close(model.backbone_tokens(video), tokens, rtol=0, atol=1e-6)
        # The released head normalises each frame's [CLS] and averages; the default averages, then normalises.
        per_frame = backbone.final_norm(tokens[:, :, 0]).mean(dim=1)
        torch.testing.assert_close(model.pooled_features(video), per_frame, rtol=0, atol=1e-6)
        assert (plain.pooled_features(video) - per_frame).abs().max() > 1e-3


def test_temporal_branch_mixes_frames_only_at_the_same_token_position():
    model = build_tiny().eval()
    method_checks.perturb_trainable(model)
    block = model.backbone.blocks[0]
    x = torch.randn(2 * 4, 17, 96, generator=torch.Generator().manual_seed(3))
    moved = x.clone()
    moved[5, 7] += torch.randn(96, generator=torch.Generator().manual_seed(5))  # clip 1, frame 1, token 7
    with torch.no_grad():
        change = (block.attend_over_time(moved, 4) - block.attend_over_time(x, 4)).abs().amax(dim=-1)
    changed = change > 1e-6
    # Every frame of clip 1 at token 7 changes (attention across frames), nothing else does.
    expected = torch.zeros_like(changed)
    expected[4:8, 7] = True
    assert torch.equal(changed, expected)


def test_temporal_branch_is_the_blocks_frozen_attention_across_frames():
    """The T-Adapter's input is the block's own LN1 -> q/k/v -> softmax attention -> output projection,
    computed here from the block's weights with explicit matrix products over each position's frames."""
    model = build_tiny(frames=3).eval()
    block = model.backbone.blocks[2]
    block.temporal.skip = True  # read the attention's output itself: T-Adapter at zero plus the skip
    weights = block.inner.attention_weights()
    x = torch.randn(3, 17, 96, generator=torch.Generator().manual_seed(4))  # one clip of 3 frames
    seq = x.transpose(0, 1)  # (17 positions, 3 frames, 96)
    h = torch.nn.functional.layer_norm(seq, (96,), weights["norm_weight"], weights["norm_bias"])
    q, k, v = (h @ weights["qkv_weight"].T + weights["qkv_bias"]).chunk(3, dim=-1)
    heads = [slice(i * 24, (i + 1) * 24) for i in range(4)]
    out = torch.cat(
        [torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 24**0.5, dim=-1) @ v[..., s] for s in heads], dim=-1
    )
    expected = (out @ weights["proj_weight"].T + weights["proj_bias"]).transpose(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(block.attend_over_time(x, 3), expected, rtol=1e-4, atol=1e-5)


def test_frame_order_comes_from_the_temporal_embedding():
    # Attention over time is symmetric in the frames: without the embedding, shuffling them changes nothing.
    assert method_checks.measures_time("aim")
    assert method_checks.measures_time("aim", {"temporal_input_adapter": True, "scale": 1.0})
    assert not method_checks.measures_time("aim", {"temporal_embedding": False})


def test_temporal_embedding_follows_the_runs_frame_count():
    model = build_tiny(frames=6)
    assert model.backbone.before_pre_norm.table.shape == (6, 96)


def test_drop_path_drops_whole_token_positions_for_the_whole_batch():
    model = build_tiny(args={"drop_path": 0.5})
    blocks = model.backbone.blocks
    assert [b.drop_path for b in blocks] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])  # linear over the blocks
    from peft_bench.methods.aim import drop_token_paths

    torch.manual_seed(0)
    x = torch.ones(6, 50, 8)
    out = drop_token_paths(x, 0.5, training=True)
    kept = out[0, :, 0] != 0
    assert 0 < kept.sum() < 50
    assert torch.equal(out, torch.where(kept[None, :, None], 2.0, 0.0).expand_as(x))  # same for every row
    assert torch.equal(drop_token_paths(x, 0.5, training=False), x)


def test_ssv2_preset_scales_the_joint_adapter_by_one():
    spec = get_method("aim")
    assert (spec.make_config("ssv2").scale, spec.make_config("ssv2").temporal_input_adapter) == (1.0, True)
    assert (spec.make_config("k400").scale, spec.make_config(None).scale) == (0.5, 0.5)


def test_temporal_embedding_is_exempt_from_weight_decay():
    from peft_bench.method_api.optim import no_weight_decay_patterns

    assert "backbone.before_pre_norm.table" in no_weight_decay_patterns(build_tiny())


def test_tiny_gflops_are_the_image_model_plus_the_hand_counted_additions():
    frames, dim, depth, tokens = 4, 96, 4, 17
    model, _ = build_for_counting("aim", "tiny", 10, None, frames)
    plain, _ = build_for_counting("linear_probe", "tiny", 10, None, frames)
    added = count_video_flops(model, frames, 32).total - count_video_flops(plain, frames, 32).total
    n = frames * tokens
    projections = depth * n * 4 * dim * dim  # q/k/v and output projection again, for attention over time
    adapters = 3 * depth * n * 2 * dim * (dim // 4)
    attention = depth * tokens * frames * frames * 2 * dim  # scores and weighted values, all heads
    norms = depth * n * dim * 5 + (frames - 1) * dim * 5  # LN1 again; ln_post on every frame's [CLS]
    assert added == projections + adapters + attention + norms


@pytest.mark.slow
def test_vitb16_gflops_match_the_authors_606_at_8x3x1():
    a = account("aim", "clip_vitb16", num_classes=400, preset="k400", frames=8, views=3)
    assert a.uncounted_ops == {}
    assert a.gflops_total == pytest.approx(606, rel=0.01)


@pytest.mark.parametrize("preset,classes,expected", [("k400", 8, 58_472), ("ssv2", 10, 77_578)])
def test_tiny_counts_as_the_docstring_says(preset, classes, expected):
    # No tiny preset: the adapters are 96 // 4 = 24 wide in all 4 blocks (the embedded default's runs).
    spec = get_method("aim")
    cfg = spec.make_config([preset, "tiny"], None, RunContext(num_classes=classes, num_frames=8))
    model = spec.create(create_backbone("tiny", NO_WEIGHTS), RunContext(num_classes=classes, num_frames=8), cfg)
    adapter = 96 * 24 + 24 + 24 * 96 + 96
    adapters = (3 if preset == "k400" else 4) * 4 * adapter
    assert count_parameters(model).trainable == adapters + 8 * 96 + 2 * 96 + 96 * classes + classes == expected
