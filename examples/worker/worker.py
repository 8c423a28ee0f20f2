#!/usr/bin/env python3
"""Reference translation worker for translation-jobs.

This file is documentation as much as code: it shows everything a worker has
to do to take part in the service's contract, and nothing else.

    BLPOP {<queue>}:high <queue> {<queue>}:low 30  (priority lanes, in that order)
      -> claim the job in PostgreSQL: PENDING -> IN_PROGRESS, one conditional
         UPDATE that also checks the message's attempt
      -> for each unfinished subtask, in creation order:
           mark the subtask IN_PROGRESS while it is still ours (its row's
           job_attempt is our attempt), translate it, mark it COMPLETED or FAILED
      -> mark the job COMPLETED, or FAILED with a summary of what failed (and
         `retryable = false` when a translator said trying again cannot help)

Every update after the claim is guarded by the attempt: when the service hands
the job out again (a cancel and a retry, the reaper rescuing it, a message
queued again after it was lost), `translation_jobs.attempts` moves on and this
worker's updates match nothing, so a stale worker never runs beside a fresh one.

A FAILED job with attempts left (its `max_attempts`, set by the caller or
the service's JOB_MAX_ATTEMPTS) is put back to PENDING by the service itself,
as a new attempt queued after a backoff: the worker only says FAILED, and
`retryable = false` in the same statement when a retry cannot help (raise
`NotRetryable` from a translator for that).

Every status change is its own short transaction, committed at once: the
service streams them to WatchTranslationJob clients, and every subtask update
also bumps the job's updated_at, which is the heartbeat the service's reaper
watches. A job that stops moving (a worker that died) is put back to PENDING
and queued again by the service; a worker never has to do that itself.

THE DEFAULT TRANSLATOR DOES NOT TRANSLATE. `translate_entity` copies the
source text unchanged, and `load_source_text` returns a placeholder because
this repository has no novel content store. Plug in real ones:

    from worker import main
    main(translate=my_translate, load_source_text=my_loader)

See README.md in this folder.

Environment:
    DATABASE_URL         PostgreSQL URL (DATABASE_DSN, the older name, also works)
    REDIS_URL            default redis://localhost:6379/0
    TRANSLATION_QUEUE    default translation_jobs
    WORKER_OUTPUT_ROOT   where output_dir is resolved, default the current directory
    WORKER_POLL_TIMEOUT  BLPOP timeout in seconds, default 30
    LOG_LEVEL            default INFO
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import psycopg
import redis

log = logging.getLogger("translation_worker")

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "translation_jobs"
# What the service puts in a message when the caller gave nothing; a message
# without the key means the same.
DEFAULT_TARGET_FIELDS = ("title", "description", "content")
DEFAULT_OUTPUT_DIR = "outputs/novel_jobs"
# How long one BLPOP waits. A stop request (SIGTERM) takes effect when the
# current BLPOP returns, so this is also the longest an idle worker takes to exit.
DEFAULT_POLL_TIMEOUT_SECONDS = 30
# Pause before going on after Redis or PostgreSQL failed.
RETRY_PAUSE_SECONDS = 5
# Longest wait for a new PostgreSQL connection.
DATABASE_CONNECT_TIMEOUT_SECONDS = 10
# Runs of one statement that PostgreSQL aborted as a deadlock victim.
DEADLOCK_ATTEMPTS = 3
# Longest error text stored for a subtask or a job.
MAX_ERROR_CHARS = 2000
# Failed subtasks named in the job's error; the rest are only counted.
MAX_FAILURES_IN_JOB_ERROR = 5
# Longest file name stem (before ".json") of an output file.
MAX_FILE_STEM_CHARS = 150
# The guard of every subtask update after the claim (parameter: the attempt
# this worker claimed), on the subtask row itself: the service copies the
# job's attempt onto every subtask row whenever it hands the job out again,
# and writes -1 when it cancels or dead-letters the job. PostgreSQL re-checks
# the row an UPDATE changes after waiting for its lock, but not a subquery on
# another table, so the guard must live on the row.
SUBTASK_STILL_OURS = "job_attempt = %s"


# --------------------------------------------------------------------------
# The message and the rows
# --------------------------------------------------------------------------


class BadMessage(ValueError):
    """A queue message the worker cannot use (not JSON, no job_id, ...)."""


class NotRetryable(Exception):
    """Raise from a translator (or a source loader) when trying again cannot
    help: bad source text, a language pair nobody supports. The subtask fails
    as with any exception, and the job's failure is final (`retryable =
    false`) whatever attempts it has left."""


class ClaimFailed(Exception):
    """The claim could not be run (PostgreSQL unreachable, ...): the job is
    still PENDING, or IN_PROGRESS if the claim committed unseen."""


@dataclass(frozen=True)
class Job:
    """One Redis message, parsed.

    Keys are omitted from the message when empty, so every field except
    job_id has a default. Unknown keys (e.g. `traceparent`) are ignored.
    `attempt` is None for a message from a service version that did not send
    it; the worker then claims without checking the attempt.
    """

    job_id: str
    target_lang: str = ""
    # Empty: the translator detects the language.
    source_lang: str = ""
    output_dir: str = DEFAULT_OUTPUT_DIR
    target_fields: tuple[str, ...] = DEFAULT_TARGET_FIELDS
    # Ask the translator to leave code (markup, snippets) untranslated.
    enable_code_filter: bool = False
    # The job's `attempts` when the message was queued.
    attempt: int | None = None

    @classmethod
    def from_message(cls, data: Any) -> "Job":
        """Builds a Job from the decoded JSON of a message, or raises BadMessage."""
        if not isinstance(data, dict):
            raise BadMessage("message is not a JSON object")
        job_id = data.get("job_id")
        if not isinstance(job_id, str):
            raise BadMessage("message has no job_id")
        try:
            job_id = str(uuid.UUID(job_id))
        except ValueError:
            raise BadMessage(f"job_id is not a UUID: {job_id!r}") from None

        fields = data.get("target_fields") or list(DEFAULT_TARGET_FIELDS)
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise BadMessage("target_fields is not a list of strings")
        for key in ("target_lang", "source_lang", "output_dir"):
            if not isinstance(data.get(key, ""), str):
                raise BadMessage(f"{key} is not a string")
        attempt = data.get("attempt")
        if attempt is not None and (not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0):
            raise BadMessage(f"attempt is not a non-negative integer: {attempt!r}")

        return cls(
            job_id=job_id,
            target_lang=data.get("target_lang", ""),
            source_lang=data.get("source_lang", ""),
            output_dir=data.get("output_dir") or DEFAULT_OUTPUT_DIR,
            target_fields=tuple(fields),
            enable_code_filter=data.get("enable_code_filter") is True,
            attempt=attempt,
        )


@dataclass(frozen=True)
class Subtask:
    """One row of translation_subtasks: one entity (chapter, novel, ...) to translate."""

    id: str
    entity_type: str
    entity_id: str
    # Starts so far, this one excluded.
    attempts: int


class Outcome(str, enum.Enum):
    """What Worker.run_once did."""

    # A job was claimed and worked on (it ended COMPLETED or FAILED, or it was
    # cancelled while running).
    PROCESSED = "processed"
    # The message was dropped: a duplicate, a cancelled job, a job another
    # worker took, or a message that is not a job.
    SKIPPED = "skipped"
    # Nothing arrived within the timeout.
    EMPTY = "empty"
    # Something unexpected broke. Logged. Before the claim (PostgreSQL
    # unreachable) the message was put back at the head of its lane; after
    # it, the job stays IN_PROGRESS and the service's reaper queues it again.
    ERROR = "error"


# --------------------------------------------------------------------------
# The pluggable parts: where text comes from and how it is translated
# --------------------------------------------------------------------------

# load_source_text(entity_type, entity_id, field) -> source text
SourceLoader = Callable[[str, str, str], str]
# translate(job, subtask, {field: source text}) -> {field: translated text}
Translator = Callable[[Job, Subtask, Mapping[str, str]], Mapping[str, str]]


def load_source_text(entity_type: str, entity_id: str, field: str) -> str:
    """DEFAULT SOURCE LOADER: RETURNS A PLACEHOLDER, NOT REAL CONTENT.

    This repository has no novel content store. Replace this with a function
    that reads `field` (e.g. "title", "content") of the entity
    (e.g. "chapter", "ch-1") from wherever your novels live.
    """
    return f"[placeholder {field} of {entity_type} {entity_id}]"


def translate_entity(job: Job, subtask: Subtask, source: Mapping[str, str]) -> dict[str, str]:
    """DEFAULT TRANSLATOR: COPIES THE TEXT. IT DOES NOT TRANSLATE ANYTHING.

    Replace this with a real translator. It gets the job (target_lang,
    source_lang, which may be empty, enable_code_filter), the subtask (which
    entity) and the source text of each of the job's target_fields; it returns
    the translated text of each field. Raising marks this subtask FAILED with
    the exception's text; the other subtasks go on.
    """
    return dict(source)


# The defaults, under names that parameters called `translate` and
# `load_source_text` do not shadow.
COPY_TRANSLATOR = translate_entity
PLACEHOLDER_SOURCE_LOADER = load_source_text


# --------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def output_file_name(entity_type: str, entity_id: str) -> str:
    """`<entity_type>-<entity_id>.json`, made safe as a single file name.

    Anything outside [A-Za-z0-9._-] becomes "_" and leading dots go (no hidden
    files, no ".."). When that changed the name, or it was too long, a short
    hash of the original is appended, so two different entities never share a
    file ("ch/1" and "ch_1" stay apart).
    """
    raw = f"{entity_type}-{entity_id}"
    safe = _UNSAFE_FILE_CHARS.sub("_", raw).lstrip(".")
    if safe != raw or len(safe) > MAX_FILE_STEM_CHARS:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        safe = f"{safe[:MAX_FILE_STEM_CHARS]}-{digest}"
    return f"{safe}.json"


def job_output_dir(output_root: Path, job: Job) -> Path:
    """`<output_root>/<output_dir>/<job_id>`.

    The service only accepts relative output_dirs without "..", but the
    worker checks again: a message must never make it write outside its root.
    """
    relative = PurePosixPath(job.output_dir)
    if relative.is_absolute() or ".." in relative.parts or "\\" in job.output_dir:
        raise ValueError(f"output_dir must be a relative path without '..': {job.output_dir!r}")
    return output_root / relative / job.job_id


def write_output(
    output_root: Path, job: Job, subtask: Subtask, translated: Mapping[str, str]
) -> Path:
    """Writes one entity's translation as JSON, atomically (temp file + rename)."""
    directory = job_output_dir(output_root, job)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / output_file_name(subtask.entity_type, subtask.entity_id)
    document = {
        "job_id": job.job_id,
        "entity_type": subtask.entity_type,
        "entity_id": subtask.entity_id,
        "source_lang": job.source_lang,
        "target_lang": job.target_lang,
        "fields": dict(translated),
    }
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, ensure_ascii=False, indent=2)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------
# Logging: job_id on every line about a job
# --------------------------------------------------------------------------


class JobLog(logging.LoggerAdapter):
    """Prefixes every message with `job_id=<id>` (and sets record.job_id for
    structured handlers)."""

    def __init__(self, job_id: str):
        super().__init__(log, {"job_id": job_id})

    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["job_id"] = self.extra["job_id"]
        return f"job_id={self.extra['job_id']} {msg}", kwargs


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


class Worker:
    """Pops jobs from the Redis lanes and works them off against PostgreSQL.

    `run()` loops until `stop()` (or SIGTERM/SIGINT through `main`);
    `run_once()` handles at most one message, which is what tests call.
    """

    def __init__(
        self,
        database_url: str,
        redis_url: str = DEFAULT_REDIS_URL,
        queue: str = DEFAULT_QUEUE,
        output_root: str | os.PathLike[str] = ".",
        translate: Translator = translate_entity,
        load_source_text: SourceLoader = load_source_text,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT_SECONDS,
    ):
        self.database_url = database_url
        self.queue = queue
        # BLPOP checks its keys in order: high first, then normal, then low.
        # The braces put every lane in the slot of `queue`, so this one BLPOP
        # also works on Redis Cluster.
        self.lanes = [f"{{{queue}}}:high", queue, f"{{{queue}}}:low"]
        self.output_root = Path(output_root)
        self.translate = translate
        self.load_source_text = load_source_text
        self.poll_timeout = poll_timeout
        # No socket timeout: BLPOP legitimately blocks for poll_timeout.
        # Keepalive and the health check notice a dead connection instead.
        self.redis = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=10,
            socket_keepalive=True,
            health_check_interval=30,
        )
        self._db: psycopg.Connection | None = None
        self._stop = threading.Event()

        if translate is COPY_TRANSLATOR:
            log.warning("copy translator: no real translation, the output is the source text")
        if load_source_text is PLACEHOLDER_SOURCE_LOADER:
            log.warning("placeholder source loader: no content store, the source text is a placeholder")

    @classmethod
    def from_env(cls, **overrides: Any) -> "Worker":
        """A Worker configured from the environment (see the module docstring)."""
        database_url = os.environ.get("DATABASE_URL") or os.environ.get("DATABASE_DSN")
        if not database_url:
            raise SystemExit("DATABASE_URL (or DATABASE_DSN) must be set")
        settings: dict[str, Any] = dict(
            database_url=database_url,
            redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            queue=os.environ.get("TRANSLATION_QUEUE") or DEFAULT_QUEUE,
            output_root=os.environ.get("WORKER_OUTPUT_ROOT") or ".",
            poll_timeout=float(os.environ.get("WORKER_POLL_TIMEOUT") or DEFAULT_POLL_TIMEOUT_SECONDS),
        )
        settings.update(overrides)
        return cls(**settings)

    # -- the loop ----------------------------------------------------------

    def run(self) -> None:
        """Handles messages until stop() is called.

        A stop request is honoured between messages: the current job is
        finished first, and an idle worker leaves when its BLPOP returns
        (at most poll_timeout). BLPOP is never cut short, because a message
        Redis has already popped would be lost with it, and its job would
        stay PENDING with nothing left in the queue.
        """
        log.info("worker started: queue lanes %s, output root %s", self.lanes, self.output_root.resolve())
        while not self._stop.is_set():
            try:
                outcome = self.run_once()
            except redis.RedisError as exc:
                log.error("Redis error, retrying in %ss: %s", RETRY_PAUSE_SECONDS, exc)
                self._stop.wait(RETRY_PAUSE_SECONDS)
                continue
            if outcome is Outcome.ERROR:
                # Most likely PostgreSQL is down: do not spin on the queue.
                self._stop.wait(RETRY_PAUSE_SECONDS)
        log.info("worker stopped")
        self.close()

    def stop(self) -> None:
        """Asks run() to return after the current job."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_once(self, timeout: float | None = None) -> Outcome:
        """Pops at most one message (waiting up to `timeout` seconds, default
        poll_timeout) and processes it.

        Never raises for a bad message or a failing job: those are logged and
        reported as SKIPPED or ERROR. Redis errors (while popping) do raise.
        """
        popped = self.redis.blpop(self.lanes, timeout=self.poll_timeout if timeout is None else timeout)
        if popped is None:
            return Outcome.EMPTY
        lane, raw = popped

        try:
            job_data = json.loads(raw)
        except ValueError as exc:
            log.error("job_id=- skipping a message on %s that is not JSON (%s): %.200r", lane, exc, raw)
            return Outcome.SKIPPED

        try:
            return self.process_job(job_data)
        except BadMessage as exc:
            log.error("job_id=- skipping a message on %s: %s: %.200r", lane, exc, raw)
            return Outcome.SKIPPED
        except ClaimFailed as exc:
            # Dropping the message now would strand the job: still PENDING,
            # with nothing left in the queue. Put it back where it was. (If the
            # claim did commit unseen, the copy is skipped as a duplicate.)
            jlog = JobLog(exc.args[0])
            jlog.error("could not claim the job, putting its message back on %s: %s", lane, exc.__cause__)
            self._drop_broken_connection()
            try:
                self.redis.lpush(lane, raw)
            except redis.RedisError:
                jlog.exception("could not put the message back; the job stays PENDING unqueued: %s", raw)
            return Outcome.ERROR
        except Exception:
            job_id = job_data.get("job_id", "-") if isinstance(job_data, dict) else "-"
            JobLog(str(job_id)).exception(
                "processing failed; the job is left as it is (if IN_PROGRESS, the service's reaper queues it again)"
            )
            self._drop_broken_connection()
            return Outcome.ERROR

    # -- one job -------------------------------------------------------------

    def process_job(self, job_data: Any) -> Outcome:
        """Claims and works off one job described by a decoded queue message."""
        job = Job.from_message(job_data)
        jlog = JobLog(job.job_id)

        try:
            claimed = self.claim_job(job.job_id, job.attempt)
        except psycopg.Error as exc:
            raise ClaimFailed(job.job_id) from exc
        if not claimed:
            # A duplicate message, a job cancelled while queued, one another
            # worker already took, or a stale copy of an earlier attempt.
            # Normal; nothing to do.
            jlog.info("not claimed (no longer PENDING at attempt %s: duplicate, cancelled, taken or stale); skipping", job.attempt)
            return Outcome.SKIPPED
        # From here on every update checks this attempt.
        attempt = self.current_attempt(job.job_id) if job.attempt is None else job.attempt

        subtasks = self.unfinished_subtasks(job.job_id)
        jlog.info(
            "claimed: %d subtask(s) to do, target_lang=%s source_lang=%s",
            len(subtasks), job.target_lang or "-", job.source_lang or "-",
        )

        retryable = True
        for subtask in subtasks:
            if not self.start_subtask(job.job_id, attempt, subtask):
                jlog.info(
                    "job is %s now, not IN_PROGRESS at attempt %s; stopping before %s/%s",
                    self.job_status(job.job_id), attempt, subtask.entity_type, subtask.entity_id,
                )
                return Outcome.PROCESSED
            try:
                path = self.translate_subtask(job, subtask)
            except Exception as exc:
                jlog.warning("subtask %s/%s failed: %s", subtask.entity_type, subtask.entity_id, exc)
                self.fail_subtask(job.job_id, attempt, subtask.id, _error_text(exc))
                if isinstance(exc, NotRetryable):
                    retryable = False
            else:
                jlog.info("subtask %s/%s done: %s", subtask.entity_type, subtask.entity_id, path)
                self.complete_subtask(job.job_id, attempt, subtask.id)

        self.finish_job(job.job_id, attempt, jlog, retryable=retryable)
        return Outcome.PROCESSED

    def translate_subtask(self, job: Job, subtask: Subtask) -> Path:
        """Loads the source text of each target field, translates, writes the file."""
        source = {
            field: self.load_source_text(subtask.entity_type, subtask.entity_id, field)
            for field in job.target_fields
        }
        translated = self.translate(job, subtask, source)
        return write_output(self.output_root, job, subtask, translated)

    # -- the SQL: each statement is its own transaction (autocommit) ---------

    def claim_job(self, job_id: str, attempt: int | None) -> bool:
        """PENDING -> IN_PROGRESS at the message's attempt, in one conditional
        statement.

        Only one worker can win it: PostgreSQL locks the row, and a second
        UPDATE re-checks `status = 'PENDING'` after the first committed and
        finds nothing. So duplicates, cancelled jobs, jobs already taken and
        stale copies of an earlier attempt (`attempts` has moved on) are all
        refused by the same statement, without a read-then-write race.
        """
        row = self.execute(
            "UPDATE translation_jobs SET status = 'IN_PROGRESS' "
            "WHERE id = %s AND status = 'PENDING' AND attempts = coalesce(%s, attempts) RETURNING id",
            (job_id, attempt),
        ).fetchone()
        return row is not None

    def current_attempt(self, job_id: str) -> int:
        """The job's attempt right after a claim, for a message without one."""
        (attempts,) = self.execute("SELECT attempts FROM translation_jobs WHERE id = %s", (job_id,)).fetchone()
        return attempts

    def unfinished_subtasks(self, job_id: str) -> list[Subtask]:
        """Subtasks not COMPLETED yet, in creation order (ids are time-ordered).

        On a retried or rescued job, subtasks finished by an earlier attempt
        are not done again.
        """
        rows = self.execute(
            "SELECT id, entity_type, entity_id, attempts FROM translation_subtasks "
            "WHERE job_id = %s AND status <> 'COMPLETED' ORDER BY id",
            (job_id,),
        ).fetchall()
        return [Subtask(str(id_), entity_type, entity_id, attempts) for id_, entity_type, entity_id, attempts in rows]

    def start_subtask(self, job_id: str, attempt: int, subtask: Subtask) -> bool:
        """Marks the subtask IN_PROGRESS, counting an attempt, but only while
        the subtask still belongs to our attempt (`job_attempt`).

        This is the re-check before every subtask: a job cancelled through
        the API, taken back by the reaper or handed out again makes this
        return False, and the worker leaves the job alone. The check is on
        the subtask row, so it holds even when this statement waited for a
        cancel or a rescue that held the row's lock.
        """
        row = self.execute(
            "UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL "
            f"WHERE id = %s AND {SUBTASK_STILL_OURS} AND status IN ('PENDING', 'FAILED') RETURNING id",
            (subtask.id, attempt),
        ).fetchone()
        return row is not None

    def complete_subtask(self, job_id: str, attempt: int, subtask_id: str) -> None:
        # Guarded on the row: if the job was cancelled or handed out again
        # meanwhile, the service already reset this subtask, and that stays.
        self.execute(
            "UPDATE translation_subtasks SET status = 'COMPLETED', error = NULL "
            f"WHERE id = %s AND status = 'IN_PROGRESS' AND {SUBTASK_STILL_OURS}",
            (subtask_id, attempt),
        )

    def fail_subtask(self, job_id: str, attempt: int, subtask_id: str, error: str) -> None:
        self.execute(
            "UPDATE translation_subtasks SET status = 'FAILED', error = %s "
            f"WHERE id = %s AND status = 'IN_PROGRESS' AND {SUBTASK_STILL_OURS}",
            (error, subtask_id, attempt),
        )

    def job_status(self, job_id: str) -> str | None:
        row = self.execute("SELECT status FROM translation_jobs WHERE id = %s", (job_id,)).fetchone()
        return row[0] if row else None

    def finish_job(self, job_id: str, attempt: int, jlog: JobLog, retryable: bool = True) -> None:
        """COMPLETED if every subtask is, else FAILED with a summary (and
        `retryable = false` when a retry cannot help).

        Both updates keep `AND status = 'IN_PROGRESS' AND attempts = <ours>`:
        a cancel, a rescue or a retry that came in while the last subtask ran
        is not overwritten. After a FAILED the job may read PENDING under the
        next attempt: the service scheduled a retry (RETURNING tells).
        """
        unfinished = self.execute(
            "SELECT entity_type, entity_id, status, error FROM translation_subtasks "
            "WHERE job_id = %s AND status <> 'COMPLETED' ORDER BY id",
            (job_id,),
        ).fetchall()
        (total,) = self.execute(
            "SELECT count(*) FROM translation_subtasks WHERE job_id = %s", (job_id,)
        ).fetchone()

        if not unfinished:
            changed = self.execute(
                "UPDATE translation_jobs SET status = 'COMPLETED', error = NULL "
                "WHERE id = %s AND status = 'IN_PROGRESS' AND attempts = %s",
                (job_id, attempt),
            ).rowcount
            outcome = f"COMPLETED ({total} subtask(s))"
        else:
            named = "; ".join(
                f"{entity_type}/{entity_id}: {error or status}"
                for entity_type, entity_id, status, error in unfinished[:MAX_FAILURES_IN_JOB_ERROR]
            )
            more = len(unfinished) - MAX_FAILURES_IN_JOB_ERROR
            error = f"{len(unfinished)} of {total} subtasks failed: {named}"
            if more > 0:
                error += f"; and {more} more"
            row = self.execute(
                "UPDATE translation_jobs SET status = 'FAILED', error = %s, retryable = %s "
                "WHERE id = %s AND status = 'IN_PROGRESS' AND attempts = %s "
                "RETURNING status, attempts, scheduled_at",
                (error[:MAX_ERROR_CHARS], retryable, job_id, attempt),
            ).fetchone()
            changed = row is not None
            if row is not None and row[0] == "PENDING":
                outcome = f"FAILED: {error}; the service retries it as attempt {row[1]} at {row[2]}"
            else:
                outcome = f"FAILED for good{'' if retryable else ' (not retryable)'}: {error}"

        if changed:
            jlog.info("job %s", outcome)
        else:
            jlog.info("job is %s now; left as it is (would have been %s)", self.job_status(job_id), outcome)

    # -- connections -----------------------------------------------------------

    def execute(self, query: str, params: tuple = ()) -> psycopg.Cursor:
        """Runs one statement in its own transaction (autocommit).

        A statement PostgreSQL aborts as a deadlock victim had no effect, so
        it is simply run again. Such deadlocks are possible: a subtask update
        locks the subtask and then, through the heartbeat trigger, its job,
        while the service's cancel, retry and reaper lock the job first and
        then its subtasks.
        """
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                return self.db.execute(query, params)
            except psycopg.errors.DeadlockDetected:
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
                log.warning("deadlock detected, running the statement again (attempt %d)", attempt + 1)
        raise AssertionError("unreachable")

    @property
    def db(self) -> psycopg.Connection:
        """The PostgreSQL connection, opened on first use and after a failure.

        autocommit: every statement commits on its own, so each status change
        is visible to the service at once and no transaction stays open while
        a translation runs.
        """
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(
                self.database_url,
                autocommit=True,
                application_name="translation-worker",
                connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
            )
        return self._db

    def _drop_broken_connection(self) -> None:
        if self._db is not None and (self._db.broken or self._db.closed):
            self._db.close()
            self._db = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.redis.close()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT: finish the current job, then exit 0. A second signal
    exits at once (the job in hand stays IN_PROGRESS; the reaper re-queues it)."""

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if worker.stopping:
            log.warning("%s again: exiting now", name)
            raise SystemExit(1)
        log.info("%s: finishing the current job, then exiting (send it again to exit now)", name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(translate: Translator = translate_entity, load_source_text: SourceLoader = load_source_text) -> int:
    """Runs a worker configured from the environment until SIGTERM/SIGINT.

    Call it from your own script to plug in a real translator and loader.
    """
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    worker = Worker.from_env(translate=translate, load_source_text=load_source_text)
    install_signal_handlers(worker)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
