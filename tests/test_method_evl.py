"""EVL: its parameters counted by hand on CLIP ViT-B/16, the decoder reading the last blocks in order, the
temporal cross-attention against the released definition, what each local temporal module contributes
to frame order, its initialisation and weight decay as released, and the feature cache serving it."""

from __future__ import annotations

import copy

import mlflow
import numpy as np
import pytest
import torch

from peft_bench.backbones import NO_WEIGHTS, create_backbone
from peft_bench.method_api import checks as method_checks
from peft_bench.method_api.model import count_parameters
from peft_bench.method_api.optim import optimizer_param_groups
from peft_bench.method_api.registry import RunContext, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFF = {"temporal_conv": False, "temporal_position_embedding": False, "temporal_cross_attention": False}


def build(backbone_name: str = "tiny", num_classes: int = 5, num_frames: int = 4, **args):
    torch.manual_seed(0)
    return get_method("evl").create(
        create_backbone(backbone_name, NO_WEIGHTS),
        RunContext(num_classes=num_classes, num_frames=num_frames),
        args or None,
    )


def vitb16_on_meta(**args):
    with torch.device("meta"):
        return build("clip_vitb16", num_classes=400, num_frames=8, **args)


# --- parameters ------------------------------------------------------------------------------------


def test_trainable_parameters_on_clip_vitb16_are_the_docstrings_hand_count():
    d, grid, frames = 768, 14, 8
    attention = 4 * (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    layer = attention + mlp + 3 * 2 * d
    temporal = (3 * d + d) + frames * d + 2 * (2 * grid - 1) ** 2 * d
    assert (layer, temporal) == (7_089_408, 1_128_960)
    model = vitb16_on_meta()
    assert count_parameters(model.pool.layers[0]).trainable == layer
    assert count_parameters(model.pool.temporal[0]).trainable == temporal
    head = 2 * d + d * 400 + 400  # the head's LayerNorm (in the pool) and the linear layer
    assert count_parameters(model).trainable == 4 * (layer + temporal) + d + head == 33_183_376
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_on_tiny_the_decoder_reads_every_block_and_is_the_docstrings_count():
    d, offsets = 96, 7 * 7  # tiny: 96 wide, a 4 x 4 patch grid
    layer = 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 3 * 2 * d
    temporal = (3 * d + d) + 8 * d + 2 * offsets * d
    assert (layer, temporal) == (112_032, 10_560)
    model = build(num_classes=10, num_frames=8)
    assert model.pool.blocks == (0, 1, 2, 3)
    assert count_parameters(model).trainable == 4 * (layer + temporal) + d + 2 * d + 10 * d + 10 == 491_626


def test_the_decoder_reads_the_last_blocks_in_order_with_their_q_and_k():
    model = vitb16_on_meta()
    assert model.pool.blocks == model.reads.intermediates == (8, 9, 10, 11)
    assert model.reads.qk and not model.reads.video
    # Without the cross-attention, q and k are not asked for (nor stored by a feature cache).
    assert not vitb16_on_meta(temporal_cross_attention=False).reads.qk
    assert build(num_layers=2).pool.blocks == (2, 3)


def test_more_decoder_layers_than_blocks_is_an_error():
    with pytest.raises(ValueError, match="last 5 blocks of a 4-block"):
        build(num_layers=5)
    with pytest.raises(ValueError, match="mlp_dropout"):
        get_method("evl").make_config(None, {"mlp_dropout": 1.0})


# --- the temporal cross-attention --------------------------------------------------------------------


def test_relative_offsets_index_as_the_released_double_loop():
    from peft_bench.methods.evl import relative_offset_index

    height, width = 3, 4
    expected = torch.zeros(height * width, height * width, dtype=torch.long)
    for q in range(height * width):
        for k in range(height * width):
            expected[q, k] = (q // width - k // width + height - 1) * (2 * width - 1) + (
                q % width - k % width + width - 1
            )
    assert torch.equal(relative_offset_index(height, width), expected)
    assert expected.max() == (2 * height - 1) * (2 * width - 1) - 1  # every offset has its own row


def test_cross_attention_weighs_offset_vectors_by_the_neighbouring_frames_attention_map():
    from peft_bench.methods.evl import TemporalCrossAttention

    torch.manual_seed(0)
    b, t, heads, side, d, dim = 2, 3, 2, 2, 4, 5
    layer = TemporalCrossAttention(dim, (side, side))
    with torch.no_grad():
        layer.previous.normal_()
    q, k = torch.randn(2, b, t, heads, 1 + side * side, d).unbind(0)
    out = layer(q, k)
    assert out.shape == (b, t, 1 + side * side, dim)
    assert out[:, :, 0].abs().max() == 0  # [CLS] gets nothing
    assert out[:, 0].abs().max() == 0  # the first frame has no previous frame (and `next` is still zero)
    # Frame 2, patch (1, 0) = patch 2: attention to frame 1's patches, heads averaged, weighs their offsets.
    qp, kp = q[0, 2, :, 3], k[0, 1, :, 1:]
    attention = torch.softmax(torch.einsum("hd,hkd->hk", qp, kp) / d**0.5, dim=-1).mean(0)
    offsets = [(1 - r // side + side - 1) * (2 * side - 1) + (0 - r % side + side - 1) for r in range(side * side)]
    expected = (attention[:, None] * layer.previous[offsets]).sum(0)
    torch.testing.assert_close(out[0, 2, 3], expected)
    with torch.no_grad():
        layer.previous.zero_()
        layer.next.normal_()
    later = layer(q, k)
    assert later[:, -1].abs().max() == 0 and later[:, :-1, 1:].abs().min() > 0  # the last frame has no next


def test_q_and_k_of_another_patch_grid_are_refused_with_the_reason():
    from peft_bench.methods.evl import TemporalCrossAttention

    q = torch.randn(1, 2, 2, 1 + 36, 4)
    with pytest.raises(ValueError, match="4x4 patch grid, got 36 patches"):
        TemporalCrossAttention(8, (4, 4))(q, q)


# --- frame order --------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(OFF))
def test_each_local_temporal_module_alone_makes_the_decoder_see_frame_order(module):
    assert method_checks.measures_time("evl", {**OFF, module: True}) is True


def test_without_its_temporal_modules_the_decoder_reads_the_frames_as_a_set():
    assert method_checks.measures_time("evl", OFF) is False


# --- initialisation and weight decay, as released ---------------------------------------------------------


def test_initialisation_as_released():
    pool = build().pool
    assert not pool.query.any()  # the released N(0, 0.02) init is never called
    temporal = pool.temporal[0]
    assert not temporal.position.table.any() and not temporal.cross_attention.previous.any()
    assert temporal.conv.weight.abs().min() > 0  # PyTorch's default, not zero: order matters from the start
    layer = pool.layers[0]
    assert not layer.attn.qkv.bias.any() and 0 < layer.mlp[0].bias.abs().max() < 1e-4
    bound = (6 / (2 * 96)) ** 0.5  # Xavier-uniform on each D x D projection (q, k, v separately)
    assert bound / 2 < layer.attn.qkv.weight.abs().max() <= bound


def test_every_tensor_of_two_dimensions_decays_as_in_the_released_optimizer():
    model = build()
    groups = optimizer_param_groups(model, lr=1e-3, weight_decay=0.05)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    temporal = model.pool.temporal[0]
    assert decay[id(temporal.position.table)] == decay[id(temporal.cross_attention.next)] == 0.05
    assert decay[id(temporal.conv.weight)] == decay[id(model.head.weight)] == 0.05
    assert decay[id(model.pool.query)] == decay[id(temporal.conv.bias)] == 0.0  # 1-D: never, in this runner


def test_frames_of_the_run_size_the_position_embeddings():
    from peft_bench.config import resolve_config
    from peft_bench.train.runner import build_model

    cfg = resolve_config({"method": "evl", "dataset": "synthetic-motion", "num_frames": 6})
    model = build_model(cfg, 10, create_backbone("tiny", NO_WEIGHTS))
    assert model.pool.temporal[0].position.table.shape == (6, 96)


# --- the feature cache -------------------------------------------------------------------------------------


def clip_set(count: int):
    from peft_bench.data.build import build_dataset

    backbone = create_backbone("tiny", NO_WEIGHTS)
    data = build_dataset(
        "synthetic-appearance",
        "val",
        root=None,
        input_size=backbone.input_size,
        mean=backbone.mean,
        std=backbone.std,
        num_frames=3,
        seed=0,
    )
    return torch.utils.data.Subset(data, range(count))


@pytest.mark.parametrize("cross_attention", [True, False])
def test_the_feature_cache_serves_it_and_the_cached_features_give_its_logits(tmp_path, cross_attention):
    from peft_bench.train import feature_cache

    model = build(num_frames=3, temporal_cross_attention=cross_attention).eval()
    assert feature_cache.feature_cache_refusal(model) is None
    data = clip_set(3)
    entry = feature_cache.get_or_build(tmp_path, model, data, None, "float32", torch.device("cpu"), 3, 0)
    streams = 1 + 4 + (8 if cross_attention else 0)  # final tokens, the 4 blocks read, (their q and k)
    assert entry.tokens.shape == (3, 2, 3, streams, 17, 96)  # clips, views, frames, streams, tokens, width
    with torch.no_grad():
        for i in range(3):
            cached = model.head_from_tokens(torch.from_numpy(np.array(entry.tokens[i])))
            torch.testing.assert_close(cached, model(data[i]["video"]), rtol=1e-5, atol=1e-5)


def test_a_run_trains_it_from_the_feature_cache(tmp_path):
    from peft_bench.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        main(
            [
                "run",
                "--methods",
                "evl",
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
        )
        == 0
    )
    (run,) = mlflow.search_runs(experiment_names=["peft-bench"], output_format="list")
    assert run.data.tags["peft_bench.train.feature_cache"].startswith("on: 1 augmented copy")
    assert run.data.tags["peft_bench.models_time"] == "yes"
    assert 0 <= run.data.metrics["top1"] <= 100


def test_gradients_reach_every_new_parameter_from_cached_features():
    """The cache hands the decoder tensors without a graph: the decoder still learns from them."""
    model = build(num_frames=2).train()
    video = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        packed = model.pack_features(model.forward_features(video))
    model.head_from_tokens(copy.deepcopy(packed)).logsumexp(-1).sum().backward()
    without = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())}
    # The zero query normalises to zero, so the first layer's norm scale has nothing to scale at the first
    # step (its bias, and the query itself through the residual, do learn); from the second step on it does.
    assert without == {"pool.layers.0.norm1.weight"}
