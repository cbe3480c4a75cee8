"""Records that make "nothing lost" true: dead letters, the outbox, effect claims."""

from __future__ import annotations

import uuid

from django.db import models


class DeadLetter(models.Model):
    """A task that failed for good, kept with everything needed to understand and replay it."""

    class Reason(models.TextChoices):
        PERMANENT_ERROR = "permanent_error", "permanent error"
        RETRIES_EXHAUSTED = "retries_exhausted", "retries exhausted"
        REDELIVERED_TOO_OFTEN = "redelivered_too_often", "worker died on every delivery"
        TIME_LIMIT = "time_limit", "time limit exceeded"
        REFUSED = "refused", "message refused: not a valid task message"

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255, db_index=True)
    queue = models.CharField(max_length=100, db_index=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    # True when secrets were masked in args/kwargs: such a record cannot be replayed.
    arguments_masked = models.BooleanField(default=False)
    reason = models.CharField(max_length=32, choices=Reason.choices, db_index=True)
    exception_type = models.CharField(max_length=255)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    hostname = models.CharField(max_length=255, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(auto_now=True, db_index=True)
    replay_count = models.PositiveIntegerField(default=0)
    replayed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    replayed_task_id = models.CharField(max_length=255, blank=True)
    # A refused message as it was received (its first 64 KiB), for inspection.
    message = models.TextField(blank=True)

    class Meta:
        ordering = ("-last_seen",)
        indexes = (models.Index(fields=("task_name", "exception_type")),)
        permissions = (("replay_deadletter", "Can replay dead letters"),)

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.exception_type}"


class OutboxMessage(models.Model):
    """A task to publish, written in the caller's transaction, published after commit.

    The id is the Celery task id, so a row is one task whatever happens to it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_name = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # A publisher claims a row (claimed_until in the future) before publishing it,
    # so two relays never publish the same row at the same time.
    claimed_until = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ("created_at",)

    def __str__(self) -> str:
        state = "published" if self.published_at else "pending"
        return f"{self.task_name}[{self.id}] {state}"


class EffectClaim(models.Model):
    """ "Effect X for key K happened": the unique constraint makes it happen once."""

    scope = models.CharField(max_length=100)
    key = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = (models.UniqueConstraint(fields=("scope", "key"), name="unique_effect"),)

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
