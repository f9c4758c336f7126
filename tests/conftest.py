"""Test-wide isolation: no test writes into the user's caches or the repository's results/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Shared across the session (and across sessions on one machine): the synthetic suite and the tiny
# backbone are deterministic, so tests reuse one copy instead of regenerating per test.
TEST_CACHE = Path(os.environ.get("PEFT_BENCH_TEST_CACHE", Path.home() / ".cache" / "peft_bench_tests"))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(TEST_CACHE))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative defaults (results/, runs/) land in the test's own folder
