"""The dashboard's permissions and its audit trail of operator actions."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class OperatorAction(models.Model):
    """An action taken from the dashboard: who, what, on which worker or letter, and the answer.

    Its Meta also carries the dashboard's permissions (viewing, controlling workers).
    """

    class Kind(models.TextChoices):
        SHUTDOWN = "shutdown", "graceful shutdown"
        POOL_GROW = "pool_grow", "pool grow"
        POOL_SHRINK = "pool_shrink", "pool shrink"
        CANCEL_CONSUMER = "cancel_consumer", "stop consuming a queue"
        ADD_CONSUMER = "add_consumer", "start consuming a queue"
        REPLAY = "replay", "replay dead letters"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150)  # kept when the user is deleted
    action = models.CharField(max_length=32, choices=Kind.choices)
    target = models.CharField(max_length=255, help_text="worker hostname or dead-letter group")
    arguments = models.JSONField(default=dict, blank=True)
    succeeded = models.BooleanField(default=False)
    outcome = models.TextField(blank=True, help_text="what the workers (or replay) answered")

    class Meta:
        ordering = ("-created_at",)
        default_permissions = ("view",)
        permissions = (
            ("view_operations_dashboard", "Can view the operations dashboard"),
            ("control_workers", "Can control workers from the operations dashboard"),
        )

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username}: {self.action} {self.target}"
