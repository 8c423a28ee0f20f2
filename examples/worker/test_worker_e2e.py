"""End to end: jobs created through the real service's HTTP API travel through
its outbox and relay into Redis, and the reference worker works them off
against the same PostgreSQL database.

Run with examples/worker/run_tests.sh (see conftest.py for the environment).
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from conftest import poll
from worker import NotRetryable, Outcome, translate_entity

SUBTASKS = [
    {"entity_type": "chapter", "entity_id": "ch-1"},
    {"entity_type": "chapter", "entity_id": "ch-2"},
    {"entity_type": "chapter", "entity_id": "ch-3"},
]


def new_job(service, **fields) -> dict:
    body = {"novel_id": str(uuid.uuid4()), "target_lang": "en"}
    body.update(fields)
    return service.create_job(**body)


class RecordingTranslator:
    """The copy translator, remembering which (job, entity) it was called for;
    optionally raising for some entities or running a hook first."""

    def __init__(self, fail_for: dict[str, str] | None = None, before=None):
        self.calls: list[tuple[str, str]] = []
        self.fail_for = fail_for or {}
        self.before = before

    def __call__(self, job, subtask, source):
        self.calls.append((job.job_id, subtask.entity_id))
        if self.before:
            self.before(job, subtask)
        if subtask.entity_id in self.fail_for:
            raise RuntimeError(self.fail_for[subtask.entity_id])
        return translate_entity(job, subtask, source)

    def jobs(self) -> list[str]:
        """Job ids in the order their first subtask was translated."""
        seen: list[str] = []
        for job_id, _ in self.calls:
            if job_id not in seen:
                seen.append(job_id)
        return seen


def subtasks_by_entity(job: dict) -> dict[str, dict]:
    return {s["entity_id"]: s for s in job["subtasks"]}


def test_job_with_three_subtasks_is_processed_to_completed(service, lanes, make_worker, output_root: Path):
    job = new_job(
        service,
        source_lang="ja",
        target_fields=["title", "content"],
        output_dir="outputs/e2e",
        subtasks=SUBTASKS,
    )
    assert job["status"] == "PENDING"
    assert (job["completed_subtasks"], job["total_subtasks"]) == (0, 3)

    queued = lanes.wait_for(job["id"])[job["id"]]
    assert queued.lane == lanes.normal
    message = queued.message
    assert {k: message.get(k) for k in ("job_id", "target_lang", "source_lang", "output_dir", "target_fields")} == {
        "job_id": job["id"],
        "target_lang": "en",
        "source_lang": "ja",
        "output_dir": "outputs/e2e",
        "target_fields": ["title", "content"],
    }
    assert "enable_code_filter" not in message, "enable_code_filter must be omitted when false"

    worker = make_worker()
    assert worker.run_once() == Outcome.PROCESSED

    done = service.get_job(job["id"])
    assert done["status"] == "COMPLETED"
    assert done["error"] in (None, "")
    assert done["completed_subtasks"] == done["total_subtasks"] == 3
    assert [(s["entity_id"], s["status"], s["attempts"]) for s in done["subtasks"]] == [
        ("ch-1", "COMPLETED", 1),
        ("ch-2", "COMPLETED", 1),
        ("ch-3", "COMPLETED", 1),
    ]

    job_dir = output_root / "outputs" / "e2e" / job["id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["chapter-ch-1.json", "chapter-ch-2.json", "chapter-ch-3.json"]
    written = json.loads((job_dir / "chapter-ch-2.json").read_text())
    assert written["entity_id"] == "ch-2"
    assert written["target_lang"] == "en"
    assert set(written["fields"]) == {"title", "content"}

    assert lanes.total() == 0
    assert worker.run_once() == Outcome.EMPTY


def test_worker_takes_high_then_normal_then_low_priority(service, lanes, make_worker):
    # Created in the worst order for a FIFO: low first, high last.
    low = new_job(service, priority="low")
    normal = new_job(service, priority="normal")
    high = new_job(service, priority="high")
    assert (low["priority"], normal["priority"], high["priority"]) == ("LOW", "NORMAL", "HIGH")

    queued = lanes.wait_for(low["id"], normal["id"], high["id"])
    assert queued[high["id"]].lane == lanes.high
    assert queued[normal["id"]].lane == lanes.normal
    assert queued[low["id"]].lane == lanes.low

    translator = RecordingTranslator()
    worker = make_worker(translate=translator)
    assert worker.run_once() == Outcome.PROCESSED
    assert service.get_job(high["id"])["status"] == "COMPLETED"
    assert service.get_job(normal["id"])["status"] == "PENDING"
    assert service.get_job(low["id"])["status"] == "PENDING"

    assert worker.run_once() == Outcome.PROCESSED
    assert worker.run_once() == Outcome.PROCESSED
    assert worker.run_once() == Outcome.EMPTY
    assert translator.jobs() == [high["id"], normal["id"], low["id"]]
    assert {service.get_job(j["id"])["status"] for j in (high, normal, low)} == {"COMPLETED"}


def test_job_cancelled_while_queued_is_skipped_and_stays_cancelled(service, lanes, make_worker, db, output_root):
    job = new_job(service, subtasks=SUBTASKS)
    lanes.wait_for(job["id"])
    db.execute("UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = %s", (job["id"],))

    translator = RecordingTranslator()
    worker = make_worker(translate=translator)
    assert worker.run_once() == Outcome.SKIPPED

    after = service.get_job(job["id"])
    assert after["status"] == "CANCELLED"
    assert [(s["status"], s["attempts"]) for s in after["subtasks"]] == [("PENDING", 0)] * 3
    assert translator.calls == []
    assert not output_root.exists()


def test_duplicate_message_is_skipped(service, lanes, make_worker):
    job = new_job(service, subtasks=SUBTASKS)
    raw = lanes.wait_for(job["id"])[job["id"]].raw

    translator = RecordingTranslator()
    worker = make_worker(translate=translator)
    assert worker.run_once() == Outcome.PROCESSED
    assert service.get_job(job["id"])["status"] == "COMPLETED"

    lanes.client.rpush(lanes.normal, raw)
    assert worker.run_once() == Outcome.SKIPPED

    after = service.get_job(job["id"])
    assert after["status"] == "COMPLETED"
    assert [s["attempts"] for s in after["subtasks"]] == [1, 1, 1]
    assert len(translator.calls) == 3


def test_job_cancelled_while_running_stops_before_its_next_subtask(service, lanes, make_worker, db):
    job = new_job(service, subtasks=SUBTASKS)
    lanes.wait_for(job["id"])

    def cancel_during_first_subtask(_job, subtask):
        if subtask.entity_id == "ch-1":
            # What the service's CancelTranslationJob does.
            db.execute("UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = %s", (job["id"],))
            db.execute(
                "UPDATE translation_subtasks SET status = 'CANCELLED' "
                "WHERE job_id = %s AND status IN ('PENDING', 'IN_PROGRESS')",
                (job["id"],),
            )

    translator = RecordingTranslator(before=cancel_during_first_subtask)
    worker = make_worker(translate=translator)
    assert worker.run_once() == Outcome.PROCESSED

    after = service.get_job(job["id"])
    assert after["status"] == "CANCELLED"
    assert translator.calls == [(job["id"], "ch-1")]
    assert [(s["entity_id"], s["status"], s["attempts"]) for s in after["subtasks"]] == [
        ("ch-1", "CANCELLED", 1),
        ("ch-2", "CANCELLED", 0),
        ("ch-3", "CANCELLED", 0),
    ]


def test_failing_subtask_fails_the_job_with_its_error(service, lanes, make_worker, output_root):
    job = new_job(service, subtasks=SUBTASKS)
    lanes.wait_for(job["id"])

    translator = RecordingTranslator(fail_for={"ch-2": "no dictionary for Klingon"})
    worker = make_worker(translate=translator)
    assert worker.run_once() == Outcome.PROCESSED

    after = service.get_job(job["id"])
    assert after["status"] == "FAILED"
    assert "1 of 3 subtasks failed" in after["error"]
    assert "ch-2" in after["error"] and "no dictionary for Klingon" in after["error"]
    assert after["completed_subtasks"] == 2 and after["total_subtasks"] == 3

    subtasks = subtasks_by_entity(after)
    assert subtasks["ch-2"]["status"] == "FAILED"
    assert "no dictionary for Klingon" in subtasks["ch-2"]["error"]
    assert subtasks["ch-2"]["attempts"] == 1
    for entity_id in ("ch-1", "ch-3"):
        assert subtasks[entity_id]["status"] == "COMPLETED"
        assert subtasks[entity_id]["error"] in (None, "")

    job_dir = output_root / "outputs" / "novel_jobs" / job["id"]  # the service's default output_dir
    assert sorted(p.name for p in job_dir.iterdir()) == ["chapter-ch-1.json", "chapter-ch-3.json"]


def test_retried_job_redoes_only_its_unfinished_subtasks(service, lanes, make_worker):
    job = new_job(service, subtasks=SUBTASKS)
    first = lanes.wait_for(job["id"])[job["id"]].message
    assert first["attempt"] == 0
    assert make_worker(translate=RecordingTranslator(fail_for={"ch-2": "flaky"})).run_once() == Outcome.PROCESSED
    assert service.get_job(job["id"])["status"] == "FAILED"

    retried = service.retry_job(job["id"])
    assert (retried["status"], retried["attempts"]) == ("PENDING", 1)
    assert lanes.wait_for(job["id"])[job["id"]].message["attempt"] == 1

    translator = RecordingTranslator()
    assert make_worker(translate=translator).run_once() == Outcome.PROCESSED
    assert translator.calls == [(job["id"], "ch-2")]

    after = service.get_job(job["id"])
    assert after["status"] == "COMPLETED"
    assert after["error"] in (None, "")
    assert [(s["entity_id"], s["status"], s["attempts"]) for s in after["subtasks"]] == [
        ("ch-1", "COMPLETED", 1),
        ("ch-2", "COMPLETED", 2),
        ("ch-3", "COMPLETED", 1),
    ]


def test_a_stale_worker_and_a_fresh_one_never_both_run_the_job(service, lanes, make_worker):
    """Worker A holds attempt 0 when the job is cancelled and retried (the
    service hands it out again as attempt 1); worker B takes attempt 1 and
    finishes it while A is still inside its first subtask. A's later updates
    are guarded by attempt 0 and change nothing: it stops, B's result stands."""
    job = new_job(service, subtasks=SUBTASKS)
    stale_raw = lanes.wait_for(job["id"])[job["id"]].raw
    fresh = RecordingTranslator()

    def hand_out_again_while_a_translates(_job, subtask):
        if subtask.entity_id == "ch-1" and not fresh.calls:
            service.cancel_job(job["id"])
            assert service.retry_job(job["id"])["attempts"] == 1
            message = lanes.wait_for(job["id"])[job["id"]].message
            assert message["attempt"] == 1
            # B runs the fresh attempt to the end while A is still here.
            assert make_worker(translate=fresh).run_once() == Outcome.PROCESSED
            assert service.get_job(job["id"])["status"] == "COMPLETED"

    stale = RecordingTranslator(before=hand_out_again_while_a_translates)
    assert make_worker(translate=stale).run_once() == Outcome.PROCESSED

    after = service.get_job(job["id"])
    assert (after["status"], after["attempts"]) == ("COMPLETED", 1)
    assert stale.calls == [(job["id"], "ch-1")], "A stopped before its next subtask"
    assert [c[1] for c in fresh.calls] == ["ch-1", "ch-2", "ch-3"]
    # A's completion of ch-1 was refused: the subtask is B's (two starts: A's and B's).
    assert [(s["entity_id"], s["status"], s["attempts"]) for s in after["subtasks"]] == [
        ("ch-1", "COMPLETED", 2),
        ("ch-2", "COMPLETED", 1),
        ("ch-3", "COMPLETED", 1),
    ]

    # A stale copy of attempt 0 arriving late claims nothing.
    lanes.client.rpush(lanes.normal, stale_raw)
    assert make_worker().run_once() == Outcome.SKIPPED
    assert service.get_job(job["id"])["status"] == "COMPLETED"


def test_bad_messages_are_skipped_and_the_worker_goes_on(service, lanes, make_worker):
    lanes.client.rpush(
        lanes.normal,
        "not json",
        json.dumps(["a", "list"]),
        json.dumps({"target_lang": "en"}),
        json.dumps({"job_id": "not-a-uuid"}),
        json.dumps({"job_id": str(uuid.uuid4())}),  # no such job
    )
    worker = make_worker()
    for _ in range(5):
        assert worker.run_once() == Outcome.SKIPPED

    job = new_job(service)
    lanes.wait_for(job["id"])
    assert worker.run_once() == Outcome.PROCESSED
    done = service.get_job(job["id"])
    assert done["status"] == "COMPLETED"
    # Without explicit subtasks the job has one for the novel itself.
    assert [(s["entity_type"], s["entity_id"]) for s in done["subtasks"]] == [("novel", job["novel_id"])]


def test_message_goes_back_to_its_lane_when_the_database_is_unreachable(
    service, lanes, make_worker, database_url
):
    job = new_job(service, priority="high")
    raw = lanes.wait_for(job["id"])[job["id"]].raw

    unreachable = database_url.rsplit("/", 1)[0] + "/worker_e2e_no_such_database"
    assert make_worker(database_url=unreachable).run_once() == Outcome.ERROR
    assert lanes.client.lrange(lanes.high, 0, -1) == [raw]
    assert service.get_job(job["id"])["status"] == "PENDING"

    assert make_worker().run_once() == Outcome.PROCESSED
    assert service.get_job(job["id"])["status"] == "COMPLETED"


def test_deadlock_with_a_concurrent_cancel_is_survived(service, lanes, make_worker, database_url):
    """The service's cancel locks the job, then its subtasks; a worker's
    subtask update locks the subtask, then (heartbeat trigger) the job.
    PostgreSQL breaks the deadlock by aborting the worker's statement, which
    the worker runs again."""
    job = new_job(service, subtasks=SUBTASKS)
    lanes.wait_for(job["id"])
    # Which side PostgreSQL aborts is the one whose deadlock check runs once
    # the cycle exists. The worker starts waiting first; under load the cancel
    # may start waiting only after the worker's check (deadlock_timeout, 1 s)
    # found no cycle yet, and then the cancel would be the victim. So the
    # worker's sessions check after 3 s, and the cancel's never before 30 s.
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET deadlock_timeout = '3s'").format(sql.Identifier(admin.info.dbname))
        )
    cancel = psycopg.connect(database_url)  # one transaction, as in the service's cancel_job
    cancel.execute("SET deadlock_timeout = '30s'")
    errors: list[BaseException] = []

    def finish_cancel():
        try:
            with psycopg.connect(database_url, autocommit=True) as watcher:
                poll(
                    lambda: watcher.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = 'translation-worker' AND wait_event_type = 'Lock'"
                    ).fetchone(),
                    "the worker to wait for the job's row lock",
                )
            cancel.execute(
                "UPDATE translation_subtasks SET status = 'CANCELLED' "
                "WHERE job_id = %s AND status IN ('PENDING', 'IN_PROGRESS')",
                (job["id"],),
            )
            cancel.commit()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=finish_cancel)

    def start_cancel(_job, subtask):
        if subtask.entity_id == "ch-1":
            cancel.execute("UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = %s", (job["id"],))
            thread.start()

    translator = RecordingTranslator(before=start_cancel)
    try:
        outcome = make_worker(translate=translator).run_once()
    finally:
        # The thread uses `cancel`: never close it under the thread's feet.
        if thread.ident is not None:
            thread.join(timeout=30)
        if not thread.is_alive():
            cancel.close()
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} RESET deadlock_timeout").format(sql.Identifier(admin.info.dbname)))
    assert not thread.is_alive(), "the cancel transaction hung"
    assert errors == []
    assert outcome == Outcome.PROCESSED

    after = service.get_job(job["id"])
    assert after["status"] == "CANCELLED"
    assert translator.calls == [(job["id"], "ch-1")]
    assert [s["status"] for s in after["subtasks"]] == ["CANCELLED"] * 3


def dead_letters(lanes, job_id: str) -> list[dict]:
    return [m for m in map(json.loads, lanes.client.lrange(lanes.dead, 0, -1)) if m.get("job_id") == job_id]


def test_a_failed_job_is_retried_by_the_service_after_its_backoff_and_completes(service, lanes, make_worker):
    job = new_job(service, subtasks=SUBTASKS, max_attempts=2)
    assert (job["max_attempts"], job["failed_attempts"]) == (2, 0)
    lanes.wait_for(job["id"])

    failed_once = RecordingTranslator(fail_for={"ch-2": "the translation service timed out"})
    assert make_worker(translate=failed_once).run_once() == Outcome.PROCESSED

    # The worker said FAILED; the service made it the next attempt, after a backoff.
    retrying = service.get_job(job["id"])
    assert retrying["status"] == "PENDING"
    assert (retrying["attempts"], retrying["failed_attempts"]) == (1, 1)
    assert "timed out" in retrying["error"], "the worker's error is kept"
    assert retrying["schedule_time"], "the retry is scheduled"

    queued = lanes.wait_for(job["id"])[job["id"]]
    assert queued.message["attempt"] == 1

    translator = RecordingTranslator()
    assert make_worker(translate=translator).run_once() == Outcome.PROCESSED
    done = service.get_job(job["id"])
    assert done["status"] == "COMPLETED"
    # Only what the first attempt did not finish was done again.
    assert translator.calls == [(job["id"], "ch-2")]
    assert [(s["entity_id"], s["status"], s["attempts"]) for s in done["subtasks"]] == [
        ("ch-1", "COMPLETED", 1),
        ("ch-2", "COMPLETED", 2),
        ("ch-3", "COMPLETED", 1),
    ]


def test_a_failure_on_the_last_attempt_is_final_and_dead_lettered(service, lanes, make_worker):
    job = new_job(service, subtasks=SUBTASKS[:1], max_attempts=2)
    always = RecordingTranslator(fail_for={"ch-1": "no such chapter"})
    for attempt in (0, 1):
        queued = lanes.wait_for(job["id"])[job["id"]]
        assert queued.message["attempt"] == attempt
        assert make_worker(translate=always).run_once(timeout=10) == Outcome.PROCESSED

    failed = service.get_job(job["id"])
    assert failed["status"] == "FAILED"
    assert (failed["attempts"], failed["failed_attempts"]) == (1, 2)
    dead = poll(lambda: dead_letters(lanes, job["id"]), "the dead letter")
    assert dead[0]["attempt"] == 1


def test_a_failure_the_translator_calls_not_retryable_is_final_at_once(service, lanes, make_worker):
    job = new_job(service, subtasks=SUBTASKS[:1], max_attempts=5)
    lanes.wait_for(job["id"])

    def refuse(_job, _subtask, _source):
        raise NotRetryable("source text is empty")

    assert make_worker(translate=refuse).run_once() == Outcome.PROCESSED
    failed = service.get_job(job["id"])
    assert (failed["status"], failed["retryable"], failed["failed_attempts"]) == ("FAILED", False, 1)
    assert poll(lambda: dead_letters(lanes, job["id"]), "the dead letter")
    assert lanes.total() == 0
