"""What the email queue records: campaigns, notifications, one delivery per recipient.

A ``Delivery`` is the unit of sending. Its unique key (campaign or
notification, recipient) makes a recipient appear once, and its claim
(``status=sending`` with the claiming task's id) is taken before the message
goes out, so a batch delivered twice by the broker never sends twice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Campaign(models.Model):
    """A bulk mailing: templates, an audience, and the progress of sending it."""

    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        QUEUED = "queued", "queued (waiting for a worker)"
        SENDING = "sending", "sending"
        DONE = "done", "done"

    name = models.CharField(max_length=200)
    subject = models.CharField(
        max_length=300,
        help_text="A Django template on one line, e.g. <code>News for {{ name }}</code>.",
    )
    text_template = models.TextField(
        "text body",
        help_text="Django template of the plain-text body. Variables: {{ name }}, {{ email }}, "
        "{{ campaign }}, {{ unsubscribe_url }}. An unsubscribe footer is added.",
    )
    html_template = models.TextField(
        "HTML body",
        blank=True,
        help_text="Django template of the HTML body (optional). Variables are HTML-escaped.",
    )
    audience = models.TextField(
        help_text="One recipient per line: <code>ada@example.org</code> or "
        "<code>Ada Lovelace &lt;ada@example.org&gt;</code>. Blank lines and # comments are "
        "ignored; unsubscribed addresses are skipped."
    )
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.DRAFT, db_index=True
    )
    # Why the last attempt to start it failed (e.g. an audience line edited badly).
    error = models.TextField(blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    send_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("-created_at",)
        permissions = (("send_campaign", "Can send campaigns and resend failed recipients"),)

    def __str__(self) -> str:
        return self.name


class Notification(models.Model):
    """A transactional email (rendered from a template in code) to one or a few people."""

    template = models.CharField(max_length=100)
    subject = models.CharField(max_length=300)
    text_body = models.TextField()
    html_body = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.template}: {self.subject}"


class Delivery(models.Model):
    """One message to one recipient, with what the SMTP server answered."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        SENDING = "sending", "sending"
        DEFERRED = "deferred", "deferred (server said: try later)"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped (suppressed)"

    # Waiting for a batch task; a campaign is done when none of its deliveries is.
    PENDING = (Status.QUEUED, Status.SENDING, Status.DEFERRED)

    campaign = models.ForeignKey(
        Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    notification = models.ForeignKey(
        Notification, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    email = models.CharField(max_length=254)
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Claims taken (a redelivered or retried batch takes a claim again).
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField("claimed by task", max_length=255, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Fixed when the delivery is created: a resend after a crash carries the same
    # Message-ID, so a receiving system can recognise a duplicate.
    message_id = models.CharField(max_length=255)
    smtp_code = models.PositiveSmallIntegerField("SMTP code", null=True, blank=True)
    error = models.TextField("server's answer or error", blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ("id",)
        constraints = (
            # The idempotency keys. NULLs are distinct, so each applies to its own kind.
            models.UniqueConstraint(
                fields=("campaign", "email"), name="notifications_once_per_campaign"
            ),
            models.UniqueConstraint(
                fields=("notification", "email"), name="notifications_once_per_notification"
            ),
            models.CheckConstraint(
                condition=Q(campaign__isnull=False, notification__isnull=True)
                | Q(campaign__isnull=True, notification__isnull=False),
                name="notifications_delivery_has_one_source",
            ),
        )
        indexes = (
            models.Index(fields=("campaign", "status")),
            models.Index(fields=("notification", "status")),
        )

    def __str__(self) -> str:
        return f"{self.email} ({self.status})"


class Suppression(models.Model):
    """An address campaigns never send to again, and why.

    Written when someone unsubscribes, when a relay refuses the address for good
    (a 5xx answer to RCPT: a hard bounce), and by ``import_bounces`` from a
    provider's bounce list. Transactional notifications (a password reset) are
    not held back by it. Removing an entry leaves a ``SuppressionRemoval``.
    """

    class Reason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed", "unsubscribed"
        HARD_BOUNCE = "hard_bounce", "hard bounce (refused by the receiving server)"
        IMPORTED = "imported", "imported from a provider's bounce list"

    email = models.CharField(max_length=254, unique=True)
    reason = models.CharField(max_length=20, choices=Reason.choices, default=Reason.UNSUBSCRIBED)
    # The server's answer, the import file and line, ...: what a person checks before removing.
    detail = models.TextField(blank=True)
    campaign = models.ForeignKey(
        Campaign,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="The campaign whose link was used or whose mail bounced.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.email} ({self.reason})"

    @classmethod
    def among(cls, emails) -> dict[str, str]:
        """The suppressed addresses among ``emails``, each with its reason."""
        emails, found = list(emails), {}
        # In chunks: databases limit the parameters of one query (SQLite 32,766).
        for start in range(0, len(emails), 1_000):
            chunk = emails[start : start + 1_000]
            found.update(cls.objects.filter(email__in=chunk).values_list("email", "reason"))
        return found


class SuppressionRemoval(models.Model):
    """The audit of a suppression entry removed: who, when, and what it said."""

    email = models.CharField(max_length=254, db_index=True)
    reason = models.CharField(max_length=20)
    detail = models.TextField(blank=True)
    suppressed_at = models.DateTimeField()
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    removed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-removed_at",)

    def __str__(self) -> str:
        return f"{self.email} removed {self.removed_at:%Y-%m-%d %H:%M}"
