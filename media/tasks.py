"""Media queue tasks: thin wrappers over media.services."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="media.tasks.inspect_image")
def inspect_image(storage_name: str) -> dict:
    """Identify a stored upload from its content; corrupt or foreign files fail at once."""
    return services.inspect_image(str(storage_name))
