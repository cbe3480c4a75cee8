"""The email queue's operations, callable from views, the admin, tasks and the shell.

- ``send_notification``: a templated email to one or a few people, recorded and
  sent after the caller's transaction commits.
- ``request_campaign_send`` / ``start_campaign``: a campaign becomes one delivery
  per recipient, sent by batch tasks of ``EMAIL_BATCH_SIZE`` recipients.
- ``resend_failed`` / ``resume_stalled_deliveries``: repairs, from the admin or periodic.
- ``send_message``: one ad-hoc message, no record (at least once: a redelivered
  task sends it again; use ``send_notification`` when that matters).

Everything that is typed by a person or passed by a caller is checked first
(``EmailInputError`` names the bad value), so a bad address or a header with a
line break is refused before anything is stored or sent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import make_msgid
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from taskcore.base import PermanentError
from taskcore.fanout import publish_many
from taskcore.outbox import send_after_commit

from . import conf
from .addresses import (
    EmailInputError,
    Recipient,
    clean_subject,
    parse_audience,
    parse_recipients,
)
from .composing import compile_campaign_templates, read_unsubscribe_token, render_notification
from .models import Campaign, Delivery, Notification, Suppression

logger = logging.getLogger(__name__)
Status = Delivery.Status


def new_message_id() -> str:
    return make_msgid(domain=conf.message_id_domain())


# --- one ad-hoc message --------------------------------------------------------


def send_message(
    recipients: list[str] | str, subject: str, text_body: str, html_body: str | None = None
) -> dict:
    """Send one message now over its own SMTP connection; return who got it."""
    to = [r.display for r in parse_recipients(recipients, limit=conf.MAX_NOTIFICATION_RECIPIENTS)]
    message_id = new_message_id()
    message = EmailMultiAlternatives(
        subject=clean_subject(subject), body=text_body, to=to, headers={"Message-ID": message_id}
    )
    if html_body:
        message.attach_alternative(html_body, "text/html")
    message.send(fail_silently=False)
    return {"to": to, "message_id": message_id}


# --- notifications -------------------------------------------------------------


def send_notification(
    template: str, recipients: list[str] | str, context: dict | None = None
) -> Notification:
    """Render ``notifications/email/<template>/`` and send it to each recipient.

    Rendered now, so a missing template, a bad address or a subject with a line
    break raises ``EmailInputError`` here, in the caller, and nothing is stored.
    Each recipient gets their own message (no one sees the others' addresses).
    The batch task is published after the caller's transaction commits.
    """
    parsed = parse_recipients(recipients, limit=conf.MAX_NOTIFICATION_RECIPIENTS)
    subject, text, html = render_notification(template, dict(context or {}))
    with transaction.atomic():
        notification = Notification.objects.create(
            template=template, subject=subject, text_body=text, html_body=html
        )
        Delivery.objects.bulk_create(
            [_new_delivery(recipient, notification=notification) for recipient in parsed]
        )
        # Ids read back: bulk_create does not return them on MySQL.
        delivery_ids = list(notification.deliveries.values_list("pk", flat=True))
        send_batches_after_commit(delivery_ids)
    return notification


def _new_delivery(recipient: Recipient, **source) -> Delivery:
    return Delivery(
        email=recipient.email, name=recipient.name, message_id=new_message_id(), **source
    )


# --- campaigns -----------------------------------------------------------------


def check_campaign(
    subject: str, text_template: str, html_template: str, audience: str
) -> list[Recipient]:
    """Check what an admin user typed; return the audience's recipients.

    Raises ``EmailInputError`` naming the field and problem (every bad audience
    line at once, with its line number).
    """
    clean_subject(subject)
    compile_campaign_templates(subject, text_template, html_template)
    return parse_audience(audience)


def request_campaign_send(campaign_id: int) -> bool:
    """Mark a draft (or stuck queued) campaign queued; start it after commit.

    False when the campaign is already sending or done: use
    ``resume_stalled_deliveries`` or ``resend_failed`` for those.
    """
    from .tasks import start_campaign as start_campaign_task

    with transaction.atomic():
        requested = Campaign.objects.filter(
            pk=campaign_id, status__in=(Campaign.Status.DRAFT, Campaign.Status.QUEUED)
        ).update(status=Campaign.Status.QUEUED, send_requested_at=timezone.now(), error="")
        if requested:
            send_after_commit(start_campaign_task, [campaign_id])
    return bool(requested)


def start_campaign(campaign_id: int) -> int:
    """Create a delivery per recipient and publish the batch tasks; return how many.

    Safe to run twice (the broker may deliver its task twice): existing
    deliveries are kept (unique key), and publishing a batch again is harmless
    because a delivery is claimed before it is sent.
    """
    try:
        campaign = Campaign.objects.get(pk=campaign_id)
    except Campaign.DoesNotExist:
        raise PermanentError(f"campaign {campaign_id} does not exist") from None
    if campaign.status not in (Campaign.Status.QUEUED, Campaign.Status.SENDING):
        logger.info("campaign %s is %s: nothing to start", campaign_id, campaign.status)
        return 0
    try:
        recipients = check_campaign(
            campaign.subject, campaign.text_template, campaign.html_template, campaign.audience
        )
    except EmailInputError as exc:
        # Back to draft with the reason, so the admin can fix it and send again.
        Campaign.objects.filter(pk=campaign_id).update(status=Campaign.Status.DRAFT, error=str(exc))
        raise
    suppressed = Suppression.among(r.email for r in recipients)
    with transaction.atomic():
        deliveries = []
        for recipient in recipients:
            delivery = _new_delivery(recipient, campaign=campaign)
            if recipient.email in suppressed:
                delivery.status = Status.SKIPPED
                delivery.error = f"suppressed: {suppressed[recipient.email]}"
            deliveries.append(delivery)
        Delivery.objects.bulk_create(deliveries, batch_size=1_000, ignore_conflicts=True)
        Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.QUEUED).update(
            status=Campaign.Status.SENDING, started_at=timezone.now()
        )
    queued = campaign.deliveries.filter(status=Status.QUEUED).order_by("pk")
    batches = enqueue_batches(list(queued.values_list("pk", flat=True)))
    if not batches:
        from .delivery import finish_campaigns

        finish_campaigns([campaign_id])  # everyone suppressed, or a rerun after the end
    return batches


def _batches(delivery_ids: list[int]) -> list[list[int]]:
    size = conf.batch_size()
    return [delivery_ids[i : i + size] for i in range(0, len(delivery_ids), size)]


def send_batches_after_commit(delivery_ids: list[int]) -> None:
    """Record the batch tasks in the caller's transaction (the outbox); publish after commit.

    If the broker is down then, the outbox relay publishes them when it is back.
    """
    from .tasks import send_delivery_batch

    for batch in _batches(delivery_ids):
        send_after_commit(send_delivery_batch, [batch])


def enqueue_batches(delivery_ids: list[int]) -> int:
    """Publish ``send_delivery_batch`` tasks of EMAIL_BATCH_SIZE ids now; return how many.

    For a worker fanning out a campaign, and for repairs: ``publish_many``, one
    broker connection and pipelined publishes for all of them. If publishing fails
    half way, the caller's task retries and publishes the still-queued deliveries
    again; claims absorb the repeats.
    """
    from .tasks import send_delivery_batch

    batches = _batches(delivery_ids)
    publish_many(send_delivery_batch, ([batch] for batch in batches))
    return len(batches)


def resend_failed(campaign_id: int) -> int:
    """Queue the campaign's failed deliveries again; return how many."""
    with transaction.atomic():
        failed = Delivery.objects.filter(campaign_id=campaign_id, status=Status.FAILED)
        delivery_ids = list(failed.values_list("pk", flat=True))
        if not delivery_ids:
            return 0
        _requeue(delivery_ids)
        Campaign.objects.filter(pk=campaign_id).update(
            status=Campaign.Status.SENDING, finished_at=None
        )
        send_batches_after_commit(delivery_ids)
    return len(delivery_ids)


def resend_deliveries(delivery_ids: list[int]) -> int:
    """Queue the given failed deliveries again (campaign or notification); return how many."""
    with transaction.atomic():
        failed = Delivery.objects.filter(pk__in=delivery_ids, status=Status.FAILED)
        delivery_ids = list(failed.values_list("pk", flat=True))
        campaign_ids = set(failed.exclude(campaign=None).values_list("campaign_id", flat=True))
        if not delivery_ids:
            return 0
        _requeue(delivery_ids)
        Campaign.objects.filter(pk__in=campaign_ids).update(
            status=Campaign.Status.SENDING, finished_at=None
        )
        send_batches_after_commit(delivery_ids)
    return len(delivery_ids)


def _requeue(delivery_ids: list[int]) -> None:
    # The last error stays visible until the next outcome replaces it.
    for start in range(0, len(delivery_ids), 1_000):
        Delivery.objects.filter(pk__in=delivery_ids[start : start + 1_000]).update(
            status=Status.QUEUED, claimed_by="", claimed_at=None, updated_at=timezone.now()
        )


def resume_stalled_deliveries(campaign_id: int | None = None) -> int:
    """Publish batches again for pending deliveries nobody is working on; return how many.

    For when a worker died with batches in hand (the broker gives them back only
    after the visibility timeout, an hour by default). A delivery untouched for
    longer than the claim lease is in no live task (running batches renew
    theirs), and claims make a second publish harmless, so this is safe at any
    time; run it periodically.
    """
    quiet_since = timezone.now() - timedelta(seconds=conf.claim_lease_seconds())
    stalled = Delivery.objects.filter(status__in=Delivery.PENDING, updated_at__lt=quiet_since)
    # Campaigns whose start task was never published (the broker was down).
    waiting = Campaign.objects.filter(
        status=Campaign.Status.QUEUED, send_requested_at__lt=quiet_since
    )
    if campaign_id is not None:
        stalled = stalled.filter(campaign_id=campaign_id)
        waiting = waiting.filter(pk=campaign_id)
    for waiting_id in waiting.values_list("pk", flat=True):
        request_campaign_send(waiting_id)
    delivery_ids = list(stalled.order_by("pk").values_list("pk", flat=True))
    enqueue_batches(delivery_ids)
    return len(delivery_ids)


def campaign_counts(campaign_id: int) -> dict[str, int]:
    """Deliveries of a campaign by status, and the total."""
    counts = Delivery.objects.filter(campaign_id=campaign_id).aggregate(
        total=Count("pk"),
        **{status: Count("pk", filter=Q(status=status)) for status in Status.values},
    )
    return counts


# --- unsubscribe ---------------------------------------------------------------


def email_for_unsubscribe_token(token: str) -> str:
    """The address a token was made for; ``django.core.signing.BadSignature`` if forged."""
    return read_unsubscribe_token(token)[0]


def unsubscribe(token: str) -> Suppression:
    """Put the token's address on the suppression list as unsubscribed (idempotent)."""
    email, campaign_id = read_unsubscribe_token(token)
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    record, _created = Suppression.objects.get_or_create(
        email=email, defaults={"campaign": campaign, "reason": Suppression.Reason.UNSUBSCRIBED}
    )
    return record
