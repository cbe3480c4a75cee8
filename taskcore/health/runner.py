"""Run the selected checks in parallel, within one deadline.

Each check runs in a daemon thread: one that hangs (a Redis behind a dead
network, a database that does not answer) is reported critical when the
deadline passes, and never keeps the command or the request from finishing.
"""

from __future__ import annotations

import queue
import threading
import time

from taskcore.redis_clients import broker_url

from . import conf
from .checks import CHECKS, Check
from .context import HealthContext
from .model import CheckResult, HealthReport, critical

GROUPS = ("core", "redis", "tasks")


def select_checks(
    *, groups=("core",), only: list[str] | None = None, readiness: bool = False
) -> list[Check]:
    """Checks of ``groups``; ``only`` narrows to names or name prefixes (``redis``, ``queue``)."""
    selected = [check for check in CHECKS if check.group in groups]
    if readiness:
        selected = [check for check in selected if check.readiness]
    if only:
        wanted = [word.strip() for word in only if word.strip()]

        def matches(check: Check) -> bool:
            return any(
                check.name == word
                or check.name.startswith(word)
                or any(name.startswith(word) for name in check.names())
                for word in wanted
            )

        selected = [check for check in CHECKS if matches(check)]
    return selected


def unknown_names(only: list[str]) -> list[str]:
    return [word for word in only if not select_checks(groups=GROUPS, only=[word])]


def _execute(check: Check, ctx: HealthContext, done: queue.Queue) -> None:
    started = time.perf_counter()
    try:
        outcome = check.run(ctx)
        results = outcome if isinstance(outcome, list) else [outcome]
    except Exception as exc:  # a check reports, it never raises
        results = [
            critical(
                check.name,
                f"{type(exc).__name__}: {exc}",
                "see the detail; when the broker is down, fix that first (check broker)",
            )
        ]
    finally:
        # Each thread has its own database connection: close it, or it leaks.
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - closing is best effort
            pass
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    for result in results:
        if result.latency_ms is None:
            result.latency_ms = elapsed
    done.put((check.name, results))


def run_health(
    app=None,
    *,
    groups=("core",),
    only: list[str] | None = None,
    readiness: bool = False,
    timeout: float | None = None,
) -> HealthReport:
    """Run the checks and return the report; never raises for a failing dependency."""
    if app is None:
        from celery import current_app as app
    timeout = float(timeout or conf.number("HEALTH_TIMEOUT"))
    checks = select_checks(groups=groups, only=only, readiness=readiness)
    ctx = HealthContext(app, timeout)
    report = HealthReport(results=[], broker=broker_url(app))
    done: queue.Queue = queue.Queue()
    for check in checks:
        threading.Thread(
            target=_execute, args=(check, ctx, done), name=f"health-{check.name}", daemon=True
        ).start()
    finished: dict[str, list[CheckResult]] = {}
    # A little grace after the deadline lets checks report their own timeout errors.
    hard_deadline = ctx.deadline + 0.25
    while len(finished) < len(checks):
        remaining = hard_deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            name, results = done.get(timeout=remaining)
        except queue.Empty:
            break
        finished[name] = results
    wanted = [word.strip() for word in only or () if word.strip()]
    for check in checks:
        if check.name in finished:
            results = finished[check.name]
            if wanted and not any(check.name.startswith(word) for word in wanted):
                # Asked for some results of a check (queue.media): only those.
                results = [r for r in results if any(r.name.startswith(w) for w in wanted)]
            report.results.extend(results)
        else:
            report.results.extend(
                critical(
                    name,
                    f"no answer within the {timeout:g}s timeout",
                    "the service behind this check hangs: check the network to it and its "
                    "load; --timeout sets the limit",
                    latency_ms=round(timeout * 1000, 3),
                )
                for name in check.names()
            )
    report.duration_ms = (time.monotonic() - ctx.started) * 1000
    return report
