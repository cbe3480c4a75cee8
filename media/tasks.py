"""Media queue tasks: thin wrappers over media.services.

Tasks take ids and primitives. A rejected file is a result, not a task failure
(the upload records the reason; retrying cannot change the verdict). A run
that fails for another reason retries when the error is transient (taskcore's
policy) and otherwise marks the upload failed, keeping its original for a
reprocess from the admin. Both are told by the task pipeline: the subscribers at
the end are registered in ``MediaConfig.ready()``.
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from taskcore.base import PermanentError
from taskcore.pipeline import TaskEvent

from . import services

PROCESS_UPLOAD = "media.tasks.process_upload"


@shared_task(bind=True, name=PROCESS_UPLOAD)
def process_upload(self, upload_id: int) -> dict:
    """Validate, clean and render one upload; returns its status (ready or rejected)."""
    try:
        upload_id = int(upload_id)
    except (TypeError, ValueError):
        raise PermanentError(f"upload_id must be an integer, got {upload_id!r}") from None
    return services.process_upload(upload_id)


@shared_task(name="media.tasks.fail_stale_uploads")
def fail_stale_uploads() -> int:
    """For beat: uploads whose run was killed (hard time limit, worker lost) become failed."""
    return services.fail_stale_uploads()


@shared_task(name="media.tasks.inspect_image")
def inspect_image(storage_name: str) -> dict:
    """Identify a stored image from its content; corrupt or foreign files fail at once."""
    return services.inspect_image(str(storage_name))


# --- pipeline subscribers for process_upload ------------------------------------


def _upload_id(event: TaskEvent) -> int | None:
    value = (event.kwargs or {}).get("upload_id", event.args[0] if event.args else None)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def mark_upload_failed(failed: TaskEvent) -> None:
    """FAILED: the upload says so, before the failed result is visible (within the run)."""
    upload_id = _upload_id(failed)
    if upload_id is not None:
        services.mark_failed(upload_id, _failure_reason(failed))


def mark_upload_retrying(retried: TaskEvent) -> None:
    """RETRIED: the upload shows the retry (pending, with the error) while it waits."""
    upload_id = _upload_id(retried)
    if upload_id is not None:
        services.mark_retrying(upload_id, f"{retried.exception_type}: {retried.exception}")


def _failure_reason(failed: TaskEvent) -> str:
    if isinstance(failed.exception, SoftTimeLimitExceeded):
        limit = (failed.detail or {}).get("soft_time_limit")
        return (
            f"processing took longer than the time limit ({limit} s); no rendition was kept. "
            "Reprocess to try again."
        )
    return f"processing failed: {failed.exception_type}: {failed.exception}"
