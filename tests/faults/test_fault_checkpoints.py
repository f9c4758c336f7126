"""Damaged checkpoints: zero bytes, cut short, or a crafted pickle. Each is named with its file; `--resume`
falls back to the previous checkpoint a run keeps, and says what to do when there is none; a payload in a
crafted checkpoint never runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import peft_bench.train.runner as runner
from faultkit import FAST, default_store_uri, only_run, the_run_dir, with_sets
from peft_bench.cli import main
from peft_bench.train.runner import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    CheckpointError,
    EpochPosition,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)


class Payload:
    """Unpickling this creates the marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def zero_bytes(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def crafted_pickle(path: Path, marker: Path) -> None:
    torch.save({"trainable": {}, "optimizer": Payload(marker)}, path)


DAMAGE = [zero_bytes, truncated, crafted_pickle]


def save_two(run_dir: Path) -> None:
    """A tiny model's checkpoints at steps 1 and 2: the latest and the previous one kept."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    for step in (1, 2):
        save_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler, EpochPosition(0, step), "run")


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    save_two(tmp_path)
    marker = tmp_path / "payload-ran"
    damage(tmp_path / CHECKPOINT_NAME, marker)
    with pytest.raises(CheckpointError, match=str(tmp_path / CHECKPOINT_NAME)):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    state, path = resume_state(tmp_path)
    assert path == tmp_path / PREVIOUS_CHECKPOINT_NAME and state["step_in_epoch"] == 1
    assert str(tmp_path / CHECKPOINT_NAME) in caplog.text  # the damaged file is named
    assert not marker.exists()


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_checkpoint_without_a_previous_one_says_what_to_do(tmp_path, damage):
    save_two(tmp_path)
    (tmp_path / PREVIOUS_CHECKPOINT_NAME).unlink()
    marker = tmp_path / "payload-ran"
    damage(tmp_path / CHECKPOINT_NAME, marker)
    with pytest.raises(CheckpointError) as raised:
        resume_state(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / CHECKPOINT_NAME) in message and "without --resume" in message
    assert message.strip() and not marker.exists()


@pytest.mark.slow
def test_resume_over_a_truncated_checkpoint_continues_from_the_previous_one(tmp_path, caplog, capsys):
    args = with_sets(FAST, train__checkpoint_every=10)
    assert main(["run", *args]) == 0
    run_dir = the_run_dir(tmp_path)
    assert load_checkpoint(run_dir / PREVIOUS_CHECKPOINT_NAME)["step_in_epoch"] == 30  # the last one before the end
    truncated(run_dir / CHECKPOINT_NAME, tmp_path / "unused")

    caplog.set_level(logging.INFO, logger="peft_bench")
    assert main(["run", *args, "--resume"]) == 0
    named = f"{run_dir.name}/{CHECKPOINT_NAME}"  # the run folder as the user gave it (here: relative)
    assert named in caplog.text and "from epoch 0, step 30" in caplog.text
    assert only_run(default_store_uri(tmp_path)).info.status == "FINISHED"

    (run_dir / PREVIOUS_CHECKPOINT_NAME).unlink()
    (run_dir / CHECKPOINT_NAME).write_bytes(b"")
    capsys.readouterr()
    assert main(["run", *args, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and named in failed[0] and "empty" in failed[0]


def test_checkpoints_load_without_running_code(tmp_path):
    marker = tmp_path / "payload-ran"
    crafted_pickle(tmp_path / CHECKPOINT_NAME, marker)
    with pytest.raises(CheckpointError, match="weights_only"):
        runner.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert not marker.exists()
