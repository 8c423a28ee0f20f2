"""A job row opens the job with its subtasks and Cancel and Retry buttons, in
a real headless browser: cancel makes it CANCELLED, retry makes a cancelled
or failed job PENDING again as a new attempt, followed live. With
authentication on, the page sends the token pasted into it, says what a
refusal means, and an admin token cancels another caller's job.

Jobs here are LOW priority: test_dashboard.py reads the head of the normal
lane."""

from __future__ import annotations

from playwright.sync_api import Route, expect

from conftest import NOVEL_ID, PAGE_TIMEOUT_MS, AuthService, Service


def open_job(page, job_id: str) -> None:
    page.locator(f'#jobs tr[data-job-id="{job_id}"]').click(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job")).to_be_visible()
    expect(page.locator("#job-id")).to_have_text(job_id)


def test_a_job_row_opens_its_subtasks_and_its_buttons_cancel_and_retry_it(service: Service, db, browser_page):
    job = service.create_job(
        novel_id=NOVEL_ID,
        target_lang="ko",
        priority="low",
        subtasks=[{"entity_type": "chapter", "entity_id": str(i)} for i in (1, 2, 3)],
    )
    job_id = job["id"]
    page = browser_page
    page.goto(service.http_base + "/")

    open_job(page, job_id)
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#subtasks tbody tr[data-entity-id]")).to_have_count(3)
    expect(page.locator('#subtasks tr[data-entity-id="2"]')).to_contain_text("PENDING")
    expect(page.locator("#job-cancel")).to_be_enabled()
    expect(page.locator("#job-retry")).to_be_disabled()

    page.locator("#job-cancel").click()
    expect(page.locator("#job-action-result")).to_have_text("cancelled", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_text("final: CANCELLED", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator('#subtasks tr[data-entity-id="3"]')).to_contain_text("CANCELLED")
    expect(page.locator(f'#jobs tr[data-job-id="{job_id}"]')).to_contain_text("CANCELLED", timeout=PAGE_TIMEOUT_MS)
    assert service.get_job(job_id)["status"] == "CANCELLED"
    expect(page.locator("#job-cancel")).to_be_disabled()

    page.locator("#job-retry").click()
    expect(page.locator("#job-action-result")).to_have_text("queued again as attempt 1", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-summary")).to_contain_text("PENDING")
    expect(page.locator('#subtasks tr[data-entity-id="1"]')).to_contain_text("PENDING")
    retried = service.get_job(job_id)
    assert (retried["status"], retried["attempts"]) == ("PENDING", 1)

    # A worker's final failure (plain SQL, as workers write) arrives on the
    # new stream; Retry then queues attempt 2.
    db.execute(
        "UPDATE translation_jobs SET status = 'FAILED', error = 'model unavailable' WHERE id = %s",
        (job_id,),
    )
    expect(page.locator("#job-live")).to_have_text("final: FAILED", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-summary")).to_contain_text("model unavailable")
    expect(page.locator("#job-retry")).to_be_enabled()
    page.locator("#job-retry").click()
    expect(page.locator("#job-action-result")).to_have_text("queued again as attempt 2", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    retried = service.get_job(job_id)
    assert (retried["status"], retried["attempts"], retried["error"]) == ("PENDING", 2, None)


def test_with_authentication_on_the_page_sends_its_token_and_says_what_a_refusal_means(
    auth_service: AuthService, browser_page
):
    alice = auth_service.token("alice")
    admin = auth_service.token("operator", admin=True)
    bobs = auth_service.create_job(auth_service.token("bob"), novel_id=NOVEL_ID, target_lang="ja", priority="low")
    alices = auth_service.create_job(alice, novel_id=NOVEL_ID, target_lang="fi", priority="low")
    page = browser_page
    requests: list[tuple[str, str | None]] = []
    page.on("request", lambda request: requests.append((request.url, request.headers.get("authorization"))))

    # No token: every API call is refused, and the page says what to do and
    # shows the token field.
    page.goto(auth_service.http_base + "/")
    expect(page.locator("#banner")).to_contain_text(
        "answered 401 (UNAUTHENTICATED: missing bearer token", timeout=PAGE_TIMEOUT_MS
    )
    expect(page.locator("#banner")).to_contain_text("authentication is on: paste a bearer token above")
    expect(page.locator("#token-form")).to_be_visible()
    # Readiness and /metrics are open.
    expect(page.locator("#ready-state")).to_have_text("Ready")
    expect(page.locator("#postgres-state")).to_have_text("PostgreSQL up")

    # A caller's token: its own jobs; the queue statistics need the admin scope.
    page.locator("#token").fill(alice)
    page.locator("#token-use").click()
    expect(page.locator("#token-state")).to_have_text("token in use")
    expect(page.locator(f'#jobs tr[data-job-id="{alices["id"]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{bobs["id"]}"]')).to_have_count(0)
    expect(page.locator("#banner")).to_have_text(
        "Cannot refresh: /api/v1/stats answered 403 (PERMISSION_DENIED: GetQueueStats needs a token "
        "with the translation.admin scope)",
        timeout=PAGE_TIMEOUT_MS,
    )
    # Its own job: followed live with the token, and cancelled.
    open_job(page, alices["id"])
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    page.locator("#job-cancel").click()
    expect(page.locator("#job-live")).to_have_text("final: CANCELLED", timeout=PAGE_TIMEOUT_MS)
    assert auth_service.get_job(alices["id"])["status"] == "CANCELLED"
    # Another caller's job, by its link: not found, as for the API.
    page.goto("about:blank")
    page.goto(auth_service.http_base + "/#job=" + bobs["id"])
    expect(page.locator("#job-live")).to_have_text("not live", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-note")).to_contain_text("answered 404 (NOT_FOUND")

    # The admin token (the token stays for the tab: paste another to change it).
    page.locator("#token").fill(admin)
    page.locator("#token-use").click()
    expect(page.locator("#job-live")).to_have_text("live", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#banner")).to_be_hidden(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{bobs["id"]}"]')).to_be_visible()
    expect(page.locator("#dead-letters")).to_have_text("0")

    # A cancel sent with a caller's token (as if the admin token had been
    # swapped for alice's): the page says what the service answered.
    def as_alice(route: Route) -> None:
        route.continue_(headers={**route.request.headers, "authorization": "Bearer " + alice})

    page.route("**/cancel", as_alice)
    page.locator("#job-cancel").click()
    expect(page.locator("#job-action-result")).to_have_text(
        f"/api/v1/translation-jobs/{bobs['id']}/cancel answered 404 (NOT_FOUND: translation job {bobs['id']} "
        "not found); another caller's job looks the same: an admin token sees every job",
        timeout=PAGE_TIMEOUT_MS,
    )
    expect(page.locator("#job-action-result")).to_have_class("error")
    assert auth_service.get_job(bobs["id"])["status"] == "PENDING"

    page.unroute("**/cancel")
    page.locator("#job-cancel").click()
    expect(page.locator("#job-action-result")).to_have_text("cancelled", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_text("final: CANCELLED", timeout=PAGE_TIMEOUT_MS)
    assert auth_service.get_job(bobs["id"])["status"] == "CANCELLED"

    # Every API call carried the token in use; /readyz and /metrics none.
    for url, authorization in requests:
        path = url[len(auth_service.http_base) :]
        if path in ("/readyz", "/metrics"):
            assert authorization is None, url
        elif path.startswith("/api/") and authorization is not None:
            assert authorization in ("Bearer " + alice, "Bearer " + admin), url
    assert any(
        url.endswith(f"/{bobs['id']}/events") and authorization == "Bearer " + admin for url, authorization in requests
    )
