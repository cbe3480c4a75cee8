"""Tasks of the platform itself (routed to the ``default`` queue)."""

from __future__ import annotations

import logging
import os
import socket

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="taskcore.tasks.debug_task")
def debug_task(self, message: str = "debug") -> dict:
    """Echo where and how the task ran: the quickest end-to-end check of the system."""
    delivery = self.request.delivery_info or {}
    result = {
        "message": str(message)[:200],
        "task_id": self.request.id,
        "hostname": self.request.hostname,
        "queue": delivery.get("routing_key"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    logger.info("debug_task ran: %s", result)
    return result
