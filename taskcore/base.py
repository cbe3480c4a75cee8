"""The base class of every project task: one retry policy for the whole project.

Transient errors (the network, the broker, a database that is briefly away,
SMTP 4xx, our ``TransientError``) retry with exponential backoff and full
jitter, up to the queue table's ``max_retries``. Everything else fails at once:
retrying a validation error only delays the same failure.
"""

from __future__ import annotations

import os
import random
import smtplib
import socket

from celery import Task
from django.db import InterfaceError, OperationalError
from django.db.models import Model
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from admin_backend import queues


class TransientError(Exception):
    """Raise from a service when trying again later may succeed."""


class PermanentError(Exception):
    """Raise from a service when trying again can never succeed (bad input, corrupt file)."""


class RedeliveredTooOften(PermanentError):
    """The message came back after its worker died, more times than allowed."""


# Deliveries of one message whose worker died (task_reject_on_worker_lost
# requeues it) before it goes to dead letters instead of running again.
MAX_DELIVERIES = int(os.environ.get("CELERY_MAX_DELIVERIES", "3"))
DELIVERY_COUNT_TTL = 24 * 3600


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,  # includes ConnectionRefusedError, ConnectionResetError
    TimeoutError,
    socket.timeout,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerOperationalError,
    OperationalError,  # database unavailable, lock timeouts
    InterfaceError,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
)


def is_transient(exc: BaseException) -> bool:
    """True when the error may go away by itself; SMTP replies decide by their code."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, TRANSIENT_ERRORS)


def backoff_delay(
    retries: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**retries)].

    Full jitter spreads a burst of failures over the whole window, so a broker or
    SMTP server that comes back is not hit by every retry at the same second.
    """
    ceiling = min(cap, base * (2**retries))
    return (rng or random).uniform(0, ceiling)


def reject_model_instances(values) -> None:
    for value in values:
        if isinstance(value, Model):
            raise TypeError(
                f"task arguments must be ids and primitives, not model instances: "
                f"pass {type(value).__name__}.pk ({value.pk!r}) instead"
            )


class BaseTask(Task):
    """Retry transient errors with backoff; fail permanent ones at once."""

    abstract = True
    # Per-task overrides of the queue table's backoff (seconds); None: the queue's.
    backoff_base: float | None = None
    backoff_cap: float | None = None

    def apply_async(self, args=None, kwargs=None, **options):
        reject_model_instances(args or ())
        reject_model_instances((kwargs or {}).values())
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args, **kwargs):
        try:
            if not self.request.called_directly:
                self._refuse_endless_redelivery()
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if self.request.called_directly:
                raise
            retries_left = self.max_retries is None or self.request.retries < self.max_retries
            if not (is_transient(exc) and retries_left):
                # Failing for good: let the task record it before the result is visible.
                self.before_final_failure(exc, args, kwargs)
                raise
            spec = queues.spec_for_task(self.name)
            countdown = backoff_delay(
                self.request.retries,
                base=self.backoff_base
                if self.backoff_base is not None
                else spec.retry_backoff_base,
                cap=self.backoff_cap if self.backoff_cap is not None else spec.retry_backoff_cap,
            )
            # RabbitMQ quorum queues: native delayed delivery counts whole seconds and
            # kombu raises for 0 < countdown < 1 (the retry would be rejected and lost).
            if 0 < countdown < 1 and str(self.app.conf.broker_url).split(":", 1)[0] in (
                "amqp",
                "amqps",
                "pyamqp",
            ):
                countdown = 1
            # retry() raises Retry, or re-raises exc once max_retries is reached.
            raise self.retry(exc=exc, countdown=countdown) from exc

    def before_final_failure(self, exc: BaseException, args: tuple, kwargs: dict) -> None:
        """Called in the worker when this run fails for good (no retry follows).

        Unlike Celery's ``on_failure``, it runs before the failure is stored, so a
        caller that sees the failed result also sees what the task recorded.
        Override to mark a record failed; the default does nothing.
        """

    def _refuse_endless_redelivery(self) -> None:
        """Count deliveries of redelivered messages; past MAX_DELIVERIES, fail for good.

        Only a message that came back (kombu marks it ``redelivered``) is counted,
        so the normal path costs nothing. The count lives in the cache (Redis)
        because the worker that saw the earlier deliveries is dead.
        """
        delivery = self.request.delivery_info or {}
        if not delivery.get("redelivered"):
            return
        from django.core.cache import cache

        key = f"taskcore:deliveries:{self.request.id}"
        cache.add(key, 1, timeout=DELIVERY_COUNT_TTL)  # the first delivery was not counted
        deliveries = cache.incr(key)
        if deliveries > MAX_DELIVERIES:
            raise RedeliveredTooOften(
                f"delivered {deliveries} times and its worker died each time "
                f"(limit {MAX_DELIVERIES}); not running it again"
            )
