"""Runs the real service binary for a Python test: a database of its own, the
binary on free ports, its HTTP JSON API, a clean SIGTERM at the end.

Shared by the worker's end-to-end test (this folder) and the dashboard's
browser test (examples/dashboard_test, which puts this folder on sys.path).

Environment:
    TRANSLATION_JOBS_BIN  the service binary (default <repo>/target/debug/translation-jobs)
    DATABASE_URL          a PostgreSQL server URL (default postgres://postgres@127.0.0.1:5432/postgres)
    REDIS_URL             default redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "translation-jobs"
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# How long the service may take to become ready (first start runs migrations).
READY_DEADLINE_SECONDS = 60
# How long the service may take to exit after SIGTERM.
SHUTDOWN_DEADLINE_SECONDS = 30
# Pause between two looks while polling.
POLL_INTERVAL_SECONDS = 0.05
# Timeout of one HTTP call to the service.
HTTP_TIMEOUT_SECONDS = 10


def server_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def poll(check: Callable[[], Any], what: str, deadline: float) -> Any:
    """Calls `check` until it returns something truthy; fails after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {deadline}s waiting for {what}")
        time.sleep(POLL_INTERVAL_SECONDS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise pytest.UsageError("DATABASE_URL must be a postgres:// URL")
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """Creates database `name` on the server of DATABASE_URL and yields its
    URL; drops it at the end (WITH (FORCE): whatever still holds it)."""
    server = server_url()
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM the service when the
    test process dies, even by a crash or SIGKILL that skips the teardown."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ApiError(AssertionError):
    pass


class Service:
    """The running binary and its HTTP JSON API."""

    def __init__(self, process: subprocess.Popen, http_base: str, log_path: Path):
        self.process = process
        self.http_base = http_base
        self.log_path = log_path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP call; returns (status, decoded JSON body or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def create_job(self, **fields: Any) -> dict:
        status, job = self.request("POST", "/api/v1/translation-jobs", fields)
        if status != 201:
            raise ApiError(f"POST /api/v1/translation-jobs answered {status}: {job}")
        return job

    def cancel_job(self, job_id: str) -> dict:
        return self._action(job_id, "cancel")

    def retry_job(self, job_id: str) -> dict:
        return self._action(job_id, "retry")

    def _action(self, job_id: str, action: str) -> dict:
        status, job = self.request("POST", f"/api/v1/translation-jobs/{job_id}/{action}")
        if status != 200:
            raise ApiError(f"POST /api/v1/translation-jobs/{job_id}/{action} answered {status}: {job}")
        return job

    def get_job(self, job_id: str) -> dict:
        status, job = self.request("GET", f"/api/v1/translation-jobs/{job_id}")
        if status != 200:
            raise ApiError(f"GET /api/v1/translation-jobs/{job_id} answered {status}: {job}")
        return job

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_base + "/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


@contextlib.contextmanager
def running_service(database_url: str, queue: str, log_dir: Path, **settings: str) -> Iterator[Service]:
    """Starts the binary on free ports against `database_url` and the queue
    `queue` (plus `settings` as environment variables), waits for /readyz,
    and at the end stops it with SIGTERM, expecting exit code 0."""
    binary = Path(os.environ.get("TRANSLATION_JOBS_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(f"service binary {binary} not found: run `cargo build --bin translation-jobs` first")

    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_DSN"}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url(),
        TRANSLATION_QUEUE=queue,
        GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        HTTP_ADDR=f"127.0.0.1:{http_port}",
        **settings,
    )
    log_path = log_dir / "service.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(binary)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    svc = Service(process, f"http://127.0.0.1:{http_port}", log_path)
    try:
        give_up = time.monotonic() + READY_DEADLINE_SECONDS
        while not svc.is_ready():
            if process.poll() is not None:
                pytest.fail(f"service exited with {process.returncode} before it was ready:\n{tail(log_path)}")
            if time.monotonic() > give_up:
                pytest.fail(f"service not ready after {READY_DEADLINE_SECONDS}s:\n{tail(log_path)}")
            time.sleep(POLL_INTERVAL_SECONDS)
        yield svc
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SHUTDOWN_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"service did not exit within {SHUTDOWN_DEADLINE_SECONDS}s of SIGTERM:\n{tail(log_path)}")
    assert process.returncode == 0, f"service exited with {process.returncode} after SIGTERM:\n{tail(log_path)}"
