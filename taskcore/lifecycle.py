"""Log lines of the worker's life (Celery's worker signals) and of each task's (the pipeline).

Worker lines go to ``celery.lifecycle.worker`` (``logs/celery.log``), from the
worker signals connected below. Task lines go to ``celery.lifecycle.task``
(``logs/celery_tasks.log``), from a subscriber of :mod:`taskcore.pipeline`
(which owns every task signal), registered by :func:`subscribe_task_lines`.

A successful task writes one INFO line ("task finished", with state and
runtime); "task received" and "task started" are DEBUG lines, INFO with
``CELERY_TASK_LOG_LINES = "verbose"``. ``CELERY_TASK_LIFECYCLE_LOG = False``
leaves out the successful tasks' lines altogether (see docs/benchmarks.md, B1).
Retries, failures, rejections and revocations are always logged. Both are
Django settings (read from the environment of the same names).
"""

from __future__ import annotations

import logging
import os

from celery import signals

from . import pipeline, relay
from .logging import write_waiting_lines
from .secrets import mask_text

worker_log = logging.getLogger("celery.lifecycle.worker")
task_log = logging.getLogger("celery.lifecycle.task")

# Received/started lines: INFO in the verbose mode, DEBUG otherwise (see subscribe_task_lines).
_transition_level = {"level": logging.DEBUG}


def _ids(record: pipeline.TaskEvent) -> dict:
    return {"task_id": record.task_id, "task_name": record.name}


# --- worker: Celery's worker signals (not task signals: not the pipeline's) -------


@signals.worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    relay.start_in_worker()  # outbox rows and parked dead letters, at start and every few s
    consumer = sender
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer else []
    worker_log.info(
        "worker ready: hostname=%s pid=%s queues=%s",
        getattr(consumer, "hostname", "?"),
        os.getpid(),
        ",".join(queues),
    )


@signals.worker_shutting_down.connect
def on_worker_shutting_down(sig=None, how=None, exitcode=None, **kwargs):
    relay.stop_in_worker()
    worker_log.warning("worker shutting down: signal=%s how=%s exitcode=%s", sig, how, exitcode)


@signals.worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs):
    worker_log.info("worker stopped: pid=%s", os.getpid())


@signals.worker_process_init.connect
def on_worker_process_init(**kwargs):
    # The parent's database connections are dropped by Celery's Django fixup
    # (DjangoWorkerFixup.on_worker_process_init), without I/O on the shared socket.
    worker_log.info("worker child process started: pid=%s", os.getpid())


@signals.worker_process_shutdown.connect
def on_worker_process_shutdown(pid=None, exitcode=None, **kwargs):
    worker_log.info("worker child process exiting: pid=%s exitcode=%s", pid, exitcode)
    # The child leaves through os._exit (billiard), without logging.shutdown.
    write_waiting_lines()


@signals.heartbeat_sent.connect
def on_heartbeat_sent(sender=None, **kwargs):
    # Heartbeats come every 2 s: log at DEBUG only, enough to see them stop.
    worker_log.debug("heartbeat sent")


@signals.celeryd_after_setup.connect
def on_worker_setup(sender=None, instance=None, conf=None, **kwargs):
    worker_log.info(
        "worker configured: hostname=%s broker=%s", sender, mask_text(str(conf.broker_url))
    )


# A worker whose broker refuses its credentials stops at once with this status
# (sysexits' EX_CONFIG): retrying for minutes cannot fix a password.
EXIT_BROKER_AUTHENTICATION = 78


@signals.worker_init.connect
def refuse_to_start_without_broker_credentials(sender=None, **kwargs):
    """One PING with the worker's credentials before it connects for real."""
    from .brokers import describe_connection_error
    from .redis_clients import NotRedis, broker_redis, broker_url

    try:
        broker_redis(timeout=3).ping()
    except NotRedis:
        return  # RabbitMQ: its own connection reports ACCESS_REFUSED
    except Exception as exc:
        problem = describe_connection_error(exc)
        if not problem.startswith("authentication failed"):
            return  # unreachable, loading...: the worker's connection retry rides it out
        worker_log.critical(
            "worker not started: the broker at %s refused it: %s (exit status %d)",
            mask_text(broker_url()),
            problem,
            EXIT_BROKER_AUTHENTICATION,
        )
        raise SystemExit(EXIT_BROKER_AUTHENTICATION) from None


# --- tasks (a pipeline subscriber) --------------------------------------------


def on_task_received(record: pipeline.TaskEvent) -> None:
    level = _transition_level["level"]
    if task_log.isEnabledFor(level):
        task_log.log(
            level,
            "task received: eta=%s retries=%s",
            record.detail.get("eta") if record.detail else None,
            record.retries,
            extra=_ids(record),
        )


def on_task_started(record: pipeline.TaskEvent) -> None:
    level = _transition_level["level"]
    if task_log.isEnabledFor(level):
        task_log.log(level, "task started: retries=%s", record.retries, extra=_ids(record))


def on_task_finished(record: pipeline.TaskEvent) -> None:
    if not record.in_run:  # the main process's "task failed" line says it all
        return
    level = logging.INFO if record.state == "SUCCESS" else logging.WARNING
    if task_log.isEnabledFor(level):
        task_log.log(
            level,
            "task finished: state=%s runtime=%.3fs retries=%s",
            record.state,
            record.runtime if record.runtime is not None else float("nan"),
            record.retries,
            extra=_ids(record),
        )


def on_task_retried(record: pipeline.TaskEvent) -> None:
    task_log.warning(
        "task retry: attempt=%s reason=%s",
        record.retries + 1,
        mask_text(repr(record.detail.get("reason") if record.detail else None)),
        extra=_ids(record),
    )


def on_task_failed(record: pipeline.TaskEvent) -> None:
    task_log.error(
        "task failed: %s: %s\n%s",
        record.exception_type,
        mask_text(str(record.exception)),
        mask_text(record.traceback),
        extra=_ids(record),
    )


def on_task_rejected(record: pipeline.TaskEvent) -> None:
    task_log.error(
        "message rejected: %s",
        mask_text(repr(record.detail.get("reason") if record.detail else None)),
        extra=_ids(record),
    )


def on_task_revoked(record: pipeline.TaskEvent) -> None:
    detail = record.detail or {}
    task_log.warning(
        "task revoked: terminated=%s signal=%s expired=%s",
        detail.get("terminated"),
        detail.get("signum"),
        detail.get("expired"),
        extra=_ids(record),
    )


def on_task_unknown(record: pipeline.TaskEvent) -> None:
    task_log.error("unknown task refused: %s", record.name, extra=_ids(record))


def subscribe_task_lines() -> None:
    """Register the task lines with the pipeline, as the settings say.

    ``CELERY_TASK_LOG_LINES``: ``"verbose"`` makes received/started lines INFO.
    ``CELERY_TASK_LIFECYCLE_LOG``: False leaves out received/started/finished.
    Received/started lines at DEBUG are subscribed only when ``CELERY_LOG_LEVEL``
    is DEBUG: otherwise each task would build two records nobody writes.
    """
    from django.conf import settings

    verbose = str(getattr(settings, "CELERY_TASK_LOG_LINES", "summary")).lower() == "verbose"
    _transition_level["level"] = logging.INFO if verbose else logging.DEBUG
    debug = str(getattr(settings, "CELERY_LOG_LEVEL", "INFO")).upper() == "DEBUG"
    lines_on = getattr(settings, "CELERY_TASK_LIFECYCLE_LOG", True)
    problems = {
        pipeline.RETRIED: on_task_retried,
        pipeline.FAILED: on_task_failed,
        pipeline.REJECTED: on_task_rejected,
        pipeline.REVOKED: on_task_revoked,
        pipeline.UNKNOWN: on_task_unknown,
    }
    for event, callback in problems.items():
        pipeline.subscribe(callback, events=[event])
    transitions = {
        pipeline.RECEIVED: on_task_received,
        pipeline.STARTED: on_task_started,
        pipeline.FINISHED: on_task_finished,
    }
    written = {
        pipeline.RECEIVED: verbose or debug,
        pipeline.STARTED: verbose or debug,
        pipeline.FINISHED: True,
    }
    for event, callback in transitions.items():
        if lines_on and written[event]:
            pipeline.subscribe(callback, events=[event])
        else:
            pipeline.unsubscribe(f"{callback.__module__}.{callback.__qualname__}")
