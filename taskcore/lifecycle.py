"""Log the worker's and each task's lifecycle from Celery's signals.

Kept cheap on purpose: one dictionary write at start and one pop at the end of
each task, one log line per transition. Task lines go to the
``celery.lifecycle.task`` logger (``logs/celery_tasks.log``), worker lines to
``celery.lifecycle.worker`` (``logs/celery.log``).

A successful task writes one INFO line ("task finished", with state and
runtime); "task received" and "task started" are DEBUG lines, INFO with
``CELERY_TASK_LOG_LINES=verbose``. ``CELERY_TASK_LIFECYCLE_LOG=0`` leaves out
the successful tasks' lines altogether (see docs/benchmarks.md, B1). Retries,
failures, rejections and revocations are always logged.
"""

from __future__ import annotations

import logging
import os
import time

from celery import signals

from .secrets import mask_text

worker_log = logging.getLogger("celery.lifecycle.worker")
task_log = logging.getLogger("celery.lifecycle.task")

_started_at: dict[str, float] = {}

# Received/started lines: INFO in the verbose mode, DEBUG otherwise.
TRANSITION_LEVEL = (
    logging.INFO
    if os.environ.get("CELERY_TASK_LOG_LINES", "summary").lower() == "verbose"
    else logging.DEBUG
)

LIFECYCLE_LOG = os.environ.get("CELERY_TASK_LIFECYCLE_LOG", "1").lower() not in (
    "0",
    "false",
    "no",
    "off",
)


def _ids(task=None, request=None, task_id=None):
    request = request or getattr(task, "request", None)
    # A worker-side Request names its task in .task_name, a task's Context in .task.
    name = (
        getattr(task, "name", None)
        or getattr(request, "task_name", None)
        or getattr(request, "task", None)
    )
    if not isinstance(name, str):
        name = "?"
    return {"task_id": task_id or getattr(request, "id", None) or "-", "task_name": name}


# --- worker ------------------------------------------------------------------


@signals.worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    _relay_outbox_in_background()
    consumer = sender
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer else []
    worker_log.info(
        "worker ready: hostname=%s pid=%s queues=%s",
        getattr(consumer, "hostname", "?"),
        os.getpid(),
        ",".join(queues),
    )


def _relay_outbox_in_background() -> None:
    """A worker that starts may follow a broker outage: publish what waited meanwhile."""
    import threading

    def relay():
        from django.db import connection

        from taskcore import deadletters, outbox

        try:
            counts = outbox.relay()
            if counts["published"] or counts["failed"]:
                worker_log.info("outbox relay at start-up: %s", counts)
            parked = deadletters.store_parked_dead_letters()
            if parked:
                worker_log.info("stored %d dead letters parked in Redis", parked)
        except Exception:
            worker_log.exception("outbox relay at start-up failed")
        finally:
            connection.close()

    threading.Thread(target=relay, name="outbox-relay", daemon=True).start()


@signals.worker_shutting_down.connect
def on_worker_shutting_down(sig=None, how=None, exitcode=None, **kwargs):
    worker_log.warning("worker shutting down: signal=%s how=%s exitcode=%s", sig, how, exitcode)


@signals.worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs):
    worker_log.info("worker stopped: pid=%s", os.getpid())


@signals.worker_process_init.connect
def on_worker_process_init(**kwargs):
    worker_log.info("worker child process started: pid=%s", os.getpid())
    # A forked child must not reuse the parent's database connections.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()


@signals.worker_process_shutdown.connect
def on_worker_process_shutdown(pid=None, exitcode=None, **kwargs):
    worker_log.info("worker child process exiting: pid=%s exitcode=%s", pid, exitcode)


@signals.heartbeat_sent.connect
def on_heartbeat_sent(sender=None, **kwargs):
    # Heartbeats come every 2 s: log at DEBUG only, enough to see them stop.
    worker_log.debug("heartbeat sent")


@signals.celeryd_after_setup.connect
def on_worker_setup(sender=None, instance=None, conf=None, **kwargs):
    worker_log.info(
        "worker configured: hostname=%s broker=%s", sender, mask_text(str(conf.broker_url))
    )


# --- tasks -------------------------------------------------------------------


def on_task_received(request=None, **kwargs):
    if not task_log.isEnabledFor(TRANSITION_LEVEL):
        return
    task_log.log(
        TRANSITION_LEVEL,
        "task received: eta=%s retries=%s",
        getattr(request, "eta", None),
        getattr(request, "request_dict", {}).get("retries", 0),
        extra=_ids(request=request),
    )


def on_task_prerun(task_id=None, task=None, **kwargs):
    _started_at[task_id] = time.perf_counter()
    if not task_log.isEnabledFor(TRANSITION_LEVEL):
        return
    task_log.log(
        TRANSITION_LEVEL,
        "task started: retries=%s",
        task.request.retries,
        extra=_ids(task, task_id=task_id),
    )


def on_task_postrun(task_id=None, task=None, state=None, **kwargs):
    started = _started_at.pop(task_id, None)
    level = logging.INFO if state == "SUCCESS" else logging.WARNING
    if not task_log.isEnabledFor(level):
        return
    runtime = time.perf_counter() - started if started is not None else float("nan")
    task_log.log(
        level,
        "task finished: state=%s runtime=%.3fs retries=%s",
        state,
        runtime,
        getattr(getattr(task, "request", None), "retries", 0) or 0,
        extra=_ids(task, task_id=task_id),
    )


if LIFECYCLE_LOG:
    signals.task_received.connect(on_task_received)
    signals.task_prerun.connect(on_task_prerun)
    signals.task_postrun.connect(on_task_postrun)


@signals.task_retry.connect
def on_task_retry(request=None, reason=None, einfo=None, sender=None, **kwargs):
    task_log.warning(
        "task retry: attempt=%s reason=%s",
        (getattr(request, "retries", 0) or 0) + 1,
        mask_text(repr(reason)),
        extra=_ids(sender, request=request),
    )


@signals.task_failure.connect
def on_task_failure(task_id=None, exception=None, einfo=None, sender=None, **kwargs):
    task_log.error(
        "task failed: %s: %s\n%s",
        type(exception).__name__,
        mask_text(str(exception)),
        mask_text(str(einfo.traceback)) if einfo else "",
        extra=_ids(sender, task_id=task_id),
    )


@signals.task_rejected.connect
def on_task_rejected(message=None, exc=None, **kwargs):
    headers = getattr(message, "headers", None) or {}
    task_log.error(
        "message rejected: %s",
        mask_text(repr(exc)),
        extra={"task_id": headers.get("id", "-"), "task_name": headers.get("task", "?")},
    )


@signals.task_revoked.connect
def on_task_revoked(request=None, terminated=None, signum=None, expired=None, **kwargs):
    task_log.warning(
        "task revoked: terminated=%s signal=%s expired=%s",
        terminated,
        signum,
        expired,
        extra=_ids(request=request),
    )


@signals.task_unknown.connect
def on_task_unknown(name=None, id=None, message=None, exc=None, **kwargs):
    task_log.error(
        "unknown task refused: %s", name, extra={"task_id": id or "-", "task_name": name}
    )
