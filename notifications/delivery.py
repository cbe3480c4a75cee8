"""Sending a batch of deliveries, each recipient once.

The protocol, per batch (``claim_token`` is the batch task's id, which stays the
same when the broker redelivers the message or Celery retries the task):

1. Claim: one UPDATE turns the batch's sendable deliveries into ``sending``
   with our token. Sendable: ``queued``/``deferred``, our own earlier claim (a
   previous run of this task that died), or a claim whose lease lapsed (its
   task stopped renewing it: dead). Anything ``sent``, ``failed``,
   ``skipped`` or claimed by a live task is left alone. While sending, the
   batch renews its claims (``claimed_at``) every ``FLUSH_SECONDS`` and drops
   any it no longer holds before it is sent.
2. Reconcile: claimed deliveries that a dead earlier run already sent (their
   key in ``sentlog``) are marked sent, not sent again.
3. Send the rest over the process's pooled SMTP connections, several at once
   (``sending``, ``smtp``), each message after a token of ``EMAIL_RATE_LIMIT``
   (``ratelimit``). When the server accepts a message its key goes to
   ``sentlog`` at once; outcomes (``sent``; ``deferred`` for a 4xx
   answer, which the task retries later; ``failed`` with the server's reason
   for 5xx, and a 5xx to RCPT puts the address on the suppression list) are
   committed to the database together, at the end of the batch and every
   ``FLUSH_SECONDS``. A relay answering 421 backs that one connection off and
   the message is tried again on it (``smtp``); a rate limit that gives no
   token in time hands the unsent back (``postponed``) for a later task.
4. If the relay stays away or refuses too long, the outcomes so far are committed, the unsent
   claims released, and the error goes up: the base task retries the batch,
   and only what was not sent goes again.

What a crash can still do: between the server's "250 accepted" and the
``sentlog`` write (well under a millisecond) is the only place where a
redelivered batch sends a message again. The copy carries the same Message-ID,
so the receiving side can tell. A crash anywhere else resends nothing that was
accepted and loses nothing that was claimed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from taskcore.base import TransientError

from . import conf, sentlog, suppression
from .composing import MessageComposer
from .models import Campaign, Delivery, Suppression
from .sending import BatchSender, Result

logger = logging.getLogger(__name__)
Status = Delivery.Status

# Commit outcomes at least this often, so the admin's progress moves on a slow server.
FLUSH_SECONDS = 2.0


@dataclass
class BatchOutcome:
    sent: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    # Already finished, or claimed by another live task.
    not_claimed: int = 0
    last_deferral: str = ""
    # Handed back unsent because EMAIL_RATE_LIMIT gave no token in time.
    postponed: list[int] = field(default_factory=list)
    retry_in: float = 0.0

    def summary(self) -> dict[str, int]:
        return {
            "sent": len(self.sent),
            "deferred": len(self.deferred),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "not_claimed": self.not_claimed,
            "postponed": len(self.postponed),
        }


def claim(delivery_ids: list[int], claim_token: str) -> list[Delivery]:
    """Take the sendable deliveries among ``delivery_ids``; return them in id order."""
    now = timezone.now()
    lapsed_before = now - timedelta(seconds=conf.claim_lease_seconds())
    sendable = (
        Q(status__in=(Status.QUEUED, Status.DEFERRED))
        | Q(status=Status.SENDING, claimed_by=claim_token)
        | Q(status=Status.SENDING, claimed_at__lt=lapsed_before)
    )
    # One UPDATE ... WHERE: two tasks racing for a delivery cannot both win it.
    Delivery.objects.filter(sendable, pk__in=delivery_ids).update(
        status=Status.SENDING,
        claimed_by=claim_token,
        claimed_at=now,
        attempts=F("attempts") + 1,
        updated_at=now,
    )
    claimed = Delivery.objects.filter(
        pk__in=delivery_ids, status=Status.SENDING, claimed_by=claim_token
    ).select_related("campaign", "notification")
    return list(claimed.order_by("pk"))


def deliver_batch(delivery_ids: list[int], claim_token: str) -> BatchOutcome:
    """Send the batch's deliveries that are still to be sent (see the module docstring)."""
    outcome = BatchOutcome()
    deliveries = claim(delivery_ids, claim_token)
    outcome.not_claimed = len(set(delivery_ids)) - len(deliveries)
    sent_before = sentlog.sent_among([d.pk for d in deliveries])
    if sent_before:
        logger.info(
            "%d delivery(ies) were sent by an earlier run: not sent again", len(sent_before)
        )
        _commit([Result(pk, Status.SENT, 250) for pk in sorted(sent_before)], claim_token, outcome)
    to_send = [d for d in deliveries if d.pk not in sent_before]
    if to_send:
        _send_claimed(to_send, claim_token, outcome)
    finish_campaigns({d.campaign_id for d in deliveries if d.campaign_id})
    return outcome


def _send_claimed(deliveries: list[Delivery], claim_token: str, outcome: BatchOutcome) -> None:
    suppressed = Suppression.among(d.email for d in deliveries if d.campaign_id)
    sender = BatchSender(deliveries, MessageComposer(), suppressed)
    try:
        sender.start()
        while not sender.wait(FLUSH_SECONDS):
            # Every FLUSH_SECONDS: outcomes so far to the database, claims renewed,
            # and what is no longer ours (a lapsed claim taken over) not sent.
            _commit(sender.take_results(), claim_token, outcome)
            sender.keep_only(_renew(sender.pending_ids(), claim_token))
        if sender.error is not None:
            raise sender.error
        _commit(sender.take_results(), claim_token, outcome)
        if sender.postponed is not None:
            outcome.postponed = sender.pending_ids()
            outcome.retry_in = sender.postponed.retry_in
            release(outcome.postponed, claim_token)
    except BaseException as exc:
        # The relay, Redis or the database failed, or the soft time limit came:
        # keep what is known, hand back what is unsent, let the task retry.
        try:
            sender.stop()
            _commit(sender.take_results(), claim_token, outcome)
            release(sender.pending_ids(), claim_token)
        except Exception:
            logger.exception("could not record the batch's outcomes; the next run will")
        if isinstance(exc, SoftTimeLimitExceeded):
            raise TransientError(
                f"soft time limit reached with {len(sender.pending_ids())} of "
                f"{len(deliveries)} recipients left unsent; they are retried"
            ) from None
        raise


def _commit(results: list[Result], claim_token: str, outcome: BatchOutcome) -> None:
    """Write outcomes in one transaction: all ``sent`` in one UPDATE, the rest one by one."""
    if not results:
        return
    now = timezone.now()
    sent = [r.delivery_id for r in results if r.status == Status.SENT]
    others = [r for r in results if r.status != Status.SENT]
    ours = Delivery.objects.filter(status=Status.SENDING, claimed_by=claim_token)
    with transaction.atomic():
        if sent:
            ours.filter(pk__in=sent).update(
                status=Status.SENT, smtp_code=250, error="", sent_at=now, updated_at=now
            )
        for result in others:
            ours.filter(pk=result.delivery_id).update(
                status=result.status,
                smtp_code=result.code,
                error=result.error[:2000],
                updated_at=now,
            )
    bounces = {
        r.delivery_id: r.error for r in others if r.hard_bounce and r.status == Status.FAILED
    }
    if bounces:
        _suppress_hard_bounces(bounces)
    sentlog.forget(sent)
    for result in results:
        getattr(outcome, result.status).append(result.delivery_id)
        if result.status == Status.DEFERRED:
            outcome.last_deferral = result.error
    results.clear()


def _suppress_hard_bounces(answers: dict[int, str]) -> None:
    refused = Delivery.objects.filter(pk__in=list(answers)).values_list(
        "pk", "email", "campaign_id"
    )
    suppression.record_hard_bounces(
        {email: (answers[pk], campaign_id) for pk, email, campaign_id in refused}
    )


def _renew(pending_ids: list[int], claim_token: str) -> set[int]:
    """Extend our claims on the unsent deliveries; return those still ours."""
    now = timezone.now()
    ours = Delivery.objects.filter(
        pk__in=pending_ids, status=Status.SENDING, claimed_by=claim_token
    )
    renewed = ours.update(claimed_at=now, updated_at=now)
    if renewed == len(pending_ids):
        return set(pending_ids)
    still_ours = set(ours.values_list("pk", flat=True))
    logger.warning(
        "%d claim(s) lapsed and were taken over; not sending them",
        len(pending_ids) - len(still_ours),
    )
    return still_ours


def release(delivery_ids: list[int], claim_token: str) -> None:
    """Hand claimed, unsent deliveries back: ``queued`` again, for the retry or anyone."""
    if delivery_ids:
        Delivery.objects.filter(
            pk__in=delivery_ids, status=Status.SENDING, claimed_by=claim_token
        ).update(status=Status.QUEUED, claimed_by="", claimed_at=None, updated_at=timezone.now())


def give_up(delivery_ids: list[int], claim_token: str, reason: str) -> int:
    """Mark the batch's unfinished deliveries failed (its task failed for good)."""
    now = timezone.now()
    unfinished = Q(status__in=(Status.QUEUED, Status.DEFERRED)) | Q(
        status=Status.SENDING, claimed_by=claim_token
    )
    deliveries = Delivery.objects.filter(unfinished, pk__in=delivery_ids)
    campaign_ids = set(deliveries.exclude(campaign=None).values_list("campaign_id", flat=True))
    # What a run did send before it died is sent, whatever came after.
    sent_before = sentlog.sent_among(list(delivery_ids))
    with transaction.atomic():
        deliveries.filter(pk__in=sent_before).update(
            status=Status.SENT, smtp_code=250, error="", sent_at=now, updated_at=now
        )
        count = deliveries.exclude(pk__in=sent_before).update(
            status=Status.FAILED, error=reason[:2000], updated_at=now
        )
    sentlog.forget(list(sent_before))
    finish_campaigns(campaign_ids)
    return count


def finish_campaigns(campaign_ids) -> None:
    """Mark each campaign done once none of its deliveries is pending."""
    for campaign_id in campaign_ids:
        pending = Delivery.objects.filter(campaign_id=campaign_id, status__in=Delivery.PENDING)
        if not pending.exists():
            Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).update(
                status=Campaign.Status.DONE, finished_at=timezone.now()
            )
