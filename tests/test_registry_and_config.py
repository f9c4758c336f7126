"""The method registry finds methods without a central list; configs reject bad input before any work."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from peft_bench.config import load_config, resolve_config
from peft_bench.dataclass_io import ConfigError, parse_overrides
from peft_bench.method_api.registry import available_methods, get_method, load_plugin

PLUGIN = textwrap.dedent("""
    from dataclasses import dataclass
    import torch
    from peft_bench.method_api.model import VideoClassifier
    from peft_bench.method_api.registry import register_method

    @dataclass
    class FrozenMeanConfig:
        head_std: float = 0.01

    @register_method("{name}", config=FrozenMeanConfig, group="Linear probe", architecture="SA", models_time=False)
    def build(backbone, context, cfg):
        model = VideoClassifier(backbone, context)
        torch.nn.init.normal_(model.head.weight, std=cfg.head_std)
        return model
""")


def test_every_module_in_methods_registers_itself():
    import pkgutil

    from peft_bench import methods

    modules = {m.name for m in pkgutil.iter_modules(methods.__path__) if not m.name.startswith("_")}
    sources = {get_method(name).source.removeprefix("peft_bench.methods.") for name in available_methods()}
    assert modules <= sources
    assert {"linear_probe", "st_adapter"} <= set(available_methods())


def test_plugin_file_from_a_temporary_folder_registers(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(PLUGIN.format(name="tmp_plugin_method"))
    assert "tmp_plugin_method" not in available_methods()
    load_plugin(path)
    spec = get_method("tmp_plugin_method")
    assert spec.group == "Linear probe" and spec.make_config().head_std == 0.01


def test_plugin_through_the_cli(tmp_path, capsys):
    from peft_bench.cli import main

    path = tmp_path / "cli_plugin.py"
    path.write_text(PLUGIN.format(name="cli_plugin_method"))
    assert main(["methods", "--plugin", str(path)]) == 0
    assert "cli_plugin_method" in capsys.readouterr().out


def test_missing_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="plugin not found"):
        load_plugin(tmp_path / "nope.py")


def test_presets_follow_the_dataset():
    ssv2 = resolve_config({"method": "st_adapter", "dataset": "ssv2"})
    k400 = resolve_config({"method": "st_adapter", "dataset": "k400"})
    assert ssv2.method_args["positions"] == ["attention", "mlp"]
    assert k400.method_args["positions"] == ["mlp"]
    assert ssv2.train.epochs == 50 and k400.train.epochs == 12  # the paper's schedules


def test_overrides_reach_the_method_and_training_config():
    cfg = resolve_config(parse_overrides(["method.width=128", "train.lr=0.01", "dataset=synthetic-motion"]))
    assert cfg.method_args["width"] == 128 and cfg.train.lr == 0.01


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "no_such_method"}, "unknown method 'no_such_method'; available: .*st_adapter"),
        ({"backbone": "resnet"}, "unknown backbone 'resnet'; available: .*clip_vitb16"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; available: .*k400"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"head_dropout": 1.5}}, r"head_dropout must lie in \[0, 1\), got 1.5"),
        ({"method": "linear_probe", "method_args": {"dropout": 0.1}}, "unknown key method.dropout"),
        ({"train": {"nonsense": 1}}, "unknown key train.nonsense"),
        ({"method": "st_adapter", "method_args": {"width": "wide"}}, "method.width: expected an integer"),
        ({"method": "st_adapter", "method_args": {"positions": ["attention", "head"]}}, "positions"),
        ({"method": "st_adapter", "preset": "k700"}, "no preset 'k700'"),
    ],
)
def test_malformed_config_stops_with_a_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_config_digest_ignores_where_outputs_go_but_not_what_changes_results():
    a = resolve_config({"dataset": "synthetic-motion"})
    b = resolve_config({"dataset": "synthetic-motion", "output_dir": "elsewhere", "train": {"num_workers": 3}})
    c = resolve_config({"dataset": "synthetic-motion", "train": {"lr": 0.5}})
    assert a.digest() == b.digest() != c.digest()


def test_cli_rejects_unknown_method_before_any_work(capsys):
    from peft_bench.cli import main

    assert main(["run", "--methods", "linear_probe,bogus", "--no-table"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'bogus'" in err and "linear_probe" in err


def test_a_saved_config_is_the_base_and_only_given_flags_override_it(tmp_path):
    from peft_bench.cli import build_parser
    from peft_bench.launch.plan import run_configs

    saved = resolve_config(
        {
            "method": "st_adapter",
            "backbone": "clip_vitb16",
            "dataset": "ssv2",
            "pretrained": "none",
            "seed": 3,
            "method_args": {"width": 128},
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(saved.to_yaml())

    (again,) = run_configs(build_parser().parse_args(["run", "--config", str(path)]))
    assert (again.method, again.backbone, again.dataset, again.pretrained, again.seed) == (
        "st_adapter",
        "clip_vitb16",
        "ssv2",
        "none",
        3,
    )
    assert again.digest() == saved.digest()

    (changed,) = run_configs(
        build_parser().parse_args(
            ["run", "--config", str(path), "--backbone", "in21k_vitb16", "--set", "train.lr=0.01"]
        )
    )
    assert changed.backbone == "in21k_vitb16" and changed.train.lr == 0.01 and changed.dataset == "ssv2"


def test_decoder_is_checked_and_left_out_of_the_digest():
    # Every decoder returns the same frames, so choosing one must not make a run look like another recipe.
    digests = {
        resolve_config({"data": {"decoder": name}}).digest() for name in ("auto", "pyav", "torchcodec", "decord")
    }
    assert len(digests) == 1
    assert resolve_config({"data": {"decode_device": "cuda"}, "train": {"num_workers": 0}}).digest() in digests
    with pytest.raises(ConfigError, match="unknown decoder 'ffmpeg'"):
        resolve_config({"data": {"decoder": "ffmpeg"}})
    with pytest.raises(ConfigError, match=r"data\.decode_device=cuda needs data\.decoder=torchcodec"):
        resolve_config({"data": {"decoder": "pyav", "decode_device": "cuda"}, "train": {"num_workers": 0}})
    with pytest.raises(ConfigError, match=r"set train\.num_workers=0"):
        resolve_config({"data": {"decoder": "torchcodec", "decode_device": "cuda"}, "train": {"num_workers": 2}})


def test_an_old_config_with_a_top_level_decoder_still_loads(tmp_path, caplog):
    saved = resolve_config({"dataset": "synthetic-appearance"})
    old = yaml.safe_load(saved.to_yaml())
    del old["data"]
    old["decoder"] = "pyav"  # where the key was before the data section
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING"):
        loaded = load_config(tmp_path / "config.yaml")
    assert loaded.data.decoder == "pyav" and loaded.digest() == saved.digest()
    assert "'decoder' is now data.decoder" in caplog.text
    # `--set decoder=X` on a new config, and data.decoder over an old one, each take the value given.
    assert resolve_config({"decoder": "torchcodec"}, base=yaml.safe_load(saved.to_yaml())).data.decoder == "torchcodec"
    assert resolve_config({"data": {"decoder": "decord"}}, base=old).data.decoder == "decord"


def test_backbone_presets_scale_a_method_after_the_datasets_and_before_the_user():
    on_tiny = resolve_config({"method": "prompt_tuning", "backbone": "tiny", "dataset": "synthetic-motion"})
    on_vitb = resolve_config({"method": "prompt_tuning", "backbone": "clip_vitb16", "dataset": "ssv2"})
    assert (on_tiny.method_args["num_prompts"], on_vitb.method_args["num_prompts"]) == (8, 100)
    # Adapters keep the released width on tiny (a D/2 bottleneck lost ST-Adapter its motion top-1).
    for method in ("adapter", "st_adapter"):
        assert resolve_config({"method": method, "backbone": "tiny"}).method_args["width"] == 384
    tiny_ssv2 = resolve_config({"method": "st_adapter", "backbone": "tiny", "dataset": "synthetic-motion"})
    assert tiny_ssv2.method_args["positions"] == ["attention", "mlp"]  # the dataset's preset applies
    few = resolve_config({"method": "prompt_tuning", "backbone": "tiny", "method_args": {"num_prompts": 4}})
    assert few.method_args["num_prompts"] == 4  # the user's value wins


def test_the_feature_cache_is_on_where_it_was_measured_to_keep_top1():
    def cached(method, dataset, **speed):
        return resolve_config({"method": method, "dataset": dataset, "speed": speed}).speed.feature_cache

    assert cached("linear_probe", "synthetic-motion") and cached("linear_probe", "synthetic-appearance")
    assert cached("attentional_pooling", "synthetic-appearance")
    assert not cached("attentional_pooling", "synthetic-motion")  # lost 5.6 points of top-1 there
    assert not cached("linear_probe", "k400") and not cached("st_adapter", "synthetic-motion")
    assert not cached("linear_probe", "synthetic-motion", feature_cache=False)  # the user's choice wins
