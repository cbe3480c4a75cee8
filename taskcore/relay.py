"""The relay in every worker: outbox rows and parked dead letters, whatever the queues hold.

Rows of the outbox wait when their publish after commit failed (the broker away
or full); dead letters are parked in Redis when the database was away. Beat also
runs ``taskcore.tasks.relay_outbox`` every minute, but as a task it waits in a
queue behind the very backlog an outage leaves, and without beat nothing runs it.
So each worker's main process relays too, in a thread: at start-up and then every
``CELERY_OUTBOX_RELAY_INTERVAL`` seconds (0 turns the loop off; start-up stays).
Several workers relaying at once is safe: a row is published by whoever claims it
(``taskcore.outbox``), a parked dead letter is stored idempotently by task id.
An idle pass costs one indexed query and a few Redis reads.
"""

from __future__ import annotations

import logging
import random
import threading

from .secrets import mask_text

logger = logging.getLogger("celery.lifecycle.worker")

DEFAULT_INTERVAL = 10.0


def relay_once() -> dict:
    """Store parked dead letters, then publish pending outbox rows; the counts."""
    from . import deadletters, outbox

    stored = deadletters.store_parked_dead_letters()
    counts = outbox.relay()
    counts["dead_letters_stored"] = stored
    return counts


class RelayThread(threading.Thread):
    """Relays at start and every ``interval`` seconds (with jitter) until stopped."""

    def __init__(self, interval: float):
        super().__init__(name="outbox-relay", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        from django.db import connection

        while True:
            try:
                counts = relay_once()
                if any(counts.values()):
                    logger.info("outbox relay: %s", counts)
            except Exception as exc:  # the broker or database away: the next pass retries
                logger.warning(
                    "outbox relay: %s; trying again in %.0f s",
                    mask_text(f"{type(exc).__name__}: {exc}"),
                    self.interval,
                )
            finally:
                connection.close()  # one pass at a time: no session held in between
            if self.interval <= 0:
                return
            # Jitter: workers started together do not relay in step.
            if self.stopped.wait(self.interval * random.uniform(0.8, 1.2)):
                return


_thread: RelayThread | None = None


def start_in_worker() -> RelayThread:
    """Start this process's relay thread (once); the worker_ready hook calls it."""
    global _thread
    from django.conf import settings

    if _thread is None or not _thread.is_alive():
        interval = float(getattr(settings, "CELERY_OUTBOX_RELAY_INTERVAL", DEFAULT_INTERVAL))
        _thread = RelayThread(interval)
        _thread.start()
    return _thread


def stop_in_worker() -> None:
    if _thread is not None:
        _thread.stopped.set()
