"""README's way to browse the runs: `mlflow ui --backend-store-uri sqlite:///results/mlflow.db` starts over the
store `peft-bench run` fills and lists its runs (through the REST API the UI itself calls); it is stopped after."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from mlflow_server import MlflowServer

README = Path(__file__).resolve().parents[1] / "README.md"


def call(server: MlflowServer, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{server.uri}{path}",
        method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_readme_s_mlflow_ui_command_starts_and_lists_the_embedded_default_s_runs(embedded_default_runs, tmp_path):
    command = re.search(r"mlflow ui --backend-store-uri (sqlite:///\S+)", README.read_text())
    assert command and command.group(1) == "sqlite:///results/mlflow.db"  # the default store, as README says
    server = MlflowServer(tmp_path, ui_store=embedded_default_runs["uri"]).start()
    try:
        with urllib.request.urlopen(server.uri, timeout=30) as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()  # the UI's page
        experiment = call(server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=peft-bench")["experiment"]
        runs = call(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        names = sorted(run["info"]["run_name"] for run in runs)
        assert names == sorted(
            f"{method}-tiny-{dataset}-s0"
            for method in ("linear_probe", "st_adapter")
            for dataset in ("synthetic-appearance", "synthetic-motion")
        )
        assert {run["info"]["status"] for run in runs} == {"FINISHED"}
    finally:
        server.stop()
    assert server.process is None
