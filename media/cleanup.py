"""Media housekeeping: files no record points to, and records whose file is gone.

Called by the maintenance queue's ``media_orphans`` cleanup. Files younger than
``min_age`` are left alone: an upload being stored or processed right now has
files that its record does not point to yet.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.files.storage import Storage
from django.utils import timezone

from . import conf
from .models import Rendition, Upload

BUSY = (Upload.Status.PENDING, Upload.Status.PROCESSING)


def _walk(storage: Storage, directory: str):
    """Every file name under ``directory`` (recursively), as storage names."""
    try:
        subdirs, files = storage.listdir(directory)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{directory}/{name}"
    for sub in subdirs:
        yield from _walk(storage, f"{directory}/{sub}")


def _old_enough(storage: Storage, name: str, cutoff) -> bool:
    try:
        return storage.get_modified_time(name) < cutoff
    except (FileNotFoundError, NotImplementedError):
        return False


def delete_orphans(min_age: timedelta = timedelta(hours=1)) -> dict:
    cutoff = timezone.now() - min_age
    originals, renditions = conf.originals_storage(), conf.renditions_storage()

    known_originals = set(Upload.objects.values_list("file", flat=True))
    orphan_originals = 0
    for name in _walk(originals, conf.ORIGINALS_PREFIX):
        if name not in known_originals and _old_enough(originals, name, cutoff):
            originals.delete(name)
            orphan_originals += 1

    known_renditions = set(Rendition.objects.values_list("file", flat=True))
    orphan_renditions = 0
    for name in _walk(renditions, conf.RENDITIONS_PREFIX):
        if name not in known_renditions and _old_enough(renditions, name, cutoff):
            renditions.delete(name)
            orphan_renditions += 1

    missing_renditions = [
        rendition.pk
        for rendition in Rendition.objects.only("pk", "file").iterator(chunk_size=1000)
        if not renditions.exists(rendition.file.name)
    ]
    Rendition.objects.filter(pk__in=missing_renditions).delete()

    missing_originals = 0
    stale = Upload.objects.exclude(status__in=BUSY).filter(updated_at__lt=cutoff)
    for upload in stale.exclude(status=Upload.Status.FAILED).only("pk", "file").iterator(1000):
        if upload.file and not originals.exists(upload.file.name):
            missing_originals += Upload.objects.filter(pk=upload.pk).update(
                status=Upload.Status.FAILED, reason="the original file is missing from storage"
            )
    return {
        "orphan_originals": orphan_originals,
        "orphan_renditions": orphan_renditions,
        "rendition_records_without_file": len(missing_renditions),
        "uploads_without_original": missing_originals,
    }
