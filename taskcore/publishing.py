"""Headers stamped on every task message when it is published.

``sent_at`` (epoch seconds, float) lets the health checks measure the age of the
oldest message in a queue and the queue wait of a task, whoever published it.
The stamp is the pipeline's ``before_task_publish`` receiver
(:func:`taskcore.pipeline.stamp_sent_at`): the pipeline owns every task signal.
"""

from __future__ import annotations

from .pipeline import SENT_AT_HEADER, stamp_sent_at

__all__ = ["SENT_AT_HEADER", "stamp_sent_at"]
