"""The method API: the run's context, intermediate blocks and their q/k, hook sites and merging, pools
and heads of other widths, weight-decay exemptions and parameter groups, what the feature cache
serves, and the attention projections as nn.Linear modules that peft's LoRA can wrap."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones import NO_WEIGHTS, Features, create_backbone
from peft_bench.backbones.base import take_indices
from peft_bench.config import TrainConfig, resolve_config
from peft_bench.method_api import checks as method_checks
from peft_bench.method_api.layers import SITES, HookedBlock, LinearAdapter, hook_blocks, merge_modules
from peft_bench.method_api.model import FeatureRequest, VideoClassifier
from peft_bench.method_api.optim import ParamGroup
from peft_bench.method_api.registry import RunContext, get_method, load_plugin

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


@functools.cache
def _two_block(name: str):
    torch.manual_seed(0)
    backbone = create_backbone(name, NO_WEIGHTS)
    backbone.blocks = backbone.blocks[:2]
    return backbone


def backbone_of(family: str):
    """A real backbone with random weights: tiny whole, the ViT-B/16s cut to two blocks (the real blocks)."""
    if family == "tiny":
        torch.manual_seed(0)
        return create_backbone("tiny", NO_WEIGHTS)
    return copy.deepcopy(_two_block(family))


def random_clip(backbone, frames: int = 2, batch: int = 1) -> torch.Tensor:
    size = backbone.input_size
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(3))


FAMILIES = ["tiny", "clip_vitb16", "in21k_vitb16"]


# --- the run's context ---------------------------------------------------------------------------


def test_frames_set_on_the_command_line_build_the_temporal_embedding_of_that_length():
    from peft_bench.cli import build_parser
    from peft_bench.launch.plan import run_configs
    from peft_bench.train.runner import build_model

    (cfg,) = run_configs(
        build_parser().parse_args(
            ["run", "--methods", "temporal_ft", "--dataset", "synthetic-motion", "--set", "num_frames=16"]
        )
    )
    assert cfg.method_args["num_frames"] == 16  # resolved once, recorded and hashed with the run
    model = build_model(cfg, 10, create_backbone("tiny", NO_WEIGHTS))
    assert model.backbone.blocks[0].before_attention.time_embedding.table.shape[0] == 16
    default = resolve_config({"method": "temporal_ft"})
    assert default.method_args["num_frames"] == 8 and default.digest() != cfg.digest()


def test_an_explicit_method_value_wins_over_the_context():
    cfg = resolve_config({"method": "full_ft_ts", "num_frames": 16, "method_args": {"num_frames": 4}})
    assert cfg.method_args["num_frames"] == 4


def test_models_time_is_measured_on_the_runs_own_config():
    flat = resolve_config({"method": "st_adapter", "method_args": {"kernel_size": [1, 1, 1]}})
    assert method_checks.measures_time(flat.method, flat.method_args) is False  # (1,1,1): frames never meet
    assert method_checks.measures_time("st_adapter", resolve_config({"method": "st_adapter"}).method_args) is True


def test_a_config_naming_blocks_tiny_lacks_is_measured_on_the_runs_backbone(monkeypatch):
    from peft_bench.train import runner

    calls = []

    def measure(method, method_args, backbone_name="tiny"):
        calls.append(backbone_name)
        if backbone_name == "tiny":
            raise ValueError("layers (10, 11) do not fit a backbone of 4 blocks")
        return True

    monkeypatch.setattr(runner, "measures_time", measure)
    assert runner._measured_models_time("temporal_ft", None, json.dumps({"layers": [10, 11]}), "clip_vitb16") is True
    assert calls == ["tiny", "clip_vitb16"]


@pytest.mark.slow
def test_a_run_of_st_adapter_with_a_pointwise_kernel_is_tagged_as_not_modelling_time(tmp_path):
    import mlflow

    from peft_bench.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        main(
            [
                "run",
                "--methods",
                "st_adapter",
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
                "train.val_subset=4",
                "--set",
                "train.num_workers=0",
                "--set",
                "train.batch_size=16",
                "--set",
                "method.width=8",
                "--set",
                "method.kernel_size=[1,1,1]",
            ]
        )
        == 0
    )
    run = mlflow.search_runs(experiment_names=["peft-bench"], output_format="list")[0]
    assert run.data.tags["peft_bench.models_time"] == "no"


def test_the_context_reaches_build_and_the_head_dropout_is_the_runs():
    seen = {}

    def build(backbone, context, cfg):
        seen["context"] = context
        return VideoClassifier(backbone, context)

    from peft_bench.method_api.registry import MethodSpec
    from peft_bench.methods.linear_probe import LinearProbeConfig

    spec = MethodSpec("probe", build, LinearProbeConfig, "Linear probe", "SA", False)
    model = spec.create(
        create_backbone("tiny", NO_WEIGHTS),
        RunContext(num_classes=3, num_frames=5, head_dropout=0.25, class_names=("a", "b", "c")),
    )
    context = seen["context"]
    assert (context.num_classes, context.num_frames, context.input_size, context.backbone.name) == (3, 5, 32, "tiny")
    assert model.dropout.p == 0.25 and model.head.out_features == 3
    assert not any(p.requires_grad for p in model.backbone.parameters())  # create froze it


# --- hidden states of chosen blocks ---------------------------------------------------------------


def test_block_indices_follow_timms_convention():
    assert take_indices(None, 4) == [0, 1, 2, 3]
    assert take_indices(2, 4) == [2, 3]
    assert take_indices([0, -1], 4) == [0, 3]
    assert take_indices([], 4) == []
    with pytest.raises(ValueError, match="outside"):
        take_indices([4], 4)
    with pytest.raises(ValueError, match="last 5"):
        take_indices(5, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediates_and_qk_are_what_the_blocks_compute(family):
    backbone = backbone_of(family).eval()
    video = random_clip(backbone)
    with torch.no_grad():
        features = backbone.forward_intermediates(video, indices=[0, -1], qk=True)
        x = backbone.embed(video.flatten(0, 1), video.shape[1])
        outputs, qk = [], []
        for block in backbone.blocks:
            q, k, _ = block.project_qkv(block.norm1(x))
            qk.append((q, k))
            x = block(x, video.shape[1])
            outputs.append(x)
    last = len(backbone.blocks) - 1
    assert sorted(features.intermediates) == sorted(features.qk) == [0, last]
    torch.testing.assert_close(features.tokens, backbone(video), rtol=0, atol=0)
    for i in (0, last):
        torch.testing.assert_close(features.intermediates[i], outputs[i].view(*video.shape[:2], *x.shape[1:]))
        for got, want in zip(features.qk[i], qk[i], strict=True):  # (B, T, heads, L, d)
            torch.testing.assert_close(got, want.view(*video.shape[:2], *want.shape[1:]))


def test_qk_through_a_wrapper_that_bypasses_the_projection_is_an_error():
    from peft_bench.method_api.layers import WrappedBlock

    class Opaque(WrappedBlock):  # computes its own attention without the block's projection
        def forward(self, x, num_frames):
            return x

    backbone = create_backbone("tiny", NO_WEIGHTS)
    backbone.blocks[1] = Opaque(backbone.blocks[1])
    with pytest.raises(RuntimeError, match=r"blocks \[1\]"):
        backbone.forward_intermediates(random_clip(backbone), [1], qk=True)


@pytest.mark.parametrize("family", ["tiny", "in21k_vitb16"])
def test_a_hook_before_the_pre_norm_sees_embedded_frames_and_trains(family):
    """Where AIM and ZeroI2V add their temporal embedding: after the position embedding, before ln_pre."""
    from peft_bench.method_api.temporal import TemporalEmbedding

    backbone = backbone_of(family).requires_grad_(False)
    video = random_clip(backbone, frames=3)
    reference = backbone(video)
    backbone.before_pre_norm = TemporalEmbedding(backbone.width, 3, init_std=0.5)
    assert "before_pre_norm.table" in dict(backbone.named_parameters())  # registered: it trains and is counted
    changed = backbone(video)
    assert changed.shape == reference.shape and not torch.allclose(changed, reference)
    with torch.no_grad():
        x = backbone.embed_patches(video.flatten(0, 1)).view(1, 3, -1, backbone.width)
        x = backbone.pre_norm((x + backbone.before_pre_norm.table[None, :, None]).flatten(0, 1))
        for block in backbone.blocks:
            x = block(x, 3)
    torch.testing.assert_close(changed, x.view_as(changed))


# --- hook sites and merging -------------------------------------------------------------------------


class Recorder(nn.Module):
    def __init__(self, site, log):
        super().__init__()
        self.site, self.log = site, log

    def forward(self, x, num_frames):
        self.log.append(self.site)
        return torch.zeros_like(x) if self.site.startswith("beside") else x


def test_hooks_run_at_their_sites_in_the_order_of_the_block():
    backbone = create_backbone("tiny", NO_WEIGHTS)
    log = []
    reference = backbone(random_clip(backbone))
    for site in SITES:
        hook_blocks(backbone, (0,), site, lambda site=site: Recorder(site, log))
    assert isinstance(backbone.blocks[0], HookedBlock) and not isinstance(backbone.blocks[0].inner, HookedBlock)
    torch.testing.assert_close(backbone(random_clip(backbone)), reference, rtol=0, atol=0)
    assert log == [
        "before_attention",
        "after_norm1",
        "after_attention",
        "beside_attention",
        "before_mlp",
        "after_norm2",
        "after_mlp",
        "beside_mlp",
    ]
    with pytest.raises(ValueError, match="already has a hook at 'after_mlp'"):
        hook_blocks(backbone, (0,), "after_mlp", lambda: Recorder("again", log))


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_adapters_between_norms_and_projections_merge_into_the_weights(family):
    backbone = backbone_of(family).requires_grad_(False)
    video = random_clip(backbone).double()
    for site in ("after_norm1", "after_attention", "after_norm2", "after_mlp"):
        hook_blocks(backbone, None, site, lambda: LinearAdapter(backbone.width, 8, scale=0.5, dropout=0.1))
    model = VideoClassifier(backbone, RunContext(num_classes=5)).double()
    method_checks.perturb_trainable(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(video)
        merged = merge_modules(model)
        after = merged(video)
    assert not any(isinstance(block, HookedBlock) for block in merged.backbone.blocks)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in merged.backbone.parameters()) + 5 * (
        backbone.width + 1
    )
    torch.testing.assert_close(after, unmerged, rtol=1e-10, atol=1e-10)


def test_a_hook_that_cannot_fold_stops_the_merge():
    backbone = create_backbone("tiny", NO_WEIGHTS)
    hook_blocks(backbone, (0,), "before_mlp", lambda: LinearAdapter(backbone.width, 4))  # on the residual stream
    with pytest.raises(ValueError, match="cannot be merged"):
        backbone.blocks[0].merged()


# --- pooling and head -------------------------------------------------------------------------------


class LastBlocksWide(nn.Module):
    """A pool of another width that reads intermediate blocks: [CLS] of each, concatenated."""

    def forward(self, features: Features) -> torch.Tensor:
        return torch.cat([f[:, :, 0].mean(dim=1) for f in features.intermediates.values()], dim=-1)


def test_a_pool_of_another_width_and_a_head_of_the_methods_own():
    backbone = create_backbone("tiny", NO_WEIGHTS)
    context = RunContext(num_classes=7)
    model = VideoClassifier(backbone, context, pool=LastBlocksWide(), feature_dim=2 * backbone.width, intermediates=2)
    assert model.reads == FeatureRequest(intermediates=(2, 3))
    assert model.head.in_features == 2 * backbone.width
    assert model(random_clip(backbone, batch=2)).shape == (2, 7)
    head = nn.Sequential(nn.LayerNorm(backbone.width), nn.Linear(backbone.width, 7))
    custom = VideoClassifier(copy.deepcopy(backbone), context, head=head)
    assert custom.head is head and custom(random_clip(backbone)).shape == (1, 7)


def test_the_default_head_is_the_released_codes():
    backbone = create_backbone("tiny", NO_WEIGHTS).eval()
    model = VideoClassifier(backbone, RunContext(num_classes=4, head_dropout=0.0)).eval()
    video = random_clip(backbone, batch=2)
    with torch.no_grad():
        expected = model.head(backbone.final_norm(backbone(video)[:, :, 0].mean(dim=1)))
        torch.testing.assert_close(model(video), expected, rtol=0, atol=0)


def test_the_backbone_may_see_every_other_frame_while_the_pool_reads_the_clip():
    class Both(nn.Module):
        def forward(self, features):
            return features.final_norm(features.tokens[:, :, 0].mean(1)) + features.video.mean() * 0

    backbone = create_backbone("tiny", NO_WEIGHTS).requires_grad_(False)
    model = VideoClassifier(backbone, RunContext(num_classes=3), pool=Both(), video=True, frame_stride=2)
    video = random_clip(backbone, frames=4)
    features = model.forward_features(video)
    assert features.num_frames == 2 and features.video is video
    from peft_bench.train.feature_cache import feature_cache_refusal

    assert feature_cache_refusal(model) == "its head reads the clip itself"


# --- weight decay and parameter groups ----------------------------------------------------------------


def decay_of(model, cfg=None):
    cfg = cfg or TrainConfig(weight_decay=0.01)
    from peft_bench.train.runner import make_optimizer

    optimizer = make_optimizer(model, cfg)
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "method, exempt",
    [
        ("prompt_tuning", [r"\.prompts$"]),
        ("temporal_ft", [r"time_embedding\.table$"]),
        ("partial_ft_ta", [r"time_embedding\.table$"]),
        ("attentional_pooling", [r"^pool\.query$", r"^pool\.time_embedding\.table$"]),
        ("full_ft", [r"^backbone\.positional_embedding$"]),
        ("full_ft_ta", [r"^backbone\.positional_embedding$", r"time_embedding\.table$"]),
        ("full_ft_ts", [r"^backbone\.positional_embedding$", r"time_embedding\.table$", r"^pool\.token$"]),
    ],
)
def test_tokens_and_embeddings_are_exempt_from_weight_decay(method, exempt):
    model = method_checks.build_method(method, create_backbone("tiny", NO_WEIGHTS), 5)
    decay = decay_of(model)
    for name, wd in decay.items():
        declared = any(re.search(pattern, name) for pattern in exempt)
        two_d = dict(model.named_parameters())[name].ndim > 1
        assert wd == (0.01 if two_d and not declared else 0.0), name
    assert any(re.search(exempt[0], name) for name in decay)  # the exempt tensor does train


def test_timms_position_embedding_and_class_token_are_exempt():
    model = method_checks.build_method("full_ft", backbone_of("in21k_vitb16"), 5)
    decay = decay_of(model)
    assert decay["backbone.pos_embed"] == decay["backbone.cls_token"] == 0.0
    assert decay["backbone.patch_embed.proj.weight"] == 0.01


def test_a_method_declares_parameter_groups_and_the_optimizer_logs_them(caplog):
    class Slow(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            self.scale = nn.Parameter(torch.ones(1, dim))

        def param_groups(self):
            return [ParamGroup("slow", ("proj.*",), lr_mult=0.1, decay_mult=2.0)]

        def no_weight_decay(self):
            return {"sca*"}

        def forward(self, features):
            return self.proj(features.tokens[:, :, 0].mean(1)) * self.scale

    from peft_bench.train.runner import make_optimizer

    model = VideoClassifier(
        create_backbone("tiny", NO_WEIGHTS).requires_grad_(False), RunContext(num_classes=3), pool=Slow(96)
    )
    with caplog.at_level("INFO", logger="peft_bench.method_api.optim"):
        optimizer = make_optimizer(model, TrainConfig(lr=1.0, weight_decay=0.01))
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert (groups[id(model.pool.proj.weight)]["lr"], groups[id(model.pool.proj.weight)]["weight_decay"]) == (0.1, 0.02)
    assert groups[id(model.pool.proj.bias)]["weight_decay"] == 0.0  # 1-D
    assert (groups[id(model.pool.scale)]["lr"], groups[id(model.pool.scale)]["weight_decay"]) == (1.0, 0.0)
    assert groups[id(model.head.weight)]["weight_decay"] == 0.01
    assert "slow new decay" in caplog.text and "pool.sca*" in caplog.text


# --- the feature cache serves what the head reads -----------------------------------------------------


def test_packed_features_give_the_heads_logits_and_carry_intermediates_and_qk():
    backbone = create_backbone("tiny", NO_WEIGHTS).eval()

    class ReadsAll(nn.Module):
        def forward(self, features):
            q, k = features.qk[3]
            return features.final_norm(features.intermediates[2][:, :, 0].mean(1) + (q * k).mean())

    model = VideoClassifier(
        backbone, RunContext(num_classes=3, head_dropout=0.0), pool=ReadsAll(), intermediates=[2, 3], qk=True
    ).eval()
    video = random_clip(backbone, frames=3, batch=2)
    with torch.no_grad():
        features = model.forward_features(video)
        packed = model.pack_features(features)
        assert packed.shape == (2, 3, 1 + 2 + 4, 17, 96)  # tokens, two blocks, q and k of each
        torch.testing.assert_close(model.head_from_tokens(packed), model(video), rtol=0, atol=0)


def test_the_cache_stores_and_keys_on_what_the_head_reads(tmp_path):
    from peft_bench.data.build import build_dataset
    from peft_bench.train import feature_cache

    backbone = create_backbone("tiny", NO_WEIGHTS).requires_grad_(False)
    data = torch.utils.data.Subset(
        build_dataset(
            "synthetic-appearance",
            "val",
            root=None,
            input_size=32,
            mean=backbone.mean,
            std=backbone.std,
            num_frames=2,
            seed=0,
        ),
        range(3),
    )
    plain = VideoClassifier(copy.deepcopy(backbone), RunContext(num_classes=3))
    deep = VideoClassifier(
        copy.deepcopy(backbone), RunContext(num_classes=3), pool=LastBlocksWide(), feature_dim=2 * 96, intermediates=2
    )

    def entry(model):
        return feature_cache.get_or_build(tmp_path, model, data, None, "float32", torch.device("cpu"), 3, 0)

    tokens, streams = entry(plain), entry(deep)
    assert not streams.hit and tokens.tokens.shape == (3, 2, 2, 17, 96)
    assert streams.tokens.shape == (3, 2, 2, 3, 17, 96)  # clips, views, frames, (tokens + 2 blocks), L, D
    np_tokens = torch.from_numpy(streams.tokens[:, :, :, 0].copy())
    torch.testing.assert_close(np_tokens, torch.from_numpy(tokens.tokens[:].copy()))
    with torch.no_grad():
        expected = deep.forward_features(data[1]["video"]).intermediates[2]
    torch.testing.assert_close(torch.from_numpy(streams.tokens[1, :, :, 1].copy()), expected, rtol=1e-5, atol=1e-5)
    assert entry(deep).hit


# --- attention projections as nn.Linear, and LoRA through peft ----------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_projections_are_linear_modules_called_as_modules(family):
    backbone = backbone_of(family)
    block = backbone.blocks[0]
    layers = block.linear_layers()
    assert all(isinstance(layers[name], nn.Linear) for name in layers)
    names = {id(m): n for n, m in backbone.named_modules()}
    assert names[id(layers["qkv"])] == "blocks.0.block.attn.qkv"  # the same names on both libraries
    assert names[id(layers["proj"])] == "blocks.0.block.attn.proj"
    calls = []
    handles = [layers[n].register_forward_hook(lambda *a, n=n: calls.append(n)) for n in layers]
    backbone(random_clip(backbone))
    for handle in handles:
        handle.remove()
    assert calls == ["qkv", "proj", "fc1", "fc2"]


def test_clips_qkv_holds_the_checkpoints_own_in_proj_parameters():
    from open_clip.model import VisionTransformer

    from peft_bench.backbones.base import BackboneInfo
    from peft_bench.backbones.clip import ClipBackbone

    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=1, heads=4, mlp_ratio=4, output_dim=16)
    state = visual.state_dict(keep_vars=True)
    backbone = ClipBackbone(visual, BackboneInfo("t", "none", 64, 1, 4, 8, 32))
    assert backbone.blocks[0].block.attn.qkv.weight is state["transformer.resblocks.0.attn.in_proj_weight"]
    assert backbone.blocks[0].block.attn.proj.bias is state["transformer.resblocks.0.attn.out_proj.bias"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", ["qkv", "proj"])
def test_lora_with_a_nonzero_b_changes_the_logits_and_every_lora_parameter_learns(family, target):
    backbone = backbone_of(family)
    video = random_clip(backbone)
    spec = get_method("lora")
    model = spec.create(backbone, RunContext(num_classes=5), {"targets": [target]}).eval()
    with torch.no_grad():
        before = model(video)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(not p.any() for p in lora_b)  # starts as the backbone
        for p in lora_b:
            p.normal_(std=0.5)
        after = model(video)
    assert not torch.allclose(before, after)
    model.train()
    F.cross_entropy(model(video), torch.tensor([1])).backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * len(model.backbone.blocks)
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())


def test_lora_merges_into_the_backbone():
    difference, _unmerged, merged = method_checks.merge_difference("lora")
    assert difference < 1e-10
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert type(merged.backbone.blocks[0].block.attn.qkv) is nn.Linear


# --- the README's method is real ------------------------------------------------------------------------


def readme_plugin(tmp_path) -> str:
    """The Python block of README's "Adding a method", written to a file and loaded as a plugin."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Adding a method") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    path = tmp_path / "readme_method.py"
    path.write_text(code)
    load_plugin(path)
    return re.search(r'@register_method\(\s*"(\w+)"', code).group(1)


def test_the_readme_method_reads_intermediate_blocks_and_passes_the_registry_checks(tmp_path):
    name = readme_plugin(tmp_path)
    spec = get_method(name)
    model = method_checks.build_method(name, create_backbone("tiny", NO_WEIGHTS), 5)
    assert model.reads.intermediates  # it reads blocks before the last
    assert method_checks.params_without_gradient(name) == []
    assert method_checks.frozen_after_step(name) == []
    assert method_checks.measures_time(name) == spec.models_time
    from peft_bench.train.feature_cache import feature_cache_refusal

    assert feature_cache_refusal(model) is None  # the cache stores the blocks it reads
    from peft_bench.measure.accounting import account

    assert account(name, "tiny", num_classes=5, frames=2, views=1).uncounted_ops == {}


def test_methods_lists_later_methods_with_their_authors_figure(monkeypatch, capsys):
    from peft_bench import cli

    monkeypatch.setattr(method_checks, "authors_params_m", lambda: {"lora": 0.5})
    assert cli.main(["methods", "--backbone", "tiny", "--num-classes", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in lines[1:]]
    assert rows.index("st_adapter") < rows.index("adaptformer") < rows.index("lora")  # later methods last
    lora = next(line for line in lines if line.startswith("lora"))
    assert "Later methods" in lora and "0.50 (authors)" in lora
    assert "(paper)" in next(line for line in lines if line.startswith("st_adapter"))


def test_the_default_run_is_the_papers_benchmark_and_all_adds_later_methods():
    from peft_bench.cli import build_parser
    from peft_bench.launch.plan import run_configs
    from peft_bench.reference import paper_method_order

    default = [c.method for c in run_configs(build_parser().parse_args(["run", "--dataset", "synthetic-motion"]))]
    assert default == paper_method_order()
    every = [
        c.method
        for c in run_configs(build_parser().parse_args(["run", "--dataset", "synthetic-motion", "--methods", "all"]))
    ]
    assert every[: len(default)] == default and {"lora", "bitfit", "adaptformer"} <= set(every[len(default) :])
