"""Fixtures for the worker's end-to-end test.

One service per test session, run from the real binary against a database of
its own on the PostgreSQL server named by DATABASE_URL, and against Redis with
a queue name of its own; both are removed at the end. The worker runs
in-process, one message at a time, through Worker.run_once.

Environment:
    TRANSLATION_JOBS_BIN  the service binary (default <repo>/target/debug/translation-jobs)
    DATABASE_URL          a PostgreSQL server URL (default postgres://postgres@127.0.0.1:5432/postgres)
    REDIS_URL             default redis://127.0.0.1:6379/0
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

import worker as worker_module

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "translation-jobs"
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# How long the service may take to become ready (first start runs migrations).
READY_DEADLINE_SECONDS = 60
# How long a created job may take to reach Redis (the relay polls every 200 ms).
RELAY_DEADLINE_SECONDS = 15
# How long the service may take to exit after SIGTERM.
SHUTDOWN_DEADLINE_SECONDS = 30
# Pause between two looks while polling.
POLL_INTERVAL_SECONDS = 0.05
# Timeout of one HTTP call to the service.
HTTP_TIMEOUT_SECONDS = 10
# BLPOP timeout of the in-process worker: messages are already queued when
# the tests call run_once, so this only bounds a test that went wrong.
WORKER_POLL_SECONDS = 1


def poll(check: Callable[[], Any], what: str, deadline: float = RELAY_DEADLINE_SECONDS) -> Any:
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
    """The same server URL pointing at database `name`."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise pytest.UsageError("DATABASE_URL must be a postgres:// URL")
    return urlunsplit(parts._replace(path="/" + name))


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


# --------------------------------------------------------------------------
# PostgreSQL and Redis
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="session")
def database_url(run_id: str):
    """A fresh database, dropped at the end (WITH (FORCE): whatever still holds it)."""
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL
    name = f"worker_e2e_{run_id}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(database_url: str):
    """A connection to the test database, for what the API does not offer
    (e.g. cancelling with SQL)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


@pytest.fixture(scope="session")
def redis_client(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@dataclass(frozen=True)
class Queued:
    """A message found in one of the lanes."""

    lane: str
    raw: str

    @property
    def message(self) -> dict:
        return json.loads(self.raw)


class Lanes:
    """The test's Redis lists: `{<queue>}:high`, `<queue>`, `{<queue>}:low`."""

    def __init__(self, client: redis.Redis, queue: str):
        self.client = client
        self.queue = queue
        self.high, self.normal, self.low = f"{{{queue}}}:high", queue, f"{{{queue}}}:low"
        self.dead = f"{{{queue}}}:dead"

    @property
    def names(self) -> list[str]:
        return [self.high, self.normal, self.low]

    def messages(self) -> list[Queued]:
        return [Queued(lane, raw) for lane in self.names for raw in self.client.lrange(lane, 0, -1)]

    def total(self) -> int:
        return sum(self.client.llen(lane) for lane in self.names)

    def wait_for(self, *job_ids: str) -> dict[str, Queued]:
        """Waits until a message for each job is queued; returns them by job id."""

        def found():
            by_id = {}
            for queued in self.messages():
                try:
                    by_id[queued.message.get("job_id")] = queued
                except ValueError:
                    pass
            return by_id if all(job_id in by_id for job_id in job_ids) else None

        return poll(found, f"the messages of jobs {job_ids} in Redis")

    def clear(self) -> None:
        self.client.delete(*self.names)

    def delete_all_keys(self) -> None:
        """The plain lane and every key tagged with the queue's name (lanes,
        dead letters, push-once markers, the queue's state)."""
        keys = [self.normal]
        keys += list(self.client.scan_iter(match=f"{{{self.queue}}}:*", count=1000))
        self.client.delete(*keys)


@pytest.fixture(scope="session")
def session_lanes(redis_client: redis.Redis, run_id: str):
    lanes = Lanes(redis_client, f"worker_e2e_{run_id}")
    yield lanes
    lanes.delete_all_keys()


@pytest.fixture
def lanes(session_lanes: Lanes, service) -> Lanes:
    """The lanes, emptied before each test so that tests do not see each
    other's messages."""
    session_lanes.clear()
    return session_lanes


# --------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def service(database_url: str, redis_url: str, session_lanes: Lanes, tmp_path_factory):
    """Starts the binary, waits for /readyz, and stops it with SIGTERM at the
    end, expecting exit code 0."""
    binary = Path(os.environ.get("TRANSLATION_JOBS_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(f"service binary {binary} not found: run `cargo build --bin translation-jobs` first")

    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_DSN"}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        TRANSLATION_QUEUE=session_lanes.queue,
        GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        HTTP_ADDR=f"127.0.0.1:{http_port}",
        RELAY_POLL_INTERVAL="200ms",
    )
    log_path = tmp_path_factory.mktemp("service") / "service.log"
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


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


@pytest.fixture
def output_root(tmp_path: Path) -> Path:
    return tmp_path / "worker-output"


@pytest.fixture
def make_worker(database_url: str, redis_url: str, session_lanes: Lanes, output_root: Path):
    """Builds in-process workers on the test's queue; closes them at the end."""
    made: list[worker_module.Worker] = []

    def make(**overrides: Any) -> worker_module.Worker:
        settings = dict(
            database_url=database_url,
            redis_url=redis_url,
            queue=session_lanes.queue,
            output_root=output_root,
            poll_timeout=WORKER_POLL_SECONDS,
        )
        settings.update(overrides)
        made.append(worker_module.Worker(**settings))
        return made[-1]

    yield make
    for w in made:
        w.close()
