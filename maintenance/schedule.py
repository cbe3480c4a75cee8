"""The default beat schedule, stored in the database (django-celery-beat).

``install_default_schedule()`` is idempotent: entries are found by name and
updated, never duplicated, so the migration and ``manage.py
install_beat_schedule`` can both run it any number of times. Operators edit
the entries in the admin (Periodic tasks); a re-install resets only the
fields it owns (task, schedule, queue, expiry), and keeps ``enabled`` as the
operator left it.

Every entry has ``expire_seconds``: when beat or the workers were stalled, a
message that missed its window expires instead of piling up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from taskcore.queues import queue_table

from .cleanups import all_cleanups


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    expire_seconds: int
    every_seconds: int | None = None
    crontab: tuple[str, str] | None = None  # (minute, hour)
    args: tuple = ()


def default_entries() -> tuple[Entry, ...]:
    """The default schedule: fixed entries, then one nightly entry per registered cleanup."""
    return FIXED_ENTRIES + tuple(
        Entry(
            f"cleanup: {name}",
            "maintenance.tasks.run_cleanup",
            expire_seconds=3600,
            crontab=(str(5 * index), "3"),
            args=(name,),
        )
        for index, name in enumerate(sorted(all_cleanups()))
    )


FIXED_ENTRIES: tuple[Entry, ...] = (
    Entry(
        "health check",
        "maintenance.tasks.health_check_task",
        expire_seconds=50,
        every_seconds=60,
    ),
    Entry(
        "email: resume stalled deliveries",
        "notifications.tasks.resume_stalled_deliveries",
        expire_seconds=240,
        every_seconds=300,
    ),
    Entry(
        "dashboard: collect sample",
        "dashboard.tasks.collect_sample",
        expire_seconds=10,
        every_seconds=10,
    ),
    Entry(
        "media: fail stale uploads",
        "media.tasks.fail_stale_uploads",
        expire_seconds=300,
        every_seconds=600,
    ),
    Entry(
        "outbox relay",
        "taskcore.tasks.relay_outbox",
        expire_seconds=50,
        every_seconds=60,
    ),
)


def install_default_schedule(apps=None) -> dict[str, str]:
    """Create or update the default entries; return {name: 'created'|'updated'}.

    ``apps`` is the migration state's registry when called from a migration.
    """
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")

    outcome = {}
    for entry in default_entries():
        schedule = {"interval": None, "crontab": None}
        if entry.every_seconds:
            schedule["interval"], _ = IntervalSchedule.objects.get_or_create(
                every=entry.every_seconds, period="seconds"
            )
        else:
            minute, hour = entry.crontab
            schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=minute,
                hour=hour,
                day_of_week="*",
                day_of_month="*",
                month_of_year="*",
                timezone="UTC",
            )
        values = {
            "task": entry.task,
            # The queue the task is routed to: queue names live in the queue table only.
            "queue": queue_table().queue_for_task(entry.task),
            "expire_seconds": entry.expire_seconds,
            "args": json.dumps(list(entry.args)),
            **schedule,
        }
        _, created = PeriodicTask.objects.update_or_create(name=entry.name, defaults=values)
        outcome[entry.name] = "created" if created else "updated"
    return outcome
