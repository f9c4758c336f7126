"""Which runs a command asks for: methods x backbones x datasets x seeds, each resolved into a checked
:class:`~peft_bench.config.RunConfig` before any of them starts (``peft-bench run`` and ``sweep`` both)."""

from __future__ import annotations

import argparse

from peft_bench.config import RunConfig, dataset_options, load_config, resolve_config
from peft_bench.data.specs import embedded_datasets
from peft_bench.dataclass_io import ConfigError, merge, parse_overrides, to_dict
from peft_bench.method_api.registry import available_methods
from peft_bench.reference import paper_method_order
from peft_bench.report.aggregate import registered_method_order

EMBEDDED_DATASETS = ",".join(embedded_datasets())  # the K400 and SSv2 stand-ins, in the paper's column order


def split_list(value: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]: a comma-separated flag."""
    return [v.strip() for v in value.split(",") if v.strip()]


def run_configs(args: argparse.Namespace) -> list[RunConfig]:
    """Every run of the command, resolved and checked before any of them starts.

    ``args`` are a ``run`` or ``sweep`` command's: ``--backbones`` (a sweep's list) or ``--backbone``, then
    ``--dataset(s)``, ``--methods`` (names, ``paper`` or ``all``) and ``--seeds`` or ``--seed``, in that nesting;
    flags left out fall back to ``--config``'s values, then to RunConfig's defaults.
    """
    base = to_dict(load_config(args.config)) if args.config else {}
    base_method_args = base.pop("method_args", {})  # they belong to the config's method alone
    methods = method_selection(args.methods or base.get("method", "paper"))
    datasets = split_list(args.datasets or base.get("dataset", EMBEDDED_DATASETS))
    seed = getattr(args, "seed", None)  # `sweep` has --seeds only
    seeds = parse_seeds(args.seeds) if args.seeds else [seed if seed is not None else base.get("seed", 0)]
    backbones = split_list(args.backbones) if getattr(args, "backbones", None) else [args.backbone]
    overrides = dataset_options(parse_overrides(args.set))  # `--set dataset.classes=...`: the dataset's options
    if isinstance(overrides.get("method"), dict):  # `--set method.width=16` is about method_args; merged into
        overrides["method_args"] = overrides.pop("method")  # "method" it would replace the method's name
    configs = []
    for backbone in backbones:
        flags = {
            k: v
            for k, v in {
                "backbone": backbone,
                "pretrained": args.pretrained,
                "data_root": args.data_root,
                "annotations": args.annotations,
                "num_frames": args.frames,
                "preset": args.preset,
                "device": args.device,
                "experiment": args.experiment,
                "tracking_uri": args.tracking_uri,
                "results_dir": args.results_dir,
                "output_dir": args.output_dir,
            }.items()
            if v is not None
        }
        for dataset in datasets:
            for method in methods:
                for one_seed in seeds:
                    data = merge(base, flags)
                    data.update(method=method, dataset=dataset, seed=one_seed)
                    if method == base.get("method"):
                        data["method_args"] = base_method_args
                    configs.append(resolve_config(merge(data, overrides)))
    return configs


def method_selection(selection: str) -> list[str]:
    """``--methods``: ``all`` (every registered method), ``paper`` (the paper's rows, not the methods published
    after it), or the names given."""
    if selection == "all":
        return registered_method_order(available_methods())
    if selection == "paper":
        return registered_method_order([m for m in available_methods() if m in paper_method_order()])
    return split_list(selection)


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in split_list(text):
        try:
            seed = int(part)
        except ValueError:
            raise ConfigError(f"--seeds: {part!r} is not an integer (e.g. --seeds 0,1,2)") from None
        if seed < 0:
            raise ConfigError(f"--seeds: {seed} is negative")
        seeds.append(seed)
    if not seeds:
        raise ConfigError("--seeds: no seed given (e.g. --seeds 0,1,2)")
    return seeds
