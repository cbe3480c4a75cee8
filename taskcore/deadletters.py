"""Dead letters: every task that fails for good is kept, and can be replayed.

Recorded by a subscriber of the pipeline's ``FAILED`` event (taskcore.pipeline),
in the worker process that ran the task or, for a hard time limit or a lost
child, in the worker's main process: whatever the cause (a permanent error,
retries exhausted, a time limit, a message whose worker died on every delivery)
the same path keeps it.

A message that is not a valid task message is kept the same way (reason
``refused``, the message as received in ``message``): from the pipeline's
``REJECTED`` event (``taskcore.consumer``), or from the lists where the Redis
transport sets aside what it could not hand out (``taskcore.reliable_redis``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import current_app
from django.utils import timezone

from . import arguments, pipeline
from .redis_clients import broker_key_prefix, broker_redis, broker_url, is_redis_url, state_redis
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

    Also the entries the Redis transport refused (:func:`store_refused_entries`).

    Each is removed from Redis only after its row is committed (storing is
    idempotent by task id), so a crash in between stores it twice, never zero times.
    """
    stored = store_refused_entries(limit)
    client = state_redis()
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
    _keep(failed.task_id, dead_letter_values(failed))


def _keep(task_id: str, values: dict) -> None:
    """Store a dead letter, or park it in Redis when the database is away."""
    try:
        store_dead_letter(task_id, values)
        return
    except Exception:
        logger.error(
            "could not store dead letter for %s[%s] in the database; parking it in Redis",
            values["task_name"],
            task_id,
            exc_info=True,
        )
    try:
        park_dead_letter(task_id, values)
    except Exception:
        # Database and Redis away: the log line below still holds everything needed.
        logger.critical(
            "could not store or park dead letter for %s[%s] args=%.2000r kwargs=%.2000r",
            values["task_name"],
            task_id,
            values["args"],
            values["kwargs"],
            exc_info=True,
        )


# --- refused messages -------------------------------------------------------------

REFUSED_KEPT_CHARS = 65_536
NOT_A_TASK = "(not a task message)"


def _recover(raw: str) -> tuple[str, str | None, list | None, dict | None]:
    """Task name, id, args and kwargs of a raw kombu message, as far as it holds them.

    args/kwargs are None when the body is not ``[args, kwargs, options]``.
    """
    try:
        envelope = json.loads(raw)
    except ValueError:
        return NOT_A_TASK, None, None, None
    if not isinstance(envelope, dict):
        return NOT_A_TASK, None, None, None
    headers = envelope.get("headers") if isinstance(envelope.get("headers"), dict) else {}
    name = headers.get("task") if isinstance(headers.get("task"), str) else NOT_A_TASK
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    with contextlib.suppress(Exception):  # whatever is wrong with it, the raw text is kept
        body = envelope["body"]
        properties = envelope.get("properties") or {}
        if properties.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        decoded = json.loads(body)
        if isinstance(decoded[0], list) and isinstance(decoded[1], dict):
            return name, task_id, decoded[0], decoded[1]
    return name, task_id, None, None


def refused_values(queue: str, reason: str, raw: str) -> tuple[str, dict]:
    """(task id, stored fields) of a refused message; ``raw`` is the message as queued."""
    name, task_id, args, kwargs = _recover(raw)
    args, args_masked = mask_arguments(_jsonable(args or []))
    kwargs, kwargs_masked = mask_arguments(_jsonable(kwargs or {}))
    if not task_id:  # the same bytes refused twice in a queue: one record
        digest = hashlib.sha256(f"{queue}\n{raw}".encode("utf-8", "replace")).hexdigest()
        task_id = f"refused-{digest[:40]}"
    return task_id[:255], {
        "task_name": name[:255],
        "queue": queue[:100],
        "args": args,
        "kwargs": kwargs,
        "arguments_masked": args_masked or kwargs_masked,
        "reason": "refused",
        "exception_type": "RefusedMessage",
        "exception_message": mask_text(reason)[:10_000],
        "traceback": "",
        "attempts": 1,
        "hostname": "",
        "message": mask_text(raw[:REFUSED_KEPT_CHARS]),
    }


def _message_text(message) -> str:
    """A kombu message as it was queued (Redis), or its parts (other brokers)."""
    raw = getattr(message, "_raw", None)
    try:
        if isinstance(raw, dict):
            return json.dumps(raw)
        body = message.body
        return json.dumps(
            {
                "headers": message.headers,
                "properties": message.properties,
                "content-type": message.content_type,
                "body": body.decode("utf-8", "replace") if isinstance(body, bytes) else body,
            },
            default=repr,
        )
    except Exception:
        return repr(raw if raw is not None else message)[:REFUSED_KEPT_CHARS]


def keep_refused_message(rejected: pipeline.TaskEvent) -> None:
    """The pipeline's REJECTED subscriber: a refused message becomes a dead letter."""
    detail = rejected.detail or {}
    message = detail.get("message")
    reason = str(rejected.exception or detail.get("reason") or "refused")
    raw = _message_text(message) if message is not None else ""
    task_id, values = refused_values(rejected.queue, reason, raw)
    _keep(task_id, values)


def store_refused_entries(limit: int = 1000) -> int:
    """Store what the Redis transport set aside (``taskcore.refused.<queue>``); return how many.

    As for parked letters, an entry leaves its list only after its row is committed.
    """
    from .queues import queue_table
    from .reliable_redis import refused_key

    if not is_redis_url(broker_url()):
        return 0
    prefix = broker_key_prefix()
    client = broker_redis()
    stored = 0
    for queue in queue_table().names:
        key = prefix + refused_key(queue)
        while stored < limit:
            entry = client.lindex(key, -1)
            if entry is None:
                break
            text = entry.decode("utf-8", "replace")
            try:
                record = json.loads(text)
                reason, raw = record["refused_reason"], record["message"]
            except (ValueError, KeyError, TypeError):
                reason, raw = "not a kombu message", text
            store_dead_letter(*refused_values(queue, reason, raw))
            client.lrem(key, -1, entry)
            stored += 1
    return stored


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
    if arguments.registered_task(app, letter.task_name) is None:
        raise ReplayError(f"dead letter {letter.pk}: unknown task {letter.task_name!r}")
    if letter.reason == "refused" and _recover(letter.message)[2] is None:
        raise ReplayError(
            f"dead letter {letter.pk}: a refused message whose arguments could not be read "
            "(its body is not [args, kwargs, options]); nothing to replay"
        )
    if not isinstance(letter.args, list) or not isinstance(letter.kwargs, dict):
        raise ReplayError(
            f"dead letter {letter.pk}: stored arguments are malformed "
            f"(args must be a list, kwargs an object; got {type(letter.args).__name__}, "
            f"{type(letter.kwargs).__name__})"
        )
    try:
        args, kwargs = arguments.checked(app.tasks[letter.task_name], letter.args, letter.kwargs)
    except arguments.InvalidTaskArguments as exc:
        raise ReplayError(f"dead letter {letter.pk}: {exc}") from None
    options = {"queue": letter.queue} if letter.queue else {}
    try:
        result = app.send_task(
            letter.task_name,
            args=args,
            kwargs=kwargs,
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
