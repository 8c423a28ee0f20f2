"""Fixtures for the dashboard's browser test.

One service per session, run from the real binary against a database of its
own (created on the PostgreSQL server named by DATABASE_URL, dropped at the
end) and a queue name of its own on Redis (its keys deleted at the end). The
reaper runs every second and gives a job up at its first rescue, so a test
can make a real dead letter in seconds. A headless Chromium (Debian's
package, never a downloaded one) with a fresh profile loads the page.

Environment:
    TRANSLATION_JOBS_BIN  the service binary (default <repo>/target/debug/translation-jobs)
    DATABASE_URL          a PostgreSQL server URL (default postgres://postgres@127.0.0.1:5432/postgres)
    REDIS_URL             default redis://127.0.0.1:6379/0
    CHROMIUM              the browser (default /usr/bin/chromium)
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "translation-jobs"
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# The flags the browser runs with: headless, and nothing that reaches out.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

READY_DEADLINE_SECONDS = 60
SHUTDOWN_DEADLINE_SECONDS = 30
POLL_INTERVAL_SECONDS = 0.05
HTTP_TIMEOUT_SECONDS = 10
# How long something the service does in the background may take here: the
# relay (polls every 200 ms) or the reaper (every second, stuck after 2 s).
BACKGROUND_DEADLINE_SECONDS = 30


def poll(check: Callable[[], Any], what: str, deadline: float = BACKGROUND_DEADLINE_SECONDS) -> Any:
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


def with_database(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise pytest.UsageError("DATABASE_URL must be a postgres:// URL")
    return urlunsplit(parts._replace(path="/" + name))


def die_with_parent() -> None:
    """SIGTERM the service when the test process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="session")
def database_url(run_id: str):
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL
    name = f"dashboard_test_{run_id}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class Queue:
    """The test's Redis keys: the lanes and every key tagged with the queue."""

    def __init__(self, client: redis.Redis, name: str):
        self.client = client
        self.name = name
        self.normal = name
        self.dead = f"{{{name}}}:dead"

    def messages(self, key: str) -> list[dict]:
        return [json.loads(raw) for raw in self.client.lrange(key, 0, -1)]

    def delete_all_keys(self) -> None:
        keys = [self.normal] + list(self.client.scan_iter(match=f"{{{self.name}}}:*", count=1000))
        self.client.delete(*keys)


@pytest.fixture(scope="session")
def queue(run_id: str):
    client = redis.Redis.from_url(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, decode_responses=True)
    lanes = Queue(client, f"dashboard_test_{run_id}")
    yield lanes
    lanes.delete_all_keys()
    client.close()


class Service:
    def __init__(self, process: subprocess.Popen, base: str, log_path: Path):
        self.process = process
        self.base = base
        self.log_path = log_path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        return status, json.loads(payload) if payload else None

    def create_job(self, **fields: Any) -> dict:
        status, job = self.request("POST", "/api/v1/translation-jobs", fields)
        assert status == 201, f"create answered {status}: {job}"
        return job

    def get_job(self, job_id: str) -> dict:
        status, job = self.request("GET", f"/api/v1/translation-jobs/{job_id}")
        assert status == 200, f"get answered {status}: {job}"
        return job

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture(scope="session")
def service(database_url: str, queue: Queue, tmp_path_factory):
    binary = Path(os.environ.get("TRANSLATION_JOBS_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(f"service binary {binary} not found: run `cargo build --bin translation-jobs` first")
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_DSN"}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        TRANSLATION_QUEUE=queue.name,
        GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        HTTP_ADDR=f"127.0.0.1:{http_port}",
        RELAY_POLL_INTERVAL="200ms",
        REAPER_INTERVAL="1s",
        STUCK_JOB_TIMEOUT="2s",
        MAX_JOB_ATTEMPTS="1",
    )
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(binary)], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
    svc = Service(process, f"http://127.0.0.1:{http_port}", log_path)
    try:
        give_up = time.monotonic() + READY_DEADLINE_SECONDS
        while not svc.is_ready():
            if process.poll() is not None:
                pytest.fail(f"service exited with {process.returncode}:\n{tail(log_path)}")
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
    assert process.returncode == 0, f"service exited with {process.returncode}:\n{tail(log_path)}"


@pytest.fixture
def browser_page(tmp_path: Path):
    """A page in a headless Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM") or DEFAULT_CHROMIUM
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
