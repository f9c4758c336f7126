"""DiST: the hand count on CLIP ViT-B/16, which frames each encoder reads, how the two encoders exchange
features, the released initialisation and weight-decay exemptions, the presets, and that the feature
cache refuses it. Random weights throughout."""

from __future__ import annotations

import math
import re

import pytest
import torch

from peft_bench.backbones import NO_WEIGHTS, create_backbone
from peft_bench.config import ConfigError, TrainConfig, resolve_config
from peft_bench.measure.accounting import account
from peft_bench.method_api import checks as method_checks
from peft_bench.method_api.model import count_parameters
from peft_bench.method_api.registry import RunContext, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- CLIP ViT-B/16 counted by hand: D = 768, 12 blocks, 16 x 16 patches; C = 384, c = 96, 6 heads -----------
D, DEPTH, PATCH = 768, 12, 16
C, c = 384, 96


def linear(i: int, o: int) -> int:
    return i * o + o


def conv(i: int, o: int, kernel: int) -> int:
    return i * o * kernel + o


def dist_trainable(classes: int, pooling_layers: int, spatial_frames: int) -> int:
    stem = conv(3, c, 5 * PATCH * PATCH)
    temporal_block = 2 * c + conv(c, c, 3) + conv(c, c, 3 * 3)  # LN, (3,1,1), (1,3,3)
    integration = 2 * C + 2 * linear(C, C) + 2 * C + conv(C, C // 4, 1) + conv(C // 4, C // 4, 3) + conv(C // 4, C, 1)
    stage = linear(D, C) + temporal_block + linear(C, c) + conv(c, C, 2) + spatial_frames * C + integration
    last_stage = stage - linear(C, c)  # nothing reads the temporal encoder after the last block
    attention = 2 * C + 4 * linear(C, C)  # LN, fused q/k/v, output projection
    mlp = 2 * C + linear(C, 4 * C) + linear(4 * C, C)
    pooling = 2 * attention + 2 * mlp + spatial_frames * C
    return (
        stem
        + (DEPTH - 1) * stage
        + last_stage
        + pooling_layers * pooling
        + 2 * C  # video and frame tokens
        + linear(D, C)
        + 2 * C
        + linear(C, classes)
    )  # [CLS] input, final norm, head


def vitb16_dist(preset: str, classes: int, frames: int = 16):
    spec = get_method("dist")
    with torch.device("meta"):
        return spec.create(
            create_backbone("clip_vitb16", NO_WEIGHTS),
            RunContext(num_classes=classes, num_frames=frames),
            spec.make_config(preset),
        )


@pytest.mark.parametrize("preset, classes, pooling_layers", [("k400", 400, 4), ("ssv2", 174, 2)])
def test_trainable_parameters_on_vitb16_match_the_hand_count(preset, classes, pooling_layers):
    """The released 8+16f configurations: 16-frame clips, 8 frames to CLIP."""
    model = vitb16_dist(preset, classes)
    assert count_parameters(model).trainable == dist_trainable(classes, pooling_layers, spatial_frames=8)
    assert all(n.startswith(("pool.", "head.")) for n, p in model.named_parameters() if p.requires_grad)


def test_the_hand_count_is_the_docstrings():
    import peft_bench.methods.dist as module

    k400, ssv2 = dist_trainable(400, 4, 8), dist_trainable(174, 2, 8)
    assert (k400, ssv2) == (26_025_616, 18_834_606)
    assert f"{k400:,}" in module.__doc__ and f"{ssv2:,}" in module.__doc__


@pytest.mark.parametrize("dataset, classes", [("synthetic-appearance", 8), ("synthetic-motion", 10)])
def test_the_tiny_counts_are_the_docstrings(dataset, classes):
    import peft_bench.methods.dist as module

    args = resolve_config({"method": "dist", "dataset": dataset}).method_args
    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), classes, args)
    assert f"{count_parameters(model).trainable:,} on {dataset}" in module.__doc__


def test_the_spatial_encoder_sees_every_other_frame_and_the_temporal_encoder_the_whole_clip():
    torch.manual_seed(0)
    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), 5).eval()
    clip = torch.randn(2, 8, 3, 32, 32)
    odd = clip.clone()
    odd[:, 3] += 1.0  # a frame only the temporal encoder reads
    with torch.no_grad():
        features = model.forward_features(clip)
        assert features.num_frames == 4 and features.video is clip
        torch.testing.assert_close(model.forward_features(odd).tokens, features.tokens, rtol=0, atol=0)
        assert not torch.allclose(model(odd), model(clip))


def test_each_spatial_frame_reaches_the_clip_frames_it_stands_for():
    """A change to spatial frame 1 reaches clip frames 2 and 3 of the temporal encoder and no other."""
    torch.manual_seed(0)
    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), 5)
    stage = model.pool.stages[0]
    x = torch.randn(1, stage.temporal.norm.normalized_shape[0], 8, 4, 4)
    spatial = torch.randn(1, 4, 17, 96)
    changed = spatial.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        before, u_before, _ = stage(x, spatial, 0.0)
        after, u_after, _ = stage(x, changed, 0.0)
    moved = (after - before).abs().amax(dim=(0, 1, 3, 4))
    assert moved[[2, 3]].min() > 0 and moved[[0, 1, 4, 5, 6, 7]].max() == 0
    assert (u_after - u_before).abs().amax(dim=(0, 2, 3))[[0, 2, 3]].max() == 0


def test_a_clip_the_stride_cannot_split_is_refused():
    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), 5)
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ConfigError, match="spatial_stride"):
        resolve_config({"method": "dist", "num_frames": 7})
    assert resolve_config({"method": "dist", "num_frames": 7, "method_args": {"spatial_stride": 1}})


def test_presets_follow_the_released_configurations_and_scale_to_tiny():
    motion = resolve_config({"method": "dist", "dataset": "synthetic-motion"}).method_args
    assert (motion["pooling_layers"], motion["integration_width"], motion["temporal_width"]) == (2, 48, 12)
    assert motion["num_frames"] == 8
    k400 = resolve_config(
        {"method": "dist", "dataset": "k400", "backbone": "clip_vitb16", "num_frames": 16}
    ).method_args
    assert (k400["pooling_layers"], k400["integration_width"], k400["temporal_width"], k400["spatial_stride"]) == (
        4,
        384,
        96,
        2,
    )


def test_released_initialisation():
    torch.manual_seed(0)
    model = method_checks.build_method("dist", create_backbone("clip_vitb16", NO_WEIGHTS), 5)
    pool = model.pool
    for name, module in pool.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            assert not module.bias.any(), name
            if not name.endswith("attn.qkv"):
                assert abs(module.weight.std().item() - 0.02) < 0.002, name
    qkv = pool.pooling[0].spatial_attn.attn.qkv.weight  # nn.MultiheadAttention's in_proj: Xavier-uniform
    bound = math.sqrt(6 / (C + 3 * C))
    assert qkv.abs().max() <= bound and abs(qkv.std().item() - bound / math.sqrt(3)) < 0.002
    assert abs(pool.video_token.std().item() - 0.02) < 0.005


def test_tokens_and_per_frame_embeddings_get_no_weight_decay():
    from peft_bench.train.runner import make_optimizer

    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), 5)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.01))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    exempt = [r"^pool\.(video|frame)_token$", r"\.frame_cls\.table$", r"\.time_embedding\.table$"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            declared = any(re.search(pattern, name) for pattern in exempt)
            assert decay[id(p)] == (0.01 if p.ndim > 1 and not declared else 0.0), name
    assert decay[id(model.pool.stages[0].frame_cls.table)] == 0.0


def test_the_feature_cache_refuses_it_and_the_run_trains_on_clips():
    from peft_bench.train.feature_cache import feature_cache_refusal
    from peft_bench.train.runner import use_feature_cache

    model = method_checks.build_method("dist", create_backbone("tiny", NO_WEIGHTS), 5)
    assert model.backbone_is_frozen() and model.reads.video
    assert feature_cache_refusal(model) == "its head reads the clip itself"
    cfg = resolve_config({"method": "dist", "speed": {"feature_cache": True}})
    train, val = object(), object()
    assert use_feature_cache(model, train, val, cfg, torch.device("cpu"), 2) == (
        train,
        val,
        "off: its head reads the clip itself",
    )


@pytest.mark.slow
def test_vitb16_is_counted_fully_and_clip_sees_half_the_frames():
    dist16 = account("dist", "clip_vitb16", num_classes=400, frames=16, views=3, preset="k400")
    assert dist16.uncounted_ops == {} and dist16.trainable_params == dist_trainable(400, 4, 8)
    clip8 = account("linear_probe", "clip_vitb16", num_classes=400, frames=8).gflops_per_view
    # CLIP on 8 of the 16 frames, and a side network far smaller than CLIP on another 8.
    assert clip8 < dist16.gflops_per_view < 1.25 * clip8
