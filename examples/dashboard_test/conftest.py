"""Fixtures for the dashboard's browser test.

One service per session, run from the real binary against a database of its
own (created on the PostgreSQL server named by DATABASE_URL, dropped at the
end) and a queue name of its own on Redis (its keys deleted at the end). The
reaper runs every second and gives a job up at its first rescue, so a test
can make a real dead letter in seconds. A second service, with
authentication on (HS256 tokens), starts only for the tests that ask for it,
with a database and a queue of its own. A headless Chromium (Debian's
package, never a downloaded one) with a fresh profile loads the page.

Environment:
    TRANSLATION_JOBS_BIN  the service binary (default <repo>/target/debug/translation-jobs)
    DATABASE_URL          a PostgreSQL server URL (default postgres://postgres@127.0.0.1:5432/postgres)
    REDIS_URL             default redis://127.0.0.1:6379/0
    CHROMIUM              the browser (default /usr/bin/chromium)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
import redis

HERE = Path(__file__).resolve().parent
# Starting the service is the worker test's harness, shared.
sys.path.insert(0, str(HERE.parent / "worker"))
import service_harness  # noqa: E402
from service_harness import Service  # noqa: E402,F401  (the tests' type)

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

# How long something the service does in the background may take here: the
# relay (polls every 200 ms) or the reaper (every second, stuck after 2 s).
BACKGROUND_DEADLINE_SECONDS = 30

NOVEL_ID = "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e"
# How long the page may take to show a change (it polls every 2 s).
PAGE_TIMEOUT_MS = 15_000
# The scope of a token that sees every job (src/api/auth.rs, ADMIN_SCOPE).
ADMIN_SCOPE = "translation.admin"
# How long the tests' tokens are valid.
TOKEN_LIFETIME_SECONDS = 3600


def poll(check: Callable[[], Any], what: str, deadline: float = BACKGROUND_DEADLINE_SECONDS) -> Any:
    """Calls `check` until it returns something truthy; fails after `deadline` seconds."""
    return service_harness.poll(check, what, deadline)


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="session")
def database_url(run_id: str):
    with service_harness.fresh_database(f"dashboard_test_{run_id}") as url:
        yield url


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
    client = redis.Redis.from_url(service_harness.redis_url(), decode_responses=True)
    lanes = Queue(client, f"dashboard_test_{run_id}")
    yield lanes
    lanes.delete_all_keys()
    client.close()


@pytest.fixture(scope="session")
def service(database_url: str, queue: Queue, tmp_path_factory):
    """The binary with a fast reaper that gives a job up at its first rescue."""
    with service_harness.running_service(
        database_url,
        queue.name,
        tmp_path_factory.mktemp("service"),
        RELAY_POLL_INTERVAL="200ms",
        REAPER_INTERVAL="1s",
        STUCK_JOB_TIMEOUT="2s",
        JOB_MAX_ATTEMPTS="1",
    ) as svc:
        yield svc


def hs256_token(secret: str, subject: str, admin: bool = False) -> str:
    """A JWT signed with `secret` (HS256) for `subject`, with the admin scope
    when asked."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": int(time.time()) + TOKEN_LIFETIME_SECONDS}
    if admin:
        claims["scope"] = ADMIN_SCOPE
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


class AuthService:
    """The service with authentication on, and tokens for it."""

    def __init__(self, service: Service, secret: str):
        self.service = service
        self.http_base = service.http_base
        self.secret = secret

    def token(self, subject: str, admin: bool = False) -> str:
        return hs256_token(self.secret, subject, admin)

    def request(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP call with `token`; returns (status, decoded JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=service_harness.HTTP_TIMEOUT_SECONDS) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def create_job(self, token: str, **fields: Any) -> dict:
        status, job = self.request("POST", "/api/v1/translation-jobs", token, fields)
        assert status == 201, f"create answered {status}: {job}"
        return job

    def get_job(self, job_id: str) -> dict:
        status, job = self.request("GET", f"/api/v1/translation-jobs/{job_id}", self.token("test", admin=True))
        assert status == 200, f"get answered {status}: {job}"
        return job


@pytest.fixture(scope="session")
def auth_service(run_id: str, tmp_path_factory):
    """The binary with HS256 bearer tokens required; its own database and
    queue, dropped and deleted at the end."""
    name = f"dashboard_test_{run_id}_auth"
    client = redis.Redis.from_url(service_harness.redis_url(), decode_responses=True)
    lanes = Queue(client, name)
    secret = secrets.token_hex(32)
    try:
        with service_harness.fresh_database(name) as url, service_harness.running_service(
            url, name, tmp_path_factory.mktemp("auth-service"), AUTH_JWT_SECRET=secret
        ) as svc:
            yield AuthService(svc, secret)
    finally:
        lanes.delete_all_keys()
        client.close()


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
