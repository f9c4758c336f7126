"""Every class of bad config value (negative, zero, nan, inf, wrong type, unknown key, out of range) stops
`peft-bench run` before any work, with one line that names the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from peft_bench.cli import main

BASE = ["run", "--methods", "linear_probe", "--dataset", "synthetic-appearance", "--pretrained", "none", "--no-table"]

CASES = [
    # negative
    ("train.lr=-1", "train.lr must be a positive finite number, got -1.0"),
    ("train.weight_decay=-1", "train.weight_decay must be a non-negative finite number, got -1.0"),
    ("train.val_subset=-5", "train.val_subset must be 0 (all) or a positive number of videos, got -5"),
    ("train.min_lr=-0.1", "train.min_lr must be a non-negative finite number, got -0.1"),
    ("train.num_workers=-1", "train.num_workers must be 0 or more, got -1"),
    ("train.eval_every=-2", "train.eval_every must be 0 or more, got -2"),
    ("train.micro_batch_size=-4", "train.micro_batch_size must be 0 (the whole batch) or more, got -4"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be 0 (epoch ends only) or a number of steps, got -1"),
    ("seed=-3", "seed must be 0 or more, got -3"),
    # zero
    ("train.lr=0", "train.lr must be a positive finite number, got 0.0"),
    ("train.epochs=0", "train.epochs must be at least 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
    ("num_frames=0", "num_frames must be at least 1, got 0"),
    ("speed.augmented_copies=0", "speed.augmented_copies must be at least 1, got 0"),
    ("method.num_prompts=0", "method.num_prompts must be at least 1, got 0"),
    # nan and inf
    ("train.lr=inf", "train.lr must be a positive finite number, got inf"),
    ("train.lr=nan", "train.lr must be a positive finite number, got nan"),
    ("train.weight_decay=nan", "train.weight_decay must be a non-negative finite number, got nan"),
    ("train.warmup_epochs=inf", "train.warmup_epochs must be a finite number in [0, epochs], got inf"),
    ("train.backbone_lr_scale=nan", "train.backbone_lr_scale must be a non-negative finite number, got nan"),
    ("train.label_smoothing=inf", "train.label_smoothing must lie in [0, 1), got inf"),
    ("train.max_failure_fraction=nan", "train.max_failure_fraction must lie in [0, 1], got nan"),
    ("train.head_dropout=nan", "train.head_dropout must lie in [0, 1), got nan"),
    # out of range
    ("train.label_smoothing=1", "train.label_smoothing must lie in [0, 1), got 1.0"),
    ("train.max_failure_fraction=1.5", "train.max_failure_fraction must lie in [0, 1], got 1.5"),
    ("train.warmup_epochs=99", "train.warmup_epochs must be a finite number in [0, epochs], got 99.0"),
    ("train.micro_batch_size=5", "train.micro_batch_size 5 must divide batch_size 16"),
    # wrong type
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
    ("speed.compile=maybe", "speed.compile: expected true or false, got 'maybe'"),
    ("train=3", "train: expected a mapping, got 3"),
    # unknown key
    ("train.lrr=1", "unknown key train.lrr"),
    ("speed.turbo=true", "unknown key speed.turbo"),
    ("colour=red", "unknown key colour"),
]


@pytest.mark.parametrize("override,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_stops_the_run_before_any_work_naming_field_and_value(override, message, capsys):
    method = ["--methods", "prompt_tuning"] if override.startswith("method.") else []
    assert main([*BASE, *method, "--set", "train.batch_size=16", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "train.:" not in err
    assert not Path("runs").exists() and not Path("results").exists()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--seeds", "1,x", "--seeds: 'x' is not an integer"),
        ("--seeds", "0,-1", "--seeds: -1 is negative"),
        ("--frames", "0", "num_frames must be at least 1, got 0"),
    ],
)
def test_a_bad_flag_is_named(flag, value, message, capsys):
    assert main([*BASE, flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
