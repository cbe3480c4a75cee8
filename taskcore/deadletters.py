"""Dead letters: every task that fails for good is kept, and can be replayed.

Recorded by a subscriber of the pipeline's ``FAILED`` event (taskcore.pipeline),
in the worker process that ran the task or, for a hard time limit or a lost
child, in the worker's main process: whatever the cause (a permanent error,
retries exhausted, a time limit, a message whose worker died on every delivery)
the same path keeps it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import current_app
from django.utils import timezone

from . import pipeline
from .redis_clients import state_redis
from .secrets import MASK, mask_text

logger = logging.getLogger("celery.lifecycle.task")

SENSITIVE_ARGUMENT_WORDS = ("password", "secret", "token", "api_key", "apikey", "credential")


class ReplayError(Exception):
    """A dead letter that cannot be replayed; the message says why."""


def mask_arguments(value):
    """Return (masked value, whether anything was masked).

    Values under sensitive keys are replaced, and passwords inside URLs masked.
    """
    if isinstance(value, dict):
        masked_any = False
        result = {}
        for key, item in value.items():
            if any(word in str(key).lower() for word in SENSITIVE_ARGUMENT_WORDS):
                result[key], masked_any = MASK, True
            else:
                result[key], changed = mask_arguments(item)
                masked_any = masked_any or changed
        return result, masked_any
    if isinstance(value, list | tuple):
        items = [mask_arguments(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, str):
        masked = mask_text(value)
        return masked, masked != value
    return value, False


def _jsonable(value):
    """Arguments arrive JSON-decoded; anything else (a bad producer) is stored as text."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


def classify_failure(exception: BaseException, *, retries: int, max_retries: int | None) -> str:
    from .base import RedeliveredTooOften, is_transient
    from .models import DeadLetter

    if isinstance(exception, RedeliveredTooOften):
        return DeadLetter.Reason.REDELIVERED_TOO_OFTEN
    if isinstance(exception, TimeLimitExceeded | SoftTimeLimitExceeded):
        return DeadLetter.Reason.TIME_LIMIT
    if is_transient(exception):
        return DeadLetter.Reason.RETRIES_EXHAUSTED
    return DeadLetter.Reason.PERMANENT_ERROR


def dead_letter_values(failed: pipeline.TaskEvent) -> dict:
    """The stored fields of a dead letter: JSON-able, arguments and texts masked."""
    args, args_masked = mask_arguments(_jsonable(list(failed.args or [])))
    kwargs, kwargs_masked = mask_arguments(_jsonable(dict(failed.kwargs or {})))
    return {
        "task_name": failed.name,
        "queue": failed.queue,
        "args": args,
        "kwargs": kwargs,
        "arguments_masked": args_masked or kwargs_masked,
        "reason": classify_failure(
            failed.exception, retries=failed.retries, max_retries=failed.max_retries
        ),
        "exception_type": type(failed.exception).__name__,
        "exception_message": mask_text(str(failed.exception))[:10_000],
        "traceback": mask_text(failed.traceback or "")[:50_000],
        "attempts": failed.retries + 1,
        "hostname": failed.hostname or "",
    }


def store_dead_letter(task_id: str, values: dict):
    from .models import DeadLetter

    # An existing row (the same task failed again, e.g. redelivered after a crash)
    # is locked and overwritten: Django's update_or_create, in one transaction.
    return DeadLetter.objects.update_or_create(task_id=task_id, defaults=values)[0]


# --- parked dead letters: the database was away when the task failed ----------
#
# The task's message is acknowledged once it has failed, so a dead letter that
# cannot be written is the only trace of that work. It waits in the state Redis
# (taskcore.redis_clients.state_redis: Redis also with RabbitMQ as the broker) until
# store_parked_dead_letters() moves it into the database: run by the outbox relay
# (worker start-up, beat every minute) and by ``manage.py dead_letters``.

PARKED_KEY = "taskcore:deadletters:parked"


def park_dead_letter(task_id: str, values: dict) -> None:
    state_redis().lpush(PARKED_KEY, json.dumps({"task_id": task_id, "values": values}))


def store_parked_dead_letters(limit: int = 1000) -> int:
    """Move parked dead letters into the database, oldest first; return how many.

    Each is removed from Redis only after its row is committed (storing is
    idempotent by task id), so a crash in between stores it twice, never zero times.
    """
    client = state_redis()
    stored = 0
    while stored < limit:
        raw = client.lindex(PARKED_KEY, -1)
        if raw is None:
            break
        try:
            parked = json.loads(raw)
            store_dead_letter(parked["task_id"], parked["values"])
        except (ValueError, KeyError, TypeError):
            logger.critical("unreadable parked dead letter kept aside: %r", raw[:2000])
            client.lpush(PARKED_KEY + ":unreadable", raw)
        client.lrem(PARKED_KEY, -1, raw)
        stored += 1
    return stored


def keep_failed_task(failed: pipeline.TaskEvent) -> None:
    """The pipeline's FAILED subscriber: store the dead letter, or park it in Redis."""
    values = dead_letter_values(failed)
    try:
        store_dead_letter(failed.task_id, values)
        return
    except Exception:
        logger.error(
            "could not store dead letter for %s[%s] in the database; parking it in Redis",
            failed.name,
            failed.task_id,
            exc_info=True,
        )
    try:
        park_dead_letter(failed.task_id, values)
    except Exception:
        # Database and Redis away: the log line below still holds everything needed.
        logger.critical(
            "could not store or park dead letter for %s[%s] args=%r kwargs=%r",
            failed.name,
            failed.task_id,
            values["args"],
            values["kwargs"],
            exc_info=True,
        )


# --- replay ------------------------------------------------------------------


def replay(letter, app=None) -> str:
    """Send the dead letter's task again with its original routing; return the new task id.

    Raises ReplayError naming the problem; the record is marked only after the
    broker accepted the message, so a failed replay loses nothing.
    """
    app = app or current_app
    if letter.arguments_masked:
        raise ReplayError(
            f"dead letter {letter.pk}: its arguments held secrets that were masked; "
            "send the task again from the application instead"
        )
    if letter.task_name not in app.tasks:
        raise ReplayError(f"dead letter {letter.pk}: unknown task {letter.task_name!r}")
    if not isinstance(letter.args, list) or not isinstance(letter.kwargs, dict):
        raise ReplayError(
            f"dead letter {letter.pk}: stored arguments are malformed "
            f"(args must be a list, kwargs an object; got {type(letter.args).__name__}, "
            f"{type(letter.kwargs).__name__})"
        )
    options = {"queue": letter.queue} if letter.queue else {}
    try:
        result = app.send_task(
            letter.task_name,
            args=letter.args,
            kwargs=letter.kwargs,
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 1,
            },
            **options,
        )
    except Exception as exc:
        raise ReplayError(
            f"dead letter {letter.pk}: the broker did not accept the message "
            f"({type(exc).__name__}: {mask_text(str(exc))}); nothing was changed, try again"
        ) from exc
    type(letter).objects.filter(pk=letter.pk).update(
        replayed_at=timezone.now(),
        replayed_task_id=result.id,
        replay_count=letter.replay_count + 1,
    )
    return result.id


@dataclass
class ReplayOutcome:
    replayed: list[tuple[int, str]]
    failed: list[tuple[int, str]]


def replay_many(letters: Iterable, app=None) -> ReplayOutcome:
    outcome = ReplayOutcome([], [])
    for letter in letters:
        try:
            outcome.replayed.append((letter.pk, replay(letter, app)))
        except ReplayError as exc:
            outcome.failed.append((letter.pk, str(exc)))
    return outcome
