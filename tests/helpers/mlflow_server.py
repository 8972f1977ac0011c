"""A real `mlflow server` on a free loopback port, in its own process group; stopped (with its workers) on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers.postgres import free_port


class MlflowServer:
    """`with MlflowServer(backend_uri, folder) as server: server.uri` -> `http://127.0.0.1:<port>`.

    Artifacts are proxied into `<folder>/artifacts`; the server's output goes to `<folder>/server.log`.
    """

    def __init__(self, backend_uri: str, folder: Path, workers: int = 1, start_timeout_s: float = 180):
        self.backend_uri, self.folder, self.workers = backend_uri, Path(folder), workers
        self.start_timeout_s = start_timeout_s  # a first start on PostgreSQL creates MLflow's schema there
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"

    def __enter__(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    self.backend_uri,
                    "--artifacts-destination",
                    str(self.folder / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the uvicorn workers are stopped with it
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"the MLflow server did not start in {self.start_timeout_s:.0f} s:\n{self.log_path.read_text()[-3000:]}"
            )
            time.sleep(0.5)

    def _stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
