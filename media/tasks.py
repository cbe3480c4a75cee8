"""Media queue tasks: thin wrappers over media.services.

Tasks take ids and primitives. A rejected file is a result, not a task failure
(the upload records the reason; retrying cannot change the verdict). A run
that fails for another reason retries when the error is transient (taskcore's
policy) and otherwise marks the upload failed, keeping its original for a
reprocess from the admin.
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from taskcore.base import BaseTask, PermanentError

from . import services


def _upload_id(args, kwargs) -> int | None:
    value = kwargs.get("upload_id", args[0] if args else None)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class UploadTask(BaseTask):
    """Shows a retry on the upload (pending, with the error) while it waits."""

    abstract = True

    def before_final_failure(self, exc, args, kwargs):
        # The base task retries transient errors; anything else ends here, and the
        # upload says so before the result is visible.
        upload_id = _upload_id(args, kwargs)
        if upload_id is not None:
            services.mark_failed(upload_id, _failure_reason(self, exc))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        upload_id = _upload_id(args, kwargs)
        if upload_id is not None:
            services.mark_retrying(upload_id, f"{type(exc).__name__}: {exc}")


def _failure_reason(task, exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = (task.request.timelimit or (None, None))[1] or task.soft_time_limit
        return (
            f"processing took longer than the time limit ({limit} s); no rendition was kept. "
            "Reprocess to try again."
        )
    return f"processing failed: {type(exc).__name__}: {exc}"


@shared_task(base=UploadTask, bind=True, name="media.tasks.process_upload")
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
