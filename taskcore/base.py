"""The base class of every project task: one retry policy for the whole project.

Transient errors (the network, the broker, a database that is briefly away,
SMTP 4xx, our ``TransientError``) retry with exponential backoff and full
jitter until both the queue table's ``retry_horizon`` (seconds since the task's
first attempt) and its ``max_retries`` are spent: an outage shorter than the
horizon (a database restart or failover) costs no task, however many attempts
it takes. Everything else fails at once: retrying a validation error only
delays the same failure.

The backoff is Celery's: its task options ``retry_backoff`` (factor, seconds),
``retry_backoff_max`` and ``retry_jitter``, set per queue by the queue table's
annotations (``taskcore.queues``), and its ``get_exponential_backoff_interval``.
What to retry is ours: Celery's ``autoretry_for`` decides by exception class
only, and an SMTP reply is transient or not by its code (4xx or 5xx).
A run that fails for good is handed to the pipeline (``FAILED``) before its
result is stored.
"""

from __future__ import annotations

import math
import os
import smtplib
import socket
import time

from celery import Task, states
from celery.app.trace import get_actual_ignore_result
from celery.exceptions import BackendStoreError, Reject, TaskPredicate
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
# Tries to store a run's STARTED state before its message goes back to the queue
# instead (about 0.7 s with the worker's backoff): a Redis that refuses writes
# must not hold a reserved task, whose time limit is already running.
STARTED_WRITE_RETRIES = 3
# Message header carrying when a task's first attempt started (epoch seconds), so
# the retry horizon counts from there across retries, workers and hosts.
FIRST_ATTEMPT_HEADER = "taskcore_first_attempt"


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
    # Seconds after the first attempt during which a transient error is retried
    # whatever max_retries says (the queue table sets it per queue); 0: count only.
    retry_horizon: int = 600
    # STARTED is written by __call__ (record_started), not by Celery's tracer
    # (track_started): Celery writes it outside the task's body, where a Redis that
    # refuses the write (out of memory, away) can only fail the run, and the
    # message is acknowledged although the task never ran. In the body, a refused
    # write sends the message back to its queue (Reject, requeue) to run later.
    track_started = False
    record_started: bool | None = None  # None: the task_track_started setting
    from_config = (*Task.from_config, ("record_started", "task_track_started"))

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
                self._record_started()
                self._note_first_attempt()
                self._refuse_endless_redelivery()
                # A message from elsewhere (send_task, a replay) gets the same check.
                args, kwargs = arguments.checked(self, args, kwargs)
            return super().__call__(*args, **kwargs)
        except TaskPredicate:  # Retry, Ignore, Reject: Celery's own control flow
            raise
        except Exception as exc:
            if self.request.called_directly:
                raise
            if not (is_transient(exc) and self.may_retry()):
                # Failing for good: subscribers record it before the result is visible.
                pipeline.failed_for_good(self, exc, args, kwargs)
                raise
            raise self.retry(exc=exc, countdown=self.retry_countdown()) from exc

    def _record_started(self) -> None:
        """Store STARTED (as Celery's track_started does), or send the message back.

        Bounded: a few quick tries, then ``Reject(requeue=True)``: the message returns
        to its queue (the transport keeps it in ``unacked`` until Redis takes the
        requeue) and runs once Redis accepts writes. Waiting here instead would spend
        the run's time limit on the outage.
        """
        request = self.request
        if not self.record_started or get_actual_ignore_result(self, request):
            return
        try:
            self.backend.store_result(
                request.id,
                {"pid": os.getpid(), "hostname": request.hostname},
                states.STARTED,
                request=request,
                max_retries=STARTED_WRITE_RETRIES,
            )
        except (BackendStoreError, RedisError, OSError, BrokerOperationalError) as exc:
            raise Reject(
                f"{self.name}[{request.id}] not started: its STARTED state could not be "
                f"stored ({describe_connection_error(exc)}); "
                f"back to its queue",
                requeue=True,
            ) from exc

    def may_retry(self) -> bool:
        """Whether this run may be retried: attempts left by count, or time left in the horizon."""
        attempts_left = self.max_retries is None or self.request.retries < self.max_retries
        return attempts_left or self.retry_time_left() > 0

    def retry_time_left(self) -> float:
        """Seconds left of the retry horizon, counted from the task's first attempt."""
        horizon = self.retry_horizon or 0
        return max(0.0, self.first_attempt_at() + horizon - time.time())

    def first_attempt_at(self) -> float:
        """When the task's first attempt started (epoch seconds), as its message says.

        A message without a usable value (sent before this header existed, or by
        another producer) counts from this attempt.
        """
        try:
            first = float(getattr(self.request, FIRST_ATTEMPT_HEADER, None))
        except (TypeError, ValueError):
            first = math.nan
        now = time.time()
        # A value in the future (clock skew, a bad producer) would stretch the horizon.
        return first if math.isfinite(first) and first <= now else now

    def _note_first_attempt(self) -> None:
        setattr(self.request, FIRST_ATTEMPT_HEADER, self.first_attempt_at())

    def retry(
        self,
        args=None,
        kwargs=None,
        exc=None,
        throw=True,
        eta=None,
        countdown=None,
        max_retries=None,
        **options,
    ):
        """Celery's retry, carrying the first attempt's time to the next message.

        Within the horizon, ``max_retries`` does not end retries (a task calling
        ``self.retry()`` itself gets the same policy as an error ``__call__`` retries).
        """
        if self.request.called_directly:
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        if max_retries is None and self.max_retries is not None and self.retry_time_left() > 0:
            # Celery refuses once retries > max_retries: the horizon grants this one.
            max_retries = max(self.max_retries, self.request.retries + 1)
        headers = {
            **(options.pop("headers", None) or {}),
            FIRST_ATTEMPT_HEADER: self.first_attempt_at(),
        }
        try:
            return super().retry(
                args, kwargs, exc, throw, eta, countdown, max_retries, headers=headers, **options
            )
        except Reject as refused:
            # Celery rejects the message *without* requeueing it when the retry cannot
            # be published (the broker away or out of memory): the task would be lost,
            # acknowledged without having run. Requeued, it runs again when it can.
            if not refused.requeue and isinstance(refused.reason, TaskNotSent):
                raise Reject(refused.reason, requeue=True) from refused.reason
            raise
        finally:
            # Celery leaves a per-call max_retries on the (shared) task object for
            # autoretry_for, which we do not use: it must not leak into the next run.
            self.__dict__.pop("override_max_retries", None)

    def retry_countdown(self) -> int | float | None:
        """Seconds before the next attempt: Celery's exponential backoff with full jitter.

        None (``retry_backoff`` off): Celery's ``default_retry_delay``. Within the
        retry horizon, never past its end: the last attempt runs by the horizon.
        """
        if not self.retry_backoff:
            return None
        countdown = get_exponential_backoff_interval(
            factor=int(max(1, self.retry_backoff)),
            retries=self.request.retries,
            maximum=self.retry_backoff_max,
            full_jitter=self.retry_jitter,
        )
        time_left = self.retry_time_left()
        if time_left > 0:
            countdown = min(countdown, math.ceil(time_left))
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
