"""Servers the tests start themselves, on 127.0.0.1 only, and always stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail saying what, with the server's log, if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server for {url} did not answer within {timeout:.0f} s")


class LocalServer:
    """A server process of the tests' own on 127.0.0.1, in its own process group, logging under
    ``self.root``; a context manager (started on entry, stopped on exit)."""

    root: Path
    proc: subprocess.Popen | None = None

    def start(self) -> LocalServer:  # pragma: no cover - each server says how it starts
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _launch(self, argv: list[str], log_name: str, health_url: str, env: dict[str, str] | None = None):
        """Start ``argv`` and wait until ``health_url`` answers; a server that does not come up is
        stopped and its log's tail is in the error."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / log_name, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        try:
            wait_http(health_url, proc=self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; log: {(self.root / log_name).read_text()[-2000:]}") from None
        return self

    def _stop_group(self, first: signal.Signals) -> None:
        """``first`` to the server's process group, SIGKILL if it is still there after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, first)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class MlflowServer(LocalServer):
    """``mlflow server`` with a sqlite backend and local artifacts under ``root``."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        if not mlflow_bin.exists():
            raise RuntimeError(f"mlflow server needs the mlflow CLI next to {sys.executable}; not found")
        return self._launch(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            "server.log", self.uri + "/health", {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"})

    def kill(self) -> None:
        """Kill the whole server process group (the tracking server going away)."""
        self._stop_group(signal.SIGKILL)

    stop = kill


def which_or_fail(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH: {hint}")
    return path


class MotoServer(LocalServer):
    """moto's S3-compatible server (``moto_server``, from ``moto[server]``) on 127.0.0.1, with the
    standard variables that point pyarrow at it (:meth:`env`); state is in memory, gone on stop."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> MotoServer:
        moto_bin = Path(sys.executable).with_name("moto_server")
        if not moto_bin.exists():
            raise RuntimeError(f"moto_server not found next to {sys.executable}: "
                               "pip install 'moto[server]' (the dev extra)")
        return self._launch([str(moto_bin), "-H", "127.0.0.1", "-p", str(self.port)], "moto.log",
                            self.endpoint + "/moto-api/")

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, f"creating bucket {name}: HTTP {r.status}"

    def stop(self) -> None:
        self._stop_group(signal.SIGTERM)
