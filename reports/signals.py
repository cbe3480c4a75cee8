"""Model signals: an export request's file goes when its row goes."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import ExportRequest


@receiver(post_delete, sender=ExportRequest, dispatch_uid="reports.delete_export_file")
def delete_file_with_request(sender, instance, **kwargs):
    from .services import delete_export_file

    transaction.on_commit(lambda: delete_export_file(instance))
