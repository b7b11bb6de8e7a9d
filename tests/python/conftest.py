"""Starts the real quiver binary for the pytest suite."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.flight as fl
import pytest


def _binary() -> str:
    explicit = os.environ.get("QUIVER_BIN")
    if explicit:
        return explicit
    target_dir = os.environ.get("CARGO_TARGET_DIR", str(Path(__file__).resolve().parents[2] / "target"))
    return str(Path(target_dir) / "debug" / "quiver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A quiver process listening on 127.0.0.1 with its data under `cwd/data`."""

    def __init__(self, cwd: Path, args=(), env=None):
        binary = _binary()
        if not os.path.exists(binary):
            raise RuntimeError(f"quiver binary not found at {binary}; run `cargo build` or set QUIVER_BIN")
        self.port = _free_port()
        self.cwd = cwd
        self.log = open(cwd / "quiver.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready()

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def _wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"quiver exited with {self.proc.returncode}: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"quiver did not start listening: {self.logs()}")

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.cwd / "quiver.log").read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.log.close()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = fl.connect(server.uri)
    yield c
    c.close()


POSTGRES_URL = os.environ.get("QUIVER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


def _psql(database_url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", database_url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def postgres_db():
    """The URL of a fresh PostgreSQL database, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"quiver_py_{os.getpid()}_{time.monotonic_ns()}"
    _psql(POSTGRES_URL, f"CREATE DATABASE {name}")
    parts = urlsplit(POSTGRES_URL)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    yield url
    _psql(POSTGRES_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class S3Server:
    """s3s-fs (an S3 API server backed by a directory) with one bucket, `quiver`."""

    def __init__(self, root: Path):
        binary = os.environ.get("QUIVER_S3S_FS", str(Path.home() / ".cache/quiver/tools/bin/s3s-fs"))
        if not os.path.exists(binary):
            raise RuntimeError(f"s3s-fs not found at {binary}; run scripts/tools or set QUIVER_S3S_FS")
        (root / "quiver").mkdir(parents=True)
        self.root = root
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", "quiver", "--secret-key", "quiver-secret", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("s3s-fs did not start")
                time.sleep(0.05)

    def target_toml(self, name: str, kind: str, prefix: str) -> str:
        return f"""
[targets.{name}]
kind = "{kind}"
root = "s3://quiver/{prefix}"
[targets.{name}.storage]
aws_endpoint = "http://127.0.0.1:{self.port}"
aws_region = "us-east-1"
aws_access_key_id = "quiver"
aws_secret_access_key = "quiver-secret"
aws_allow_http = "true"
aws_virtual_hosted_style_request = "false"
"""

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def s3_server(tmp_path):
    srv = S3Server(tmp_path / "s3")
    yield srv
    srv.stop()
