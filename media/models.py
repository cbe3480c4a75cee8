"""Uploaded images and the renditions made from them."""

from __future__ import annotations

import os
import uuid

from django.conf import settings
from django.db import models

from . import conf


def original_upload_to(instance: Upload, filename: str) -> str:
    """A generated name: the uploader's name and path never reach the storage.

    Only a known image extension is kept (lowercased, canonical), so a pending
    file is never served as HTML or script; anything else gets ``.upload``.
    """
    return f"{conf.ORIGINALS_PREFIX}/{instance.key.hex}{stored_extension(filename)}"


def stored_extension(filename: str) -> str:
    extension = os.path.splitext(filename)[1].lower()
    for fmt, extensions in conf.INPUT_FORMATS.items():
        if extension in extensions:
            return conf.OUTPUT_EXTENSIONS.get(fmt, extensions[0])
    return ".upload"


class Upload(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        # The file's fault: not an allowed image, too big, corrupt. Files are deleted.
        REJECTED = "rejected", "Rejected"
        # Not the file's fault (time limit, retries exhausted): the original is kept
        # and "Reprocess" in the admin tries again.
        FAILED = "failed", "Failed"

    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    file = models.FileField(
        "original",
        upload_to=original_upload_to,
        storage=conf.originals_storage,
        max_length=255,
        blank=True,
        help_text="Stored under a generated name; emptied when the upload is rejected.",
    )
    original_name = models.CharField(
        max_length=255, help_text="The uploader's file name, for display only."
    )
    size_bytes = models.PositiveBigIntegerField(default=0)
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    reason = models.TextField(blank=True, help_text="Why the upload was rejected or failed.")
    detected_format = models.CharField(max_length=8, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="Processing runs, including retries and reprocessing."
    )
    task_id = models.CharField(max_length=64, blank=True, help_text="The last processing task.")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="media_uploads",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.original_name} ({self.get_status_display()})"

    @property
    def renditions_dir(self) -> str:
        return f"{conf.RENDITIONS_PREFIX}/{self.key.hex}"


class Rendition(models.Model):
    """One derived image; its name is deterministic, so reprocessing overwrites it."""

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="renditions")
    name = models.CharField(max_length=50)
    file = models.FileField(storage=conf.renditions_storage, max_length=255)
    format = models.CharField(max_length=8)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("upload", "-width", "name")
        constraints = [
            models.UniqueConstraint(fields=("upload", "name"), name="media_rendition_once")
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.width}x{self.height} {self.format}"
