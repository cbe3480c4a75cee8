"""The base class of every project task: one retry policy for the whole project.

Transient errors (the network, the broker, a database that is briefly away,
SMTP 4xx, our ``TransientError``) retry with exponential backoff and full
jitter, up to the queue table's ``max_retries``. Everything else fails at once:
retrying a validation error only delays the same failure.

The backoff is Celery's: its task options ``retry_backoff`` (factor, seconds),
``retry_backoff_max`` and ``retry_jitter``, set per queue by the queue table's
annotations (``taskcore.queues``), and its ``get_exponential_backoff_interval``.
What to retry is ours: Celery's ``autoretry_for`` decides by exception class
only, and an SMTP reply is transient or not by its code (4xx or 5xx).
A run that fails for good is handed to the pipeline (``FAILED``) before its
result is stored.
"""

from __future__ import annotations

import smtplib
import socket

from celery import Task
from celery.exceptions import TaskPredicate
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError
from django.db.models import Model
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import arguments, pipeline
from .brokers import describe_connection_error


class TransientError(Exception):
    """Raise from a service when trying again later may succeed."""


class PermanentError(Exception):
    """Raise from a service when trying again can never succeed (bad input, corrupt file)."""


class TaskNotSent(BrokerOperationalError):
    """The broker or the result backend did not take the task in time: nothing was sent.

    A kombu ``OperationalError`` (what Celery raises for a broker that is away), with
    the cause in words; a caller waits about ``CELERY_CALLER_TIMEOUT`` before it.
    """


class RedeliveredTooOften(PermanentError):
    """The message came back after its worker died, more times than allowed."""


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
    # Celery's retry options (the queue table's annotations set them per queue):
    # backoff factor and cap in seconds, full jitter.
    retry_backoff: int = 2
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    # Celery's own send-time signature check: taskcore.arguments checks names and
    # types in one pass (apply_async below), so Celery's would bind them twice.
    typing = False

    def apply_async(self, args=None, kwargs=None, **options):
        reject_model_instances(args or ())
        reject_model_instances((kwargs or {}).values())
        args, kwargs = arguments.check_message(self, args, kwargs, options.get("queue"))
        try:
            return super().apply_async(args, kwargs, **options)
        except (BrokerOperationalError, RedisError, OSError) as exc:
            raise TaskNotSent(f"{self.name} not sent: {describe_connection_error(exc)}") from exc
        except RuntimeError as exc:  # Celery's "Retry limit exceeded ... result store"
            if "result store" not in str(exc):
                raise
            raise TaskNotSent(
                f"{self.name} not sent: the result backend did not answer in time "
                f"({describe_connection_error(exc.__context__ or exc)})"
            ) from exc

    def __call__(self, *args, **kwargs):
        try:
            if not self.request.called_directly:
                self._refuse_endless_redelivery()
                # A message from elsewhere (send_task, a replay) gets the same check.
                args, kwargs = arguments.checked(self, args, kwargs)
            return super().__call__(*args, **kwargs)
        except TaskPredicate:  # Retry, Ignore, Reject: Celery's own control flow
            raise
        except Exception as exc:
            if self.request.called_directly:
                raise
            retries_left = self.max_retries is None or self.request.retries < self.max_retries
            if not (is_transient(exc) and retries_left):
                # Failing for good: subscribers record it before the result is visible.
                pipeline.failed_for_good(self, exc, args, kwargs)
                raise
            # retry() raises Retry, or re-raises exc once max_retries is reached.
            raise self.retry(exc=exc, countdown=self.retry_countdown()) from exc

    def retry_countdown(self) -> int | float | None:
        """Seconds before the next attempt: Celery's exponential backoff with full jitter.

        None (``retry_backoff`` off): Celery's ``default_retry_delay``.
        """
        if not self.retry_backoff:
            return None
        countdown = get_exponential_backoff_interval(
            factor=int(max(1, self.retry_backoff)),
            retries=self.request.retries,
            maximum=self.retry_backoff_max,
            full_jitter=self.retry_jitter,
        )
        # RabbitMQ quorum queues: native delayed delivery counts whole seconds and
        # kombu raises for 0 < countdown < 1 (the retry would be rejected and lost).
        # Celery's interval is whole seconds; this guards an override that is not.
        if 0 < countdown < 1 and str(self.app.conf.broker_url).split(":", 1)[0] in (
            "amqp",
            "amqps",
            "pyamqp",
        ):
            countdown = 1
        return countdown

    def _refuse_endless_redelivery(self) -> None:
        """Count deliveries of redelivered messages; past CELERY_MAX_DELIVERIES, fail for good.

        Only a message that came back (kombu marks it ``redelivered``) is counted,
        so the normal path costs nothing. The count lives in the state Redis
        (``taskcore.redis_clients``) because the worker that saw the earlier
        deliveries is dead.
        """
        delivery = self.request.delivery_info or {}
        if not delivery.get("redelivered"):
            return
        from django.conf import settings

        from .redis_clients import state_redis

        # Deliveries of one message whose worker died (task_reject_on_worker_lost
        # requeues it) before it goes to dead letters instead of running again.
        max_deliveries = getattr(settings, "CELERY_MAX_DELIVERIES", 3)
        key = f"taskcore:deliveries:{self.request.id}"
        client = state_redis()
        client.set(key, 1, nx=True, ex=DELIVERY_COUNT_TTL)  # the first delivery was not counted
        deliveries = client.incr(key)
        if deliveries > max_deliveries:
            raise RedeliveredTooOften(
                f"delivered {deliveries} times and its worker died each time "
                f"(limit {max_deliveries}); not running it again"
            )
