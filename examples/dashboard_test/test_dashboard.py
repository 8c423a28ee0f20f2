"""The dashboard at GET /, in a real headless browser: it loads, shows a job
created in the test, and its redrive button moves a dead job back to PENDING
with its message on its lane."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import expect

from conftest import HERE, Queue, Service, poll

NOVEL_ID = "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e"
# How long the page may take to show a change (it polls every 2 s).
PAGE_TIMEOUT_MS = 15_000


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
