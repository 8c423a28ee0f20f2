"""The dashboard's header, chart and job list, in a real headless browser:
readiness, PostgreSQL and Redis as /readyz and /metrics report them; the
chart of creates and pushes per second; the status filter; paging.

Jobs here are LOW priority: test_dashboard.py reads the head of the normal
lane."""

from __future__ import annotations

from playwright.sync_api import Route, expect

from conftest import NOVEL_ID, PAGE_TIMEOUT_MS, Service

# Jobs on one page of the list (dashboard.html, JOBS_SHOWN).
JOBS_SHOWN = 20


def create_low(service: Service, target_lang: str = "es") -> dict:
    return service.create_job(novel_id=NOVEL_ID, target_lang=target_lang, priority="low")


def row_ids(page) -> list[str]:
    return page.locator("#jobs tbody tr[data-job-id]").evaluate_all("rows => rows.map(r => r.dataset.jobId)")


def row_statuses(page) -> list[str]:
    return page.locator("#jobs tbody tr[data-job-id] .badge").all_inner_texts()


def next_refresh(page) -> None:
    """Waits until the page has refreshed once more (its "updated" time moves
    on; it refreshes every 2 s)."""
    before = page.locator("#updated").inner_text()
    page.wait_for_function(
        "before => document.getElementById('updated').textContent !== before", arg=before, timeout=PAGE_TIMEOUT_MS
    )


def test_the_header_shows_readiness_postgresql_and_redis_as_the_service_reports_them(
    service: Service, browser_page
):
    page = browser_page
    page.goto(service.http_base + "/")
    expect(page.locator("#ready-state")).to_have_text("Ready", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#postgres-state")).to_have_text("PostgreSQL up")
    expect(page.locator("#redis-state")).to_contain_text("Redis up, maxmemory-policy ")
    for check in ("ready", "postgres", "redis"):
        expect(page.locator(f"#{check}-dot")).to_have_class("dot ok")
    # Without authentication nothing asks for a token.
    expect(page.locator("#token-form")).to_be_hidden()

    # The service as it answers with PostgreSQL and Redis gone: /readyz 503,
    # and /metrics reporting both down.
    def down(route: Route) -> None:
        response = route.fetch()
        text = response.text()
        text = text.replace("translation_database_up 1\n", "translation_database_up 0\n")
        text = text.replace("translation_redis_up 1\n", "translation_redis_up 0\n")
        route.fulfill(response=response, body=text)

    page.route("**/readyz", lambda route: route.fulfill(status=503, body="not ready\n"))
    page.route("**/metrics", down)
    expect(page.locator("#ready-state")).to_have_text("Not ready: PostgreSQL unreachable", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#postgres-state")).to_have_text("PostgreSQL unreachable: creates and reads fail")
    expect(page.locator("#redis-state")).to_have_text("Redis unreachable: jobs wait in the outbox")
    for check in ("ready", "postgres", "redis"):
        expect(page.locator(f"#{check}-dot")).to_have_class("dot bad")

    # Not ready with PostgreSQL up: starting or stopping.
    page.unroute("**/metrics")
    expect(page.locator("#ready-state")).to_have_text(
        "Not ready: starting (migrations) or shutting down", timeout=PAGE_TIMEOUT_MS
    )
    expect(page.locator("#postgres-state")).to_have_text("PostgreSQL up")

    page.unroute("**/readyz")
    expect(page.locator("#ready-state")).to_have_text("Ready", timeout=PAGE_TIMEOUT_MS)


def test_the_chart_draws_creates_and_pushes_per_second_after_some_creates(service: Service, browser_page):
    page = browser_page
    page.goto(service.http_base + "/")
    chart = page.locator("#rate-chart")
    # Two readings make the first point; nothing was created meanwhile.
    page.wait_for_function("() => Number(document.getElementById('rate-chart').dataset.points) >= 1",
                           timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#creates-peak")).to_have_text("0.0")

    for _ in range(6):
        create_low(service)

    # The relay pushes them within 200 ms; the page reads every 2 s.
    page.wait_for_function(
        "() => Number(document.getElementById('creates-peak').textContent) > 0"
        " && Number(document.getElementById('pushes-peak').textContent) > 0",
        timeout=PAGE_TIMEOUT_MS,
    )
    for series in ("creates", "pushes"):
        points = page.locator(f"#chart-{series}").get_attribute("points").split()
        assert len(points) >= 2, points
        heights = [float(point.split(",")[1]) for point in points]
        assert min(heights) < max(heights), f"{series}: a rise above zero in {points}"
    assert int(chart.get_attribute("data-points")) >= 2


def test_the_status_filter_shows_only_jobs_of_that_status(service: Service, browser_page):
    cancelled = create_low(service, "it")
    service.cancel_job(cancelled["id"])
    pending = create_low(service, "nl")

    page = browser_page
    page.goto(service.http_base + "/")
    expect(page.locator(f'#jobs tr[data-job-id="{pending["id"]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)

    page.locator("#status-filter").select_option("CANCELLED")
    expect(page.locator(f'#jobs tr[data-job-id="{cancelled["id"]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{pending["id"]}"]')).to_have_count(0)
    assert set(row_statuses(page)) == {"CANCELLED"}

    page.locator("#status-filter").select_option("PENDING")
    expect(page.locator(f'#jobs tr[data-job-id="{pending["id"]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{cancelled["id"]}"]')).to_have_count(0)
    assert set(row_statuses(page)) == {"PENDING"}
    next_refresh(page)
    assert set(row_statuses(page)) == {"PENDING"}

    page.locator("#status-filter").select_option("COMPLETED")
    expect(page.locator("#jobs tbody")).to_have_text("no COMPLETED jobs", timeout=PAGE_TIMEOUT_MS)

    page.locator("#status-filter").select_option("")
    expect(page.locator(f'#jobs tr[data-job-id="{cancelled["id"]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{pending["id"]}"]')).to_be_visible()


def test_paging_shows_the_next_older_page_and_back(service: Service, browser_page):
    # One more than a page, newest last: nothing else creates jobs meanwhile.
    created = [create_low(service, "sv")["id"] for _ in range(JOBS_SHOWN + 1)]
    first_page = set(created[1:])

    page = browser_page
    page.goto(service.http_base + "/")
    expect(page.locator(f'#jobs tr[data-job-id="{created[-1]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert set(row_ids(page)) == first_page
    expect(page.locator("#page-number")).to_have_text("page 1")
    expect(page.locator("#page-newer")).to_be_disabled()

    page.locator("#page-older").click()
    expect(page.locator("#page-number")).to_have_text("page 2", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#jobs tbody tr[data-job-id]").first).to_have_attribute(
        "data-job-id", created[0], timeout=PAGE_TIMEOUT_MS
    )
    assert not first_page & set(row_ids(page)), "page 2 repeats none of page 1"
    expect(page.locator("#page-newer")).to_be_enabled()
    next_refresh(page)
    assert row_ids(page)[0] == created[0]

    page.locator("#page-newer").click()
    expect(page.locator("#page-number")).to_have_text("page 1", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(f'#jobs tr[data-job-id="{created[-1]}"]')).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert set(row_ids(page)) == first_page
