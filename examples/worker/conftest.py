"""Fixtures for the worker's end-to-end test.

One service per test session, run from the real binary against a database of
its own on the PostgreSQL server named by DATABASE_URL, and against Redis with
a queue name of its own; both are removed at the end. The worker runs
in-process, one message at a time, through Worker.run_once. Starting the
service is `service_harness.py` (shared with the dashboard's browser test),
which also names the environment it reads.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
import redis

import service_harness
import worker as worker_module

# How long a created job may take to reach Redis (the relay polls every 200 ms).
RELAY_DEADLINE_SECONDS = 15
# BLPOP timeout of the in-process worker: messages are already queued when
# the tests call run_once, so this only bounds a test that went wrong.
WORKER_POLL_SECONDS = 1


def poll(check: Callable[[], Any], what: str, deadline: float = RELAY_DEADLINE_SECONDS) -> Any:
    """Calls `check` until it returns something truthy; fails after `deadline` seconds."""
    return service_harness.poll(check, what, deadline)


# --------------------------------------------------------------------------
# PostgreSQL and Redis
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(6)


@pytest.fixture(scope="session")
def database_url(run_id: str):
    """A fresh database, dropped at the end."""
    with service_harness.fresh_database(f"worker_e2e_{run_id}") as url:
        yield url


@pytest.fixture
def db(database_url: str):
    """A connection to the test database, for what the API does not offer
    (e.g. cancelling with SQL)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_harness.redis_url()


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


@pytest.fixture(scope="session")
def service(database_url: str, session_lanes: Lanes, tmp_path_factory):
    """The binary, ready; stopped with SIGTERM at the end, expecting exit code 0."""
    with service_harness.running_service(
        database_url,
        session_lanes.queue,
        tmp_path_factory.mktemp("service"),
        RELAY_POLL_INTERVAL="200ms",
        # Short, so that a retry's backoff fits in a test.
        RETRY_BACKOFF_BASE="1s",
    ) as svc:
        yield svc


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
