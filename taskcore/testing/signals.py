"""What is connected to Celery's task signals, for the test that only the pipeline is."""

from __future__ import annotations

import weakref

from celery import signals

# Every signal Celery sends about a task (not about a worker or beat).
TASK_SIGNALS = (
    "before_task_publish",
    "after_task_publish",
    "task_received",
    "task_prerun",
    "task_postrun",
    "task_success",
    "task_retry",
    "task_failure",
    "task_internal_error",
    "task_revoked",
    "task_rejected",
    "task_unknown",
)


def task_signal_receivers() -> dict[str, list[str]]:
    """``{signal name: ["module.qualname" of each live receiver]}``."""
    found = {}
    for name in TASK_SIGNALS:
        receivers = []
        for _key, receiver in getattr(signals, name).receivers:
            if isinstance(receiver, weakref.ReferenceType):
                receiver = receiver()
            if receiver is None:
                continue
            function = getattr(receiver, "__func__", receiver)
            receivers.append(
                f"{getattr(function, '__module__', '?')}."
                f"{getattr(function, '__qualname__', repr(function))}"
            )
        found[name] = receivers
    return found
