"""The dashboard at GET /, in a real headless browser: it loads, shows a job
created in the test, and its redrive button moves a dead job back to PENDING
with its message on its lane; the job it shows in detail follows its
server-sent events, never polled. The newer parts of the page are tested in
test_health_and_list.py and test_job_actions.py."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from playwright.sync_api import expect

from conftest import HERE, NOVEL_ID, PAGE_TIMEOUT_MS, Queue, Service, poll

# Longer than the page waits before it opens an ended stream again (3 s).
RECONNECT_WAIT_MS = 5_000


def make_dead_letter(service: Service, queue: Queue, db) -> str:
    """A job the reaper gave up on, the real way: a worker pops and claims it,
    then goes silent; with JOB_MAX_ATTEMPTS=1 the first rescue fails it and
    its message goes to the dead lane."""
    job = service.create_job(novel_id=NOVEL_ID, target_lang="de", source_lang="ja")
    job_id = job["id"]

    # Workers pop from the head only (the reaper relies on it); the lane is
    # empty before, so the head is this job's message.
    message = poll(lambda: queue.client.lpop(queue.normal), "the job's message on the normal lane")
    assert job_id in message
    claimed = db.execute(
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' WHERE id = %s AND status = 'PENDING' AND attempts = 0",
        (job_id,),
    ).rowcount
    assert claimed == 1
    poll(lambda: any(m["job_id"] == job_id for m in queue.messages(queue.dead)), "the dead letter")
    assert service.get_job(job_id)["status"] == "FAILED"
    return job_id


def test_the_dashboard_shows_jobs_and_its_redrive_button_moves_a_dead_job_back(
    service: Service, queue: Queue, db, browser_page
):
    dead_id = make_dead_letter(service, queue, db)
    shown = service.create_job(novel_id=NOVEL_ID, target_lang="pt-BR")

    page = browser_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(service.http_base + "/")

    expect(page).to_have_title("translation-jobs")
    shown_row = page.locator(f'#jobs tr[data-job-id="{shown["id"]}"]')
    expect(shown_row).to_contain_text("PENDING", timeout=PAGE_TIMEOUT_MS)
    expect(shown_row).to_contain_text("pt-BR")
    expect(page.locator(f'#jobs tr[data-job-id="{dead_id}"]')).to_contain_text("FAILED")
    expect(page.locator("#queue")).to_have_text(queue.name)
    expect(page.locator("#dead-letters")).to_have_text("1", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator('#lanes tr[data-lane="dead"]')).to_contain_text(queue.dead)
    expect(page.locator("#redrive")).to_be_enabled()
    screenshot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or HERE / "screenshot.png")
    page.screenshot(path=str(screenshot), full_page=True)

    page.locator("#redrive").click()
    expect(page.locator("#redrive-result")).to_have_text("queued again: 1", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#dead-letters")).to_have_text("0", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{dead_id}"]')).to_contain_text(
        "PENDING", timeout=PAGE_TIMEOUT_MS
    )

    job = service.get_job(dead_id)
    assert job["status"] == "PENDING"
    assert job["attempts"] == 1, "a new attempt"
    assert job["error"] is None
    assert queue.messages(queue.dead) == []
    poll(
        lambda: any(m["job_id"] == dead_id and m["attempt"] == 1 for m in queue.messages(queue.normal)),
        "the redriven job's message on its lane",
    )

    origin = service.http_base + "/"
    foreign = [url for url in requests if not url.startswith(origin)]
    assert foreign == [], f"the page fetched from elsewhere: {foreign}"


def test_the_job_shown_in_detail_follows_its_events_and_is_never_polled(
    service: Service, queue: Queue, db, browser_page
):
    # On the high lane: the other test pops the normal lane's head.
    job = service.create_job(
        novel_id=NOVEL_ID,
        target_lang="fr",
        priority="high",
        subtasks=[{"entity_type": "chapter", "entity_id": str(i)} for i in (1, 2)],
    )
    job_id = job["id"]
    page = browser_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(service.http_base + "/")

    page.locator(f'#jobs tr[data-job-id="{job_id}"]').click(timeout=PAGE_TIMEOUT_MS)
    summary = page.locator("#job-summary")
    expect(page.locator("#job")).to_be_visible()
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    expect(summary).to_contain_text("PENDING")
    expect(summary).to_contain_text("0/2")
    assert page.url.endswith("#job=" + job_id), "the page links to the job it shows"

    # A worker finishes one subtask, then the job is cancelled: plain SQL,
    # as workers write, and the page shows each from the stream.
    db.execute(
        "UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = %s AND entity_id = '1'",
        (job_id,),
    )
    expect(page.locator('#subtasks tr[data-entity-id="1"]')).to_contain_text(
        "COMPLETED", timeout=PAGE_TIMEOUT_MS
    )
    expect(summary).to_contain_text("1/2")
    db.execute("UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = %s", (job_id,))
    expect(summary).to_contain_text("CANCELLED", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_text("final: CANCELLED")

    # Ended and closed: the browser does not open the stream again.
    page.wait_for_timeout(RECONNECT_WAIT_MS)
    job_url = f"{service.http_base}/api/v1/translation-jobs/{job_id}"
    assert requests.count(job_url + "/events") == 1, requests
    assert job_url not in requests, "the job shown is never polled"

    # A link to the job opens the page on it; a finished job is one event.
    page.goto("about:blank")
    page.goto(service.http_base + "/#job=" + job_id)
    expect(page.locator("#job-live")).to_have_text("final: CANCELLED", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator('#subtasks tr[data-entity-id="2"]')).to_contain_text("PENDING")

    # An unknown job: the stream is refused, and the page says what GET says.
    page.goto("about:blank")
    page.goto(service.http_base + "/#job=" + str(uuid.uuid4()))
    expect(page.locator("#job-live")).to_have_text("not live", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-note")).to_contain_text("NOT_FOUND")

