"""Tasks of the platform itself (routed to the ``default`` queue)."""

from __future__ import annotations

import logging
import os
import socket
import time

from celery import shared_task

from taskcore.base import PermanentError

logger = logging.getLogger(__name__)

MAX_DEBUG_SLEEP = 60.0


@shared_task(bind=True, name="taskcore.tasks.debug_task")
def debug_task(self, message: str = "debug", sleep: float = 0.0) -> dict:
    """Echo where and how the task ran: the quickest end-to-end check of the system.

    ``sleep`` (seconds, at most 60) simulates work, e.g. to watch a task run in
    Flower or to kill a worker in the middle of one.
    """
    try:
        sleep = float(sleep)
    except (TypeError, ValueError):
        raise PermanentError(f"sleep must be a number of seconds, got {sleep!r}") from None
    if not 0 <= sleep <= MAX_DEBUG_SLEEP:
        raise PermanentError(f"sleep must be between 0 and {MAX_DEBUG_SLEEP} seconds, got {sleep}")
    started = time.time()
    if sleep:
        time.sleep(sleep)
    delivery = self.request.delivery_info or {}
    result = {
        "message": str(message)[:200],
        "task_id": self.request.id,
        "hostname": self.request.hostname,
        "queue": delivery.get("routing_key"),
        "redelivered": bool(delivery.get("redelivered")),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": started,
    }
    logger.info("debug_task ran: %s", result)
    return result


@shared_task(name="taskcore.tasks.relay_outbox")
def relay_outbox() -> dict:
    """Store parked dead letters, then publish outbox rows whose publish after commit failed.

    Beat runs this every minute (maintenance/schedule.py); every worker also relays
    from a thread of its own, independent of the queues (taskcore/relay.py). A run
    that meets the database still away is not retried and leaves no dead letter of
    its own: the next run is its retry.
    """
    from taskcore.base import TRANSIENT_ERRORS
    from taskcore.relay import relay_once
    from taskcore.secrets import mask_text

    try:
        return relay_once()
    except TRANSIENT_ERRORS as exc:  # anything else fails the run clearly
        logger.warning(
            "relay: %s; the next run tries again", mask_text(f"{type(exc).__name__}: {exc}")
        )
        return {"relayed": False, "error": type(exc).__name__}
