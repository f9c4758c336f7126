"""A real ``mlflow server`` on 127.0.0.1 for tests; ``start`` skips the test with the reason when it cannot start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_command() -> list[str] | None:
    exe = Path(sys.executable).with_name("mlflow")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("mlflow")
    return [found] if found else None


class MlflowServer:
    """``mlflow server`` over a fresh store in ``folder``; or, given ``ui_store``, ``mlflow ui`` over that store
    as README tells a user to browse it (``folder`` then only holds the log)."""

    def __init__(self, folder: Path, port: int | None = None, ui_store: str | None = None):
        self.folder, self.port, self.ui_store = folder, port or free_port(), ui_store
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        command = mlflow_command()
        if command is None:
            pytest.skip("no mlflow executable beside this python: cannot start a tracking server")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "server.log").open("ab")
        if self.ui_store is not None:
            arguments = ["ui", "--backend-store-uri", self.ui_store]
        else:
            arguments = [
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'store.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
            ]
        self.process = subprocess.Popen(
            [*command, *arguments, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": "",
                # its background job runner (a dozen worker processes) is not needed to track runs
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            start_new_session=True,
        )  # its own process group: stop() ends the server's workers with it
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.skip(f"mlflow server exited at start: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.skip(f"mlflow server did not answer within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group this server was started in, no other
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-800:] if path.is_file() else ""
