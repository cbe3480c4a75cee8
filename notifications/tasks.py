"""Email queue tasks: thin wrappers over notifications.services and .delivery.

Each takes ids and primitives, checks them, calls one service and maps the
outcome to "retry later" or "fail for good". Transient errors (connection lost,
SMTP 4xx for the whole batch, database away) retry through the base task.
"""

from __future__ import annotations

import logging

from celery import shared_task

from taskcore.base import PermanentError, TransientError
from taskcore.pipeline import TaskEvent

from . import conf, delivery, services

logger = logging.getLogger(__name__)


@shared_task(name="notifications.tasks.send_email_message")
def send_email_message(
    recipients: list[str], subject: str, text_body: str, html_body: str | None = None
) -> dict:
    """Send one email; SMTP 4xx and lost connections retry, 5xx and bad addresses fail."""
    return services.send_message(recipients, subject, text_body, html_body)


@shared_task(name="notifications.tasks.start_campaign")
def start_campaign(campaign_id: int) -> int:
    """Create a campaign's deliveries and publish its batch tasks."""
    return services.start_campaign(_positive_int(campaign_id, "campaign_id"))


@shared_task(name="notifications.tasks.resume_stalled_deliveries")
def resume_stalled_deliveries() -> int:
    """Publish again what a dead worker or a down broker left pending (run it every few minutes)."""
    return services.resume_stalled_deliveries()


SEND_DELIVERY_BATCH = "notifications.tasks.send_delivery_batch"


@shared_task(bind=True, name=SEND_DELIVERY_BATCH)
def send_delivery_batch(self, delivery_ids: list[int]) -> dict:
    """Send up to EMAIL_BATCH_SIZE deliveries over the process's pooled SMTP connections.

    Recipients the server deferred (4xx) are retried by this same task, with the
    queue's backoff, for them alone; once the queue's ``max_retries`` and
    ``retry_horizon`` are both spent they fail with the server's last answer.
    """
    delivery_ids = _delivery_ids(delivery_ids)
    outcome = delivery.deliver_batch(delivery_ids, claim_token=self.request.id)
    if outcome.postponed:
        # EMAIL_RATE_LIMIT had no token for us: a new task sends the rest later,
        # this slot goes to other work, and the wait counts as no retry.
        send_delivery_batch.apply_async([outcome.postponed], countdown=outcome.retry_in)
    if outcome.deferred:
        if self.may_retry():
            reason = TransientError(
                f"{len(outcome.deferred)} recipient(s) deferred, last answer: "
                f"{outcome.last_deferral}"
            )
            raise self.retry(args=[outcome.deferred], countdown=self.retry_countdown(), exc=reason)
        delivery.give_up(
            outcome.deferred,
            self.request.id,
            f"gave up after {self.request.retries + 1} attempts; last answer: "
            f"{outcome.last_deferral}",
        )
    return outcome.summary()


def fail_deliveries_of_a_failed_batch(failed: TaskEvent) -> None:
    """The pipeline's FAILED subscriber for send_delivery_batch (``NotificationsConfig.ready()``).

    A batch that fails for good takes its unsent deliveries with it, visibly:
    for a permanent error, for exhausted retries and for a hard time limit
    (prefork pool; the worker's main process reports it then), so no delivery
    stays "queued" or "sending" for ever after its task has ended.
    """
    if not failed.args:
        return
    try:
        delivery_ids = _delivery_ids(failed.args[0])
    except PermanentError:
        return
    reason = f"batch task failed: {failed.exception_type}: {failed.exception}"
    count = delivery.give_up(delivery_ids, failed.task_id, reason)
    logger.warning(
        "batch %s failed; %d delivery(ies) marked failed: %s", failed.task_id, count, reason
    )


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PermanentError(f"{what} must be a positive integer id, got {value!r}")
    return value


def _delivery_ids(values) -> list[int]:
    if not isinstance(values, list) or not values:
        raise PermanentError(f"delivery_ids must be a non-empty list of ids, got {values!r}"[:300])
    if len(values) > conf.MAX_BATCH_SIZE:
        raise PermanentError(f"{len(values)} delivery ids; at most {conf.MAX_BATCH_SIZE} per batch")
    return [_positive_int(value, "each delivery id") for value in values]
