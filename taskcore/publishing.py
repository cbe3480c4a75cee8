"""Headers stamped on every task message when it is published.

``sent_at`` (epoch seconds, float) lets the health checks measure the age of the
oldest message in a queue and the queue wait of a task, whoever published it.
"""

from __future__ import annotations

import time

from celery import signals

SENT_AT_HEADER = "sent_at"


@signals.before_task_publish.connect
def stamp_sent_at(headers=None, **kwargs):
    if headers is not None:
        # Each publish (first send, retry, replay) is a new message with its own age.
        headers[SENT_AT_HEADER] = time.time()
