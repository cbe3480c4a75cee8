"""What the dashboard shows and does; the views are thin wrappers over these functions.

``snapshot()`` builds the page's JSON: the health report (``run_health``, the
checks ``celery_health`` runs: one code path, one set of thresholds) for the
banner and the per-queue status, worker statistics (two control broadcasts that
stop as soon as every worker answered), the throughput counters and charts of
the collector (``dashboard.stats``, ``dashboard.samples``), dead letters grouped
by task and error, beat entries, and work in progress of the queue apps that
are installed. Every part is read independently: one that fails is reported in
``errors`` and the rest of the page still shows.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Max, Min
from django.utils import timezone

from taskcore import contributions
from taskcore.health import run_health
from taskcore.queues import queue_table

from . import samples, stats
from .models import OperatorAction

WORKER_TIMEOUT = 1.5
PAGE_REDIS_TIMEOUT = 2.0
LAST_SEEN_KEY = f"{stats.PREFIX}workers:last_seen"
LAST_SEEN_TTL = 24 * 3600


def _app(app=None):
    if app is None:
        from celery import current_app as app
    return app


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat()


def _guard(errors: dict, part: str, compute, default):
    try:
        return compute()
    except Exception as exc:  # one broken part must not blank the page
        errors[part] = f"{type(exc).__name__}: {exc}"
        return default


# --- queues ----------------------------------------------------------------------
def queue_rows(report, throughput: dict) -> list[dict]:
    rows = []
    for spec in queue_table().specs:
        result = report.get(f"queue.{spec.name}")
        data = result.data if result else {}
        rows.append(
            {
                "name": spec.name,
                "status": result.status.value if result else "critical",
                "detail": result.detail if result else "not checked",
                "remedy": result.remedy if result else "",
                "depth": data.get("depth"),
                "oldest_age_s": data.get("oldest_age_s"),
                # Delayed messages parked until due, and how far past due the first is.
                "scheduled": data.get("scheduled"),
                "most_overdue_s": data.get("most_overdue_s"),
                "consumers": data.get("consumers"),
                "consumer_workers": data.get("consumer_workers") or [],
                "thresholds": data.get("thresholds") or {},
                **(throughput.get(spec.name) or {}),
            }
        )
    return rows


# --- workers ---------------------------------------------------------------------
def worker_rows(app, report, client) -> list[dict]:
    from taskcore.health.monitor import EventStats, worker_snapshot

    census = report.get("workers")
    queues_by_worker = (census.data.get("workers") if census else None) or {}
    if census and census.data.get("count") == 0:
        # Nobody listens: skip the two broadcasts (they would find no one anyway).
        found, running = [], []
    else:
        found, running = worker_snapshot(app, EventStats(), WORKER_TIMEOUT)
    now = time.time()
    if found:
        client.hset(LAST_SEEN_KEY, mapping={row["worker"]: now for row in found})
        client.expire(LAST_SEEN_KEY, LAST_SEEN_TTL)
    last_seen = {
        (k.decode() if isinstance(k, bytes) else k): float(v)
        for k, v in (client.hgetall(LAST_SEEN_KEY) or {}).items()
    }
    rows = []
    answering = {row["worker"] for row in found}
    for row in found:
        rows.append(
            {
                **row,
                "host": row["worker"].split("@", 1)[-1],
                "queues": queues_by_worker.get(row["worker"], []),
                "memory_kb": row.get("max_rss_kb"),
                "last_heartbeat": _iso(last_seen.get(row["worker"], now)),
                "answering": True,
                "running": [task for task in running if task["worker"] == row["worker"]],
            }
        )
    for name, seen in sorted(last_seen.items()):
        if name not in answering and now - seen < 3600:
            rows.append(
                {
                    "worker": name,
                    "host": name.split("@", 1)[-1],
                    "answering": False,
                    "last_heartbeat": _iso(seen),
                    "queues": [],
                    "running": [],
                }
            )
    return rows


# --- dead letters ----------------------------------------------------------------
def dead_letter_groups(limit: int = 50) -> dict:
    from taskcore import deadletters
    from taskcore.models import DeadLetter

    # Parked letters and refused messages first, as the admin and the command do.
    with contextlib.suppress(Exception):  # Redis away: the database's letters still show
        deadletters.store_parked_dead_letters(limit=200)

    waiting = DeadLetter.objects.filter(replayed_at__isnull=True)
    groups = (
        waiting.values("task_name", "exception_type")
        .annotate(
            count=Count("id"),
            last_seen=Max("last_seen"),
            first_seen=Min("first_seen"),
            pk=Max("id"),
        )
        .order_by("-last_seen")[:limit]
    )
    rows = []
    for group in groups:
        sample = DeadLetter.objects.filter(pk=group["pk"]).values(
            "exception_message", "queue", "reason"
        )[0]
        rows.append(
            {
                "task_name": group["task_name"],
                "exception_type": group["exception_type"],
                "count": group["count"],
                "first_seen": _iso(group["first_seen"]),
                "last_seen": _iso(group["last_seen"]),
                "queue": sample["queue"],
                "reason": sample["reason"],
                "message": sample["exception_message"][:300],
            }
        )
    return {"unreplayed": waiting.count(), "groups": rows}


# --- beat ------------------------------------------------------------------------
def _schedule_text(entry) -> str:
    """What an operator reads: "At 03:00 AM, only on Monday UTC", "every 10 seconds"."""
    if entry.crontab is not None:
        # django-celery-beat's own rendering, through cron-descriptor.
        return entry.crontab.human_readable
    return str(entry.interval or entry.solar or entry.clocked)


def next_run_at(schedule, last_run_at, now):
    """When beat will send the entry next, by the schedule's own arithmetic.

    ``schedule.is_due(last_run_at)`` is what beat's tick asks. The database's
    ``last_run_at`` trails beat's memory (the scheduler saves it every few
    minutes), so an entry may look overdue while beat runs it on time. Then an
    interval entry's next run is the next multiple of its interval after
    ``last_run_at`` (beat's own runs keep to it), and a crontab's the next time
    it matches after now.
    """
    due, _ = schedule.is_due(last_run_at or now)
    if not due:
        remaining = schedule.remaining_estimate(last_run_at or now).total_seconds()
        return _whole_second(now + timedelta(seconds=max(0.0, remaining)))
    every = getattr(schedule, "run_every", None)
    if isinstance(every, timedelta) and every.total_seconds() > 0 and last_run_at is not None:
        periods = int((now - last_run_at).total_seconds() // every.total_seconds()) + 1
        return last_run_at + every * periods
    return _whole_second(now + schedule.remaining_estimate(now))


def _whole_second(moment):
    # remaining_estimate() is measured from the schedule's own clock, read a moment
    # after ``now``: 03:29:59.998 is 03:30.
    return (moment + timedelta(milliseconds=500)).replace(microsecond=0)


def beat_entries() -> list[dict]:
    from django_celery_beat.models import PeriodicTask

    now = timezone.now()
    rows = []
    for entry in PeriodicTask.objects.select_related(
        "interval", "crontab", "solar", "clocked"
    ).order_by("name"):
        next_run = None
        if entry.enabled and not (entry.one_off and entry.total_run_count):
            try:
                next_run = next_run_at(entry.schedule, entry.last_run_at, now)
            except Exception:  # noqa: S110 - an odd schedule shows no next run, not an error
                pass
        rows.append(
            {
                "name": entry.name,
                "task": entry.task,
                "enabled": entry.enabled,
                "schedule": _schedule_text(entry),
                "queue": entry.queue or "",
                "last_run_at": _iso(entry.last_run_at),
                "next_run_at": _iso(next_run),
                "total_run_count": entry.total_run_count,
            }
        )
    return rows


# --- work in progress ------------------------------------------------------------
def work_in_progress(limit: int = 20) -> dict:
    """Campaigns, exports, uploads under way: what the installed apps registered."""
    return contributions.work_in_progress(limit)


def recent_actions(limit: int = 10) -> list[dict]:
    return [
        {
            "at": _iso(action.created_at),
            "user": action.username,
            "action": action.get_action_display(),
            "target": action.target,
            "succeeded": action.succeeded,
            "outcome": action.outcome[:300],
        }
        for action in OperatorAction.objects.all()[:limit]
    ]


# --- the page's JSON -------------------------------------------------------------
def banner(report) -> dict:
    problems = report.problems()
    if not problems:
        return {"status": "ok", "check": None, "detail": "all checks pass", "remedy": ""}
    worst = problems[0]
    return {
        "status": worst.status.value,
        "check": worst.name,
        "detail": worst.detail,
        "remedy": worst.remedy,
        "others": len(problems) - 1,
    }


def snapshot(app=None, *, range_name: str = "hour", with_series: bool = True) -> dict:
    app = _app(app)
    started = time.perf_counter()
    errors: dict[str, str] = {}
    report = run_health(app)
    # A page must not hang on a Redis that does not answer: a short-lived client.
    client = stats.stats_redis(timeout=PAGE_REDIS_TIMEOUT)
    throughput = _guard(errors, "throughput", lambda: stats.read(client, queue_table().names), {})
    data = {
        "generated_at": _iso(time.time()),
        "status": report.status.value,
        "banner": banner(report),
        "checks": [
            {
                "name": result.name,
                "status": result.status.value,
                "detail": result.detail,
                "remedy": result.remedy,
            }
            for result in report.results
        ],
        "queues": queue_rows(report, throughput),
        "workers": _guard(errors, "workers", lambda: worker_rows(app, report, client), []),
        "dead_letters": _guard(
            errors, "dead_letters", dead_letter_groups, {"unreplayed": None, "groups": []}
        ),
        "beat": _guard(errors, "beat", beat_entries, []),
        "work": _guard(errors, "work", work_in_progress, {}),
        "actions": _guard(errors, "actions", recent_actions, []),
    }
    if with_series:
        data["series"] = _guard(errors, "series", lambda: samples.series(client, range_name), None)
    data["errors"] = errors
    data["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return data


# --- actions ---------------------------------------------------------------------
class ActionError(Exception):
    """An action refused before anything was sent; the message says why."""


WORKER_ACTIONS = {
    OperatorAction.Kind.SHUTDOWN: "shutdown",
    OperatorAction.Kind.POOL_GROW: "pool_grow",
    OperatorAction.Kind.POOL_SHRINK: "pool_shrink",
    OperatorAction.Kind.CANCEL_CONSUMER: "cancel_consumer",
    OperatorAction.Kind.ADD_CONSUMER: "add_consumer",
}


def _audit(user, action: str, target: str, arguments: dict, succeeded: bool, outcome: str):
    return OperatorAction.objects.create(
        user=user if getattr(user, "pk", None) else None,
        username=getattr(user, "get_username", lambda: "")() or "",
        action=action,
        target=target[:255],
        arguments=arguments,
        succeeded=succeeded,
        outcome=outcome,
    )


def control_worker(user, action: str, worker: str, queue: str = "", app=None) -> OperatorAction:
    """Send one control command to one worker, wait for its answer, and audit it."""
    app = _app(app)
    if action not in WORKER_ACTIONS:
        raise ActionError(f"unknown action {action!r}")
    if not worker:
        raise ActionError("no worker named")
    arguments: dict = {}
    if action in (OperatorAction.Kind.CANCEL_CONSUMER, OperatorAction.Kind.ADD_CONSUMER):
        if queue not in queue_table().by_name:
            raise ActionError(f"unknown queue {queue!r}")
        arguments["queue"] = queue
    if action in (OperatorAction.Kind.POOL_GROW, OperatorAction.Kind.POOL_SHRINK):
        arguments["n"] = 1
    try:
        replies = app.control.broadcast(
            WORKER_ACTIONS[action],
            arguments=arguments,
            destination=[worker],
            reply=True,
            timeout=2.0,
        )
    except Exception as exc:
        return _audit(user, action, worker, arguments, False, f"{type(exc).__name__}: {exc}")
    answer = {}
    for reply in replies or []:
        answer.update(reply)
    if worker not in answer:
        text = "no answer from the worker within 2 s"
        if action == OperatorAction.Kind.SHUTDOWN:
            # A worker shutting down may stop before replying: the request went out.
            text += " (a worker shutting down may not answer)"
        return _audit(user, action, worker, arguments, action == "shutdown", text)
    reply = answer[worker] or {}
    succeeded = "error" not in reply
    outcome = str(reply.get("ok") or reply.get("error") or reply)
    return _audit(user, action, worker, arguments, succeeded, outcome)


def replay_group(user, task_name: str, exception_type: str, app=None) -> OperatorAction:
    """Replay every unreplayed dead letter of one (task, error) group, and audit it."""
    from taskcore.deadletters import replay_many
    from taskcore.models import DeadLetter

    letters = list(
        DeadLetter.objects.filter(
            replayed_at__isnull=True, task_name=task_name, exception_type=exception_type
        )
    )
    target = f"{task_name} / {exception_type}"
    if not letters:
        return _audit(user, OperatorAction.Kind.REPLAY, target, {}, False, "nothing to replay")
    outcome = replay_many(letters, app)
    text = f"replayed {len(outcome.replayed)} of {len(letters)}"
    if outcome.failed:
        text += "; " + "; ".join(problem for _, problem in outcome.failed[:5])
    return _audit(
        user,
        OperatorAction.Kind.REPLAY,
        target,
        {"task_ids": [task_id for _, task_id in outcome.replayed][:100]},
        bool(outcome.replayed) and not outcome.failed,
        text,
    )
