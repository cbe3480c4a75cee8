"""The operations dashboard in a real browser: Playwright driving Debian's Chromium.

The page polls its JSON endpoint; these tests watch it change as real workers
start, drain a queue, fail tasks and answer actions. Screenshots of each state
go to the test work directory (``dashboard-*.png``; KEEP_TEST_WORK_DIR=1 keeps them).
"""

from __future__ import annotations

import os
import shutil

import pytest
from django.contrib.auth.models import Permission
from django.db import connections

from maintenance.tasks import health_check_task
from taskcore.models import DeadLetter
from taskcore.testing.tasks import fails_permanently

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
POLL = 1  # seconds between the page's refreshes in these tests
QUEUES = ["default", "email", "media", "reports", "maintenance"]

# CI sets TEST_BROWSER=always: there a missing browser is a failure, not a skip.
if os.environ.get("TEST_BROWSER") == "always":
    from playwright import sync_api

    assert shutil.which(CHROMIUM), f"{CHROMIUM} missing: apt-get install -y chromium"
else:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls of the
    # test itself are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()
        # The test's ORM calls ran while Playwright's loop was running, so Django kept
        # their connection apart from the one pytest-django closes: close it here, or
        # its idle session keeps the test database from being dropped.
        connections.close_all()


@pytest.fixture
def http_cookies(settings):
    # The live server speaks plain HTTP; production keeps these cookies secure.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


@pytest.fixture
def empty_queues(app):
    from taskcore.redis_clients import broker_redis

    client = broker_redis(app, 5)
    client.flushdb()
    yield
    client.flushdb()


def make_staff(django_user_model, username, *codenames):
    user = django_user_model.objects.create_user(username, password="secret-" + username)
    user.is_staff = True
    user.save()
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def log_in(page, live_server, username):
    page.goto(f"{live_server.url}/admin/login/?next=/admin/operations/%3Fpoll%3D{POLL}")
    page.fill("#id_username", username)
    page.fill("#id_password", "secret-" + username)
    page.click("input[type=submit]")


def queue_row(page, name):
    return page.locator(f'#queues tr[data-queue="{name}"]')


def refreshes(page) -> int:
    return int(page.locator("#updated").get_attribute("data-refreshes"))


@pytest.mark.django_db(transaction=True)
def test_a_staff_user_without_the_permission_is_refused(
    browser, live_server, django_user_model, http_cookies, test_work_dir
):
    make_staff(django_user_model, "plain")
    page = browser.new_page()
    log_in(page, live_server, "plain")
    response = page.goto(f"{live_server.url}/admin/operations/")
    assert response.status == 403
    assert page.goto(f"{live_server.url}/admin/operations/data.json").status == 403
    page.screenshot(path=str(test_work_dir / "dashboard-refused.png"))


@pytest.mark.django_db(transaction=True)
def test_dashboard_follows_a_backlog_a_worker_a_dead_letter_and_an_action(
    browser, live_server, django_user_model, http_cookies, start_worker, test_work_dir, empty_queues
):
    shots = test_work_dir
    make_staff(
        django_user_model,
        "operator",
        "view_operations_dashboard",
        "control_workers",
        "replay_deadletter",
    )
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    dialogs = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    log_in(page, live_server, "operator")
    sync_api.expect(page.locator("#updated")).not_to_have_attribute("data-refreshes", "0")

    # 1. The five queues.
    assert (
        page.locator("#queues tbody tr").evaluate_all("rows => rows.map(r => r.dataset.queue)")
        == QUEUES
    )
    page.screenshot(path=str(shots / "dashboard-start.png"), full_page=True)

    # 2. A backlog on media with no media worker: critical "no consumer" within two refreshes.
    seen = refreshes(page)
    for _ in range(500):
        health_check_task.apply_async(queue="media")
    media = queue_row(page, "media")
    page.wait_for_function(
        f"() => +document.querySelector('#updated').dataset.refreshes >= {seen + 2}"
    )
    sync_api.expect(media).to_have_attribute("data-depth", "500")
    sync_api.expect(media.locator(".status")).to_have_text("critical")
    sync_api.expect(media.locator(".detail")).to_contain_text("no worker consumes media")
    sync_api.expect(page.locator("#banner")).to_have_attribute("data-status", "critical")
    page.screenshot(path=str(shots / "dashboard-backlog.png"), full_page=True)

    # 3. A media worker drains it; the page follows.
    start_worker(["media"], concurrency=2)
    sync_api.expect(media).to_have_attribute("data-depth", "0", timeout=60_000)
    sync_api.expect(media.locator(".consumers")).to_have_text("1")
    sync_api.expect(media.locator(".status")).to_have_text("ok")
    page.screenshot(path=str(shots / "dashboard-drained.png"), full_page=True)

    # 4. A task that fails for good shows under dead letters; "Replay" runs it again.
    worker = start_worker(["default"])
    failed = fails_permanently.delay("shown on the dashboard")
    group = page.locator('#dead-letters tr[data-task="taskcore.testing.fails_permanently"]')
    sync_api.expect(group).to_contain_text("PermanentError", timeout=30_000)
    page.screenshot(path=str(shots / "dashboard-dead-letter.png"), full_page=True)
    group.locator("button.replay").click()
    assert "Replay 1" in dialogs[-1]
    letter = DeadLetter.objects.get(task_id=failed.id)
    sync_api.expect(page.locator("#actions")).to_contain_text("replay dead letters")
    letter.refresh_from_db()
    assert letter.replayed_task_id
    # It ran again (and failed again: a new dead letter for the new task id).
    sync_api.expect(group).to_contain_text("PermanentError", timeout=30_000)
    assert DeadLetter.objects.filter(task_id=letter.replayed_task_id).exists()

    # 5. A worker action asks for confirmation and leaves an audit entry.
    row = page.locator(f'#workers tr[data-worker="{worker.hostname}"]')
    row.locator('button[data-action="pool_grow"]').click()
    assert dialogs[-1] == f"Add one pool process to {worker.hostname}?"
    sync_api.expect(page.locator("#actions")).to_contain_text(f"pool grow · {worker.hostname}")
    sync_api.expect(row).to_contain_text("2 processes", timeout=15_000)
    from dashboard.models import OperatorAction

    assert OperatorAction.objects.filter(
        action="pool_grow", target=worker.hostname, username="operator", succeeded=True
    ).exists()
    page.screenshot(path=str(shots / "dashboard-action.png"), full_page=True)

    # A dismissed confirmation sends nothing.
    page.remove_listener("dialog", accept)
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.locator('button[data-action="shutdown"]').click()
    page.wait_for_timeout(500)
    assert not OperatorAction.objects.filter(action="shutdown").exists()


def chart_column(page, metric, queue):
    """The values uPlot draws for ``queue`` in the ``metric`` chart (its own data, not ours)."""
    index = QUEUES.index(queue) + 1  # column 0 is time
    return page.evaluate(f"() => window.opsCharts['{metric}'].data[{index}]")


def wait_for_refreshes(page, count=2):
    seen = refreshes(page)
    page.wait_for_function(
        f"() => +document.querySelector('#updated').dataset.refreshes >= {seen + count}"
    )


@pytest.mark.django_db(transaction=True)
def test_a_burst_shows_in_the_hour_and_the_day_chart(
    browser, live_server, django_user_model, http_cookies, start_worker, test_work_dir, empty_queues
):
    """500 tasks wait, then a worker runs them: both charts show the peak and the sum.

    The collector runs here as beat would run it (``collect_sample()``), once with
    the burst waiting and once after it ran.
    """
    import time

    from dashboard import samples, stats
    from taskcore.health import metrics
    from taskcore.testing.waiting import wait_for

    make_staff(django_user_model, "operator", "view_operations_dashboard")
    state = stats.stats_redis()

    def collect(minutes_ago: float):
        # Recorded as if taken earlier, so the three samples lie apart on the time axis
        # and in three one-minute buckets; what they read is read now.
        samples.store(state, samples.take_sample(now=time.time() - 60 * minutes_ago))

    collect(20)  # before: nothing waits
    for _ in range(500):
        health_check_task.apply_async(queue="media")
    collect(10)  # the burst waits
    start_worker(["media"], concurrency=2)
    wait_for(
        lambda: metrics.outcome_totals(state).get("media", {}).get("succeeded", 0) >= 500,
        timeout=120,
        interval=0.5,
    )
    collect(0)  # after: the burst ran

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    log_in(page, live_server, "operator")
    sync_api.expect(page.locator("#updated")).not_to_have_attribute("data-refreshes", "0")

    # Hour: every sample, as uPlot holds it.
    assert chart_column(page, "depth", "media") == [0, 500, 0]
    assert chart_column(page, "throughput", "media") == [0, 0, 500]
    # Hover: the legend shows the value under the cursor.
    x = page.evaluate(
        "() => { const u = window.opsCharts.depth; const r = u.over.getBoundingClientRect();"
        " return [r.left + u.valToPos(u.data[0][1], 'x'), r.top + r.height / 2]; }"
    )
    page.mouse.move(*x)
    media_value = page.locator("#chart-depth .u-legend .u-series").nth(QUEUES.index("media") + 1)
    sync_api.expect(media_value.locator(".u-value")).to_have_text("500")
    page.locator(".ops-charts").screenshot(path=str(test_work_dir / "dashboard-chart-hour.png"))
    # The legend toggles a queue's line (uPlot's own legend).
    page.locator("#chart-depth .u-legend .u-series").nth(1).click()
    assert page.evaluate("() => window.opsCharts.depth.series[1].show") is False
    page.locator("#chart-depth .u-legend .u-series").nth(1).click()
    assert page.evaluate("() => window.opsCharts.depth.series[1].show") is True

    # Day: one-minute buckets keep the peak (depth) and the sum (throughput).
    page.click('.ops-range button[data-range="day"]')
    sync_api.expect(page.locator("#series-note")).to_contain_text("one-minute buckets")
    assert chart_column(page, "depth", "media") == [0, 500, 0]
    assert chart_column(page, "throughput", "media") == [0, 0, 500]
    sync_api.expect(page.locator("#series-note")).to_contain_text("one-minute buckets")
    page.locator(".ops-charts").screenshot(path=str(test_work_dir / "dashboard-chart-day.png"))


@pytest.mark.django_db(transaction=True)
def test_phone_width_and_dark_mode(
    browser, live_server, django_user_model, http_cookies, test_work_dir, empty_queues
):
    """At 412 px nothing widens the page (tables scroll in their box); dark mode reads dark."""
    from dashboard import samples

    make_staff(django_user_model, "operator", "view_operations_dashboard", "control_workers")
    for _ in range(3):
        health_check_task.apply_async(queue="media")  # a critical banner, a long detail
    samples.collect_sample()

    phone = browser.new_page(viewport={"width": 412, "height": 915}, device_scale_factor=1)
    log_in(phone, live_server, "operator")
    sync_api.expect(phone.locator("#updated")).not_to_have_attribute("data-refreshes", "0")
    wait_for_refreshes(phone, 1)
    widths = phone.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth,"
        " document.querySelector('#queues').scrollWidth]"
    )
    assert widths[0] <= 412 and widths[1] <= 412, widths
    assert widths[2] > 412  # the queue table is wider: it scrolls inside its own box
    phone.screenshot(path=str(test_work_dir / "dashboard-phone.png"), full_page=True)

    dark = browser.new_page(viewport={"width": 1200, "height": 1400}, color_scheme="dark")
    log_in(dark, live_server, "operator")
    sync_api.expect(dark.locator("#banner")).to_have_attribute("data-status", "critical")
    colours = dark.evaluate(
        "() => { const b = getComputedStyle(document.querySelector('#banner'));"
        " const body = getComputedStyle(document.body);"
        " return [b.color, body.backgroundColor]; }"
    )

    def luminance(css: str) -> float:
        inside = css[css.index("(") + 1 : css.index(")")]
        red, green, blue = (float(part) for part in inside.split(",")[:3])
        return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255

    text, background = colours
    assert luminance(background) < 0.3, colours  # the admin's dark theme
    assert luminance(text) > 0.6, colours  # the banner's text is light on it
    dark.screenshot(path=str(test_work_dir / "dashboard-dark.png"), full_page=True)
