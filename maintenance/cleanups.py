"""Cleanups run on the maintenance queue: each idempotent, batched, and reporting what it removed.

A cleanup never holds a long transaction: rows are deleted by primary key in
batches of ``BATCH_SIZE``, each batch its own transaction, so a cleanup of a
million rows neither locks the table for minutes nor loses its progress when
it is interrupted (the next run continues).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from taskcore import contributions

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000


@dataclass
class CleanupReport:
    name: str
    removed: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def retention_days(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def delete_in_batches(queryset, batch_size: int = BATCH_SIZE) -> int:
    """Delete a queryset's rows by primary key, ``batch_size`` per transaction."""
    model = queryset.model
    removed = 0
    while True:
        with transaction.atomic():
            pks = list(queryset.values_list("pk", flat=True)[:batch_size])
            if not pks:
                return removed
            model._default_manager.filter(pk__in=pks).delete()
            removed += len(pks)


# --- the cleanups -----------------------------------------------------------------


def expired_sessions(report: CleanupReport) -> None:
    from django.contrib.sessions.models import Session

    report.removed["sessions"] = delete_in_batches(
        Session.objects.filter(expire_date__lt=timezone.now())
    )


def old_dead_letters(report: CleanupReport) -> None:
    from taskcore.models import DeadLetter

    days = retention_days("DEAD_LETTER_RETENTION_DAYS", 30)
    cutoff = timezone.now() - timedelta(days=days)
    report.removed["dead_letters"] = delete_in_batches(
        DeadLetter.objects.filter(last_seen__lt=cutoff)
    )
    report.details.append(f"kept dead letters seen in the last {days} days")


def published_outbox_rows(report: CleanupReport) -> None:
    from taskcore.models import OutboxMessage

    days = retention_days("OUTBOX_RETENTION_DAYS", 7)
    cutoff = timezone.now() - timedelta(days=days)
    # Unpublished rows are never removed: they are work not yet sent.
    report.removed["outbox_messages"] = delete_in_batches(
        OutboxMessage.objects.filter(published_at__isnull=False, published_at__lt=cutoff)
    )


def old_effect_claims(report: CleanupReport) -> None:
    from taskcore.models import EffectClaim

    # Claims only need to outlive any redelivery of their task (hours at most).
    days = retention_days("EFFECT_CLAIM_RETENTION_DAYS", 30)
    cutoff = timezone.now() - timedelta(days=days)
    report.removed["effect_claims"] = delete_in_batches(
        EffectClaim.objects.filter(created_at__lt=cutoff)
    )


def expired_task_results(report: CleanupReport) -> None:
    from celery import current_app

    backend = current_app.backend
    if type(backend).__name__.startswith("Redis"):
        report.details.append("Redis result backend: results expire by TTL (result_expires)")
        report.removed["task_results"] = 0
        return
    backend.cleanup()  # database backends delete results past result_expires
    report.details.append(f"{type(backend).__name__}.cleanup() ran")
    report.removed["task_results"] = 0


def old_log_files(report: CleanupReport) -> None:
    """Rotated or compressed log files older than LOG_RETENTION_DAYS (live files are kept)."""
    days = retention_days("LOG_RETENTION_DAYS", 30)
    cutoff = time.time() - days * 86400
    log_dir = Path(settings.LOG_DIR)
    removed = 0
    for path in sorted(log_dir.glob("*.log.*")):
        if path.suffix == ".lock" or not path.is_file():
            continue
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    report.removed["log_files"] = removed


def _contributed(name: str, cleanup: contributions.Cleanup) -> Callable[[CleanupReport], None]:
    """A cleanup another app registered (taskcore.contributions), reporting what it removed."""

    def run(report: CleanupReport) -> None:
        result = cleanup()
        if isinstance(result, dict):
            report.removed.update(
                {key: int(value) for key, value in result.items() if isinstance(value, int)}
            )
        elif isinstance(result, int):
            report.removed[name] = result

    return run


OWN_CLEANUPS: dict[str, Callable[[CleanupReport], None]] = {
    "expired_sessions": expired_sessions,
    "old_dead_letters": old_dead_letters,
    "published_outbox_rows": published_outbox_rows,
    "old_effect_claims": old_effect_claims,
    "expired_task_results": expired_task_results,
    "old_log_files": old_log_files,
}


def all_cleanups() -> dict[str, Callable[[CleanupReport], None]]:
    """This app's cleanups and those the installed apps registered, by name."""
    contributed = {
        name: _contributed(name, cleanup)
        for name, cleanup in contributions.registered_cleanups().items()
    }
    return {**contributed, **OWN_CLEANUPS}


def run_cleanup(name: str) -> CleanupReport:
    cleanups = all_cleanups()
    if name not in cleanups:
        from taskcore.base import PermanentError

        raise PermanentError(f"unknown cleanup {name!r}; known: {', '.join(sorted(cleanups))}")
    report = CleanupReport(name)
    started = time.perf_counter()
    cleanups[name](report)
    report.seconds = round(time.perf_counter() - started, 3)
    logger.info("cleanup %s removed %s", name, report.removed)
    return report
