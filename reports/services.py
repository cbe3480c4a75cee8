"""Exports and admin reports: create a request, run it on the reports queue, clean up.

``create_export`` / ``create_task_activity_report`` validate everything a user
can get wrong (model, fields, filter, permission), save one ``ExportRequest``
and enqueue ``reports.tasks.run_export`` after the transaction commits.

``run_export`` (in the worker) streams rows with ``values_list().iterator()`` into
a temporary file beside the final one, then renames it: the final name only ever
holds a complete file, and ``READY`` is set after the rename. A rerun writes a
new temporary file and replaces the old one the same way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ALL_VAR, PAGE_VAR
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.db import connection, transaction
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils import timezone

from notifications.api import send_email_after_commit
from taskcore import outbox
from taskcore.base import PermanentError, is_transient
from taskcore.queues import queue_table

from . import activity, conf, sqltext, writers
from .exportable import (
    BadFilter,
    ExportError,
    ExportPermissionDenied,
    UnknownModel,
    can_export,
    check_fields,
    exportable_fields,
    filtered_queryset,
    require_export_permission,
    resolve_model,
)
from .models import ExportRequest
from .writers import neutralise_formula

__all__ = [
    "BadFilter",
    "ExportError",
    "ExportPermissionDenied",
    "UnknownModel",
    "create_export",
    "create_task_activity_report",
    "delete_expired_exports",
    "export_model_csv",
    "exportable_fields",
    "neutralise_formula",
    "rerun_export",
    "run_export",
]

logger = logging.getLogger(__name__)

Status = ExportRequest.Status
ProgressCallback = Callable[[int, int | None], None]

# Progress is saved at most about 100 times per export, and never more often
# than every PROGRESS_MIN_ROWS rows.
PROGRESS_MIN_ROWS = 1000
PARTIAL_PREFIX = ".partial-"
# Change-list parameters that choose a page, not rows.
NOT_FILTERS = (PAGE_VAR, ALL_VAR)
XLSX_TMP_DIR = ".xlsx-tmp"


# --- creating requests ---------------------------------------------------------


def _check_format(fmt: str) -> str:
    fmt = str(fmt or "").lower()
    if fmt not in ExportRequest.Format.values:
        raise ExportError(f"unknown format {fmt!r}; choose one of: csv, xlsx")
    return fmt


def create_export(
    *,
    user,
    model_label: str,
    fields: Iterable[str] | None = None,
    filters: dict | None = None,
    fmt: str = "csv",
    admin_query: str | None = None,
    link_base: str = "",
) -> ExportRequest:
    """Validate and save an export of ``model_label`` for ``user``; enqueue it on commit.

    ``filters``: ORM lookups on the model's exportable fields. ``admin_query``:
    the admin change list's query string, for "all matching" exports (the
    change list's own filters and search are applied again in the worker).
    """
    fmt = _check_format(fmt)
    model = resolve_model(model_label)
    require_export_permission(user, model)
    chosen = check_fields(model, fields)
    filtered_queryset(model, filters)  # a bad filter fails now, not in the worker
    if admin_query is not None:
        _changelist_queryset(model, user, admin_query)
    export = ExportRequest(
        kind=ExportRequest.Kind.MODEL,
        model_label=model._meta.label,
        fields=chosen,
        filters=dict(filters or {}),
        admin_query=admin_query or "",
        use_admin_query=admin_query is not None,
        format=fmt,
        requested_by=user,
        link_base=link_base,
    )
    return _save_and_enqueue(export)


def create_task_activity_report(
    *,
    user,
    since: datetime | None = None,
    until: datetime | None = None,
    fmt: str = "csv",
    link_base: str = "",
) -> ExportRequest:
    """The task-activity report over [since, until) (default: the last 7 days)."""
    from .models import TaskRun

    fmt = _check_format(fmt)
    until = until or timezone.now()
    since = since or until - timedelta(days=7)
    if since >= until:
        raise ExportError(f"the period is empty: since {since} is not before until {until}")
    require_export_permission(user, TaskRun)
    export = ExportRequest(
        kind=ExportRequest.Kind.TASK_ACTIVITY,
        model_label=TaskRun._meta.label,
        fields=activity.report_columns(),
        params={"since": since.isoformat(), "until": until.isoformat()},
        format=fmt,
        requested_by=user,
        link_base=link_base,
    )
    return _save_and_enqueue(export)


def rerun_export(export: ExportRequest) -> ExportRequest:
    """Run a request again: its file is replaced when the new one is complete."""
    if export.status in (Status.PENDING, Status.RUNNING):
        raise ExportError(f"export #{export.pk} is {export.status}; wait for it to finish")
    export.rows_done, export.rows_total, export.error = 0, None, ""
    return _save_and_enqueue(export)


def _save_and_enqueue(export: ExportRequest) -> ExportRequest:
    """Save the request and its task in one transaction (taskcore's outbox).

    The task is published after commit, or by the outbox relay if the broker
    is away then: a saved request always gets its run. The outbox row's id is
    the task id, kept on the request so stale messages can be told apart.
    """
    from .tasks import run_export as run_export_task

    with transaction.atomic():
        export.status = Status.PENDING
        export.save()
        message = outbox.send_after_commit(run_export_task, [export.pk])
        export.task_id = str(message.pk)
        ExportRequest.objects.filter(pk=export.pk).update(task_id=export.task_id)
    return export


# --- running -------------------------------------------------------------------


def export_path(export: ExportRequest) -> Path | None:
    """The file of a request, if it has one; never outside the export directory."""
    if not export.file_name or "/" in export.file_name or export.file_name.startswith("."):
        return None
    return conf.export_root() / export.file_name


def _file_name(export: ExportRequest) -> str:
    return f"export-{export.pk}.{export.format}"


def _changelist_queryset(model, user, query: str):
    """What the admin change list shows ``user`` for ``query``: its filters and search."""
    model_admin = admin.site.get_model_admin(model)
    params = QueryDict(query, mutable=True)
    for name in NOT_FILTERS:  # the page shown then may not exist now
        params.pop(name, None)
    request = HttpRequest()
    request.method = "GET"
    request.GET = params
    request.user = user
    request.path = request.path_info = reverse(
        f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
    )
    try:
        changelist = model_admin.get_changelist_instance(request)
    except (IncorrectLookupParameters, SuspiciousOperation, PermissionDenied) as exc:
        raise BadFilter(
            f"the admin filter {query!r} of {model._meta.label} is not valid: {exc}"
        ) from None
    return changelist.queryset


def _model_source(export: ExportRequest, chunk_size: int):
    model = resolve_model(export.model_label)
    user = export.requested_by
    if user is not None:
        # Checked again here: a permission taken away since the request counts.
        require_export_permission(user, model)
    elif export.use_admin_query:
        raise ExportPermissionDenied("an admin 'all matching' export needs its requesting user")
    fields = check_fields(model, export.fields)
    queryset = filtered_queryset(model, export.filters)
    if export.use_admin_query:
        matching = _changelist_queryset(model, user, export.admin_query)
        # By primary key: the change list may use distinct() or annotations,
        # which must not change (or collapse) the exported rows.
        queryset = queryset.filter(pk__in=matching.values("pk"))
    queryset = queryset.order_by("pk")
    total = queryset.count()
    if export.format == ExportRequest.Format.CSV:
        # The database renders dates and numbers as text (see reports.sqltext).
        annotations, names, kinds = sqltext.csv_columns(model, fields, connection.vendor)
        queryset = queryset.annotate(**annotations)
    else:
        names = fields
        kinds = [writers.kind_of_field(model._meta.get_field(name)) for name in fields]
    rows = queryset.values_list(*names).iterator(chunk_size=chunk_size)
    return fields, kinds, total, rows


def _task_activity_source(export: ExportRequest, chunk_size: int):
    from .models import TaskRun

    user = export.requested_by
    if user is not None:
        require_export_permission(user, TaskRun)
    try:
        since = datetime.fromisoformat(export.params["since"])
        until = datetime.fromisoformat(export.params["until"])
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"report period is not valid: {export.params!r}") from None
    total, rows = activity.task_activity_rows(since, until, chunk_size=chunk_size)
    return activity.report_columns(), activity.report_kinds(), total, rows


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(islice(rows, size))
        if not chunk:
            return
        yield chunk


def write_export_file(
    target: Path,
    fmt: str,
    headers: list[str],
    kinds: list[str],
    rows: Iterator,
    *,
    chunk_size: int = 2000,
    on_rows: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Write rows to ``target`` through a temporary file; return (rows, bytes)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f"{PARTIAL_PREFIX}{target.stem}-", suffix=f".{fmt}"
    )
    done = 0
    try:
        if fmt == "csv":
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
                sink = writers.CsvSink(handle, headers, kinds)
                for chunk in _chunks(rows, chunk_size):
                    sink.write_rows(chunk)
                    done += len(chunk)
                    if on_rows:
                        on_rows(done)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            xlsx_tmp = target.parent / XLSX_TMP_DIR
            xlsx_tmp.mkdir(exist_ok=True, mode=0o700)
            sink = writers.XlsxSink(tmp_name, headers, kinds, tmpdir=xlsx_tmp)
            for chunk in _chunks(rows, chunk_size):
                sink.write_rows(chunk)
                done += len(chunk)
                if on_rows:
                    on_rows(done)
            sink.close()
            with open(tmp_name, "rb") as handle:
                os.fsync(handle.fileno())
        # The only way a file gets its final name: complete, flushed, renamed.
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return done, target.stat().st_size


def _update(export: ExportRequest, **values) -> None:
    for name, value in values.items():
        setattr(export, name, value)
    ExportRequest.objects.filter(pk=export.pk).update(**values)


def run_export(
    export_id: int, *, task_id: str | None = None, progress: ProgressCallback | None = None
) -> dict:
    """Produce the file of one request (in a worker). Safe to run again."""
    try:
        export = ExportRequest.objects.select_related("requested_by").get(pk=export_id)
    except ExportRequest.DoesNotExist:
        raise PermanentError(f"export request #{export_id} does not exist") from None
    summary = {"export_id": export.pk}
    if task_id and export.task_id and export.task_id != task_id:
        # A newer run was requested: this message is stale (e.g. redelivered).
        return {**summary, "skipped": f"superseded by task {export.task_id}"}
    path = export_path(export)
    if export.status == Status.READY and path is not None and path.exists():
        return {**summary, "status": export.status, "rows": export.rows_done, "skipped": "ready"}

    chunk_size = conf.chunk_size()
    _update(
        export,
        status=Status.RUNNING,
        started_at=timezone.now(),
        finished_at=None,
        rows_done=0,
        rows_total=None,
        error="",
    )
    try:
        if export.kind == ExportRequest.Kind.TASK_ACTIVITY:
            headers, kinds, total, rows = _task_activity_source(export, chunk_size)
        else:
            headers, kinds, total, rows = _model_source(export, chunk_size)
        _update(export, rows_total=total)
        if progress:
            progress(0, total)
        every = max(PROGRESS_MIN_ROWS, (total or 0) // 100)
        last_saved = 0

        def on_rows(done: int) -> None:
            nonlocal last_saved
            if done - last_saved >= every:
                last_saved = done
                _update(export, rows_done=done)
                if progress:
                    progress(done, total)

        target = conf.export_root() / _file_name(export)
        started = time.perf_counter()
        done, size = write_export_file(
            target,
            export.format,
            headers,
            kinds,
            rows,
            chunk_size=chunk_size,
            on_rows=on_rows,
        )
    except Exception as exc:
        _fail(export, exc)
        raise
    finished = timezone.now()
    # READY and the email to send commit together: a crash in between cannot
    # leave a ready export whose requester is never told (a rerun skips READY).
    with transaction.atomic():
        _update(
            export,
            status=Status.READY,
            file_name=target.name,
            file_size=size,
            rows_done=done,
            rows_total=done,
            finished_at=finished,
            expires_at=finished + timedelta(seconds=conf.export_ttl_seconds()),
        )
        _notify(export)
    if progress:
        progress(done, done)
    logger.info(
        "export #%s ready: %s rows of %s in %.2fs, %s bytes",
        export.pk,
        done,
        export.model_label,
        time.perf_counter() - started,
        size,
    )
    return {**summary, "status": Status.READY, "rows": done, "file": target.name, "bytes": size}


def _export_queue():
    """The queue table's entry for the queue exports run on (its time limits)."""
    return queue_table().spec_for_task("reports.tasks.run_export")


def _fail(export: ExportRequest, exc: Exception) -> None:
    retrying = is_transient(exc)
    message = str(exc) or type(exc).__name__
    if type(exc).__name__ == "SoftTimeLimitExceeded":
        limit = _export_queue().soft_time_limit
        message = f"stopped: the export took longer than the time limit ({limit} s)"
        retrying = False
    try:
        if retrying:
            _update(export, status=Status.PENDING, error=f"will retry: {message}")
        else:
            old = export_path(export)
            if old is not None:
                old.unlink(missing_ok=True)
            with transaction.atomic():
                _update(
                    export,
                    status=Status.FAILED,
                    error=message,
                    finished_at=timezone.now(),
                    file_name="",
                    file_size=None,
                )
                _notify(export)
    except Exception:  # the database may be what failed
        logger.warning("could not record the failure of export #%s", export.pk, exc_info=True)


def fail_unfinished(export_id, task_id: str, reason: str) -> bool:
    """Mark a request failed when its task failed for good outside ``run_export``'s hands.

    A hard time limit or a lost worker kills the process before it can record
    anything, and a transient error that used up its retries leaves the request
    "pending, will retry". Called for the pipeline's FAILED event (reports/apps.py,
    reports.tasks.fail_unfinished_export); does nothing when the
    run already recorded its outcome or a newer run owns the request.
    """
    try:
        export = ExportRequest.objects.select_related("requested_by").get(
            pk=export_id, task_id=task_id, status__in=(Status.PENDING, Status.RUNNING)
        )
    except (ExportRequest.DoesNotExist, ValueError, TypeError):
        return False
    with transaction.atomic():
        _update(export, status=Status.FAILED, error=reason, finished_at=timezone.now())
        _notify(export)
    return True


# --- notification ----------------------------------------------------------------


def download_url(export: ExportRequest) -> str:
    path = reverse("reports:download", args=[export.pk])
    return f"{(export.link_base or conf.site_url()).rstrip('/')}{path}"


def _describe(export: ExportRequest) -> str:
    if export.kind == ExportRequest.Kind.TASK_ACTIVITY:
        return "task-activity report"
    return f"export of {export.model_label}"


def _notify(export: ExportRequest) -> None:
    """Email the requester through the email queue, sent when the caller's transaction commits."""
    user = export.requested_by
    address = getattr(user, "email", "") if user is not None else ""
    if not address:
        return
    what = _describe(export)
    if export.status == Status.READY:
        link = download_url(export)
        expires = timezone.localtime(export.expires_at).strftime("%Y-%m-%d %H:%M %Z")
        subject = f"Your {what} is ready ({export.format.upper()}, {export.rows_done} rows)"
        text = (
            f"Hello {user.get_username()},\n\n"
            f"your {what} (request #{export.pk}) is ready: {export.rows_done} rows, "
            f"{export.format.upper()}.\n\nDownload it here (sign-in required):\n{link}\n\n"
            f"The file is deleted after {expires}.\n"
        )
    else:
        subject = f"Your {what} failed"
        text = (
            f"Hello {user.get_username()},\n\nyour {what} (request #{export.pk}) failed:\n"
            f"{export.error}\n"
        )
    send_email_after_commit([address], subject, text)


# --- compatibility ---------------------------------------------------------------


def export_model_csv(model_label: str, fields: list[str] | None, *, task_id: str) -> dict:
    """A system export without a requesting user (code only; downloadable by superusers).

    One request per task id, so a redelivered message does not add a second one.
    """
    fmt = ExportRequest.Format.CSV
    model = resolve_model(model_label)
    chosen = check_fields(model, fields)
    export, _ = ExportRequest.objects.get_or_create(
        task_id=task_id,
        defaults={"model_label": model._meta.label, "fields": chosen, "format": fmt},
    )
    result = run_export(export.pk, task_id=task_id)
    return {**result, "path": str(export_path(ExportRequest.objects.get(pk=export.pk)))}


# --- expiry ----------------------------------------------------------------------


def delete_expired_exports(now: datetime | None = None, batch_size: int = 500) -> dict:
    """Delete the files of expired exports and mark them EXPIRED; sweep stale partials.

    The rows stay (who exported what, when). Safe to run at any time and
    concurrently with exports: a temporary file is only removed once it is
    older than twice the reports queue's hard time limit, so no running
    export loses its file. Returns counts.
    """
    now = now or timezone.now()
    expired = files = 0
    while True:
        batch = list(
            ExportRequest.objects.filter(expires_at__lte=now)
            .exclude(status=Status.EXPIRED)
            .exclude(status__in=(Status.PENDING, Status.RUNNING))
            .order_by("pk")
            .values_list("pk", "file_name")[:batch_size]
        )
        if not batch:
            break
        for pk, file_name in batch:
            path = export_path(ExportRequest(pk=pk, file_name=file_name))
            if path is not None and path.exists():
                path.unlink(missing_ok=True)
                files += 1
        expired += ExportRequest.objects.filter(pk__in=[pk for pk, _ in batch]).update(
            status=Status.EXPIRED, file_name="", file_size=None
        )
    partials = _sweep_partials(now)
    return {"expired": expired, "files_deleted": files, "partials_deleted": partials}


def _sweep_partials(now: datetime) -> int:
    root = conf.export_root()
    if not root.is_dir():
        return 0
    cutoff = now.timestamp() - 2 * _export_queue().time_limit
    removed = 0
    candidates = [p for p in root.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    xlsx_tmp = root / XLSX_TMP_DIR
    if xlsx_tmp.is_dir():
        candidates += list(xlsx_tmp.iterdir())
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def delete_old_task_runs(
    older_than: timedelta = timedelta(days=90), batch_size: int = 10_000
) -> int:
    """Delete ``TaskRun`` rows finished before now - ``older_than``, in batches; return the count.

    The table grows by one row per task execution: call this from the
    maintenance schedule (the task-activity report only needs the periods asked).
    """
    from .models import TaskRun

    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        pks = list(
            TaskRun.objects.filter(finished_at__lt=cutoff)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not pks:
            return deleted
        deleted += TaskRun.objects.filter(pk__in=pks).delete()[0]


def delete_export_file(export: ExportRequest) -> None:
    path = export_path(export)
    if path is not None:
        path.unlink(missing_ok=True)


__all__ += [
    "can_export",
    "delete_export_file",
    "delete_old_task_runs",
    "download_url",
    "export_path",
]
