"""Files follow their rows: deleting an upload (one or a queryset) deletes its files."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Upload


@receiver(post_delete, sender=Upload, dispatch_uid="media.delete_upload_files")
def delete_upload_files(sender, instance: Upload, **kwargs):
    from .services import delete_upload_files as delete_files

    original, renditions_dir = instance.file.name or "", instance.renditions_dir
    # Only once the deletion is committed: a rolled-back delete keeps its files.
    transaction.on_commit(lambda: delete_files(original, renditions_dir), robust=True)
