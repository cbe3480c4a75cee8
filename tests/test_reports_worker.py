"""Reports with real workers: exports read back, progress, email, admin action, downloads."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import time

import pytest
import redis
from django.db.models import Q
from test_reports_support import (
    EXPORTED_FIELDS,
    csv_text,
    expected_rows,
    grant_view,
    make_records,
    make_tricky_records,
    read_csv,
    read_xlsx,
    wait_for_export,
)

from reports import services
from reports.models import ExportRequest, SampleRecord, TaskRun
from taskcore.testing.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user(
        "viewer", email="viewer@example.org", password="pw-irrelevant-123", is_staff=True
    )
    grant_view(user, "samplerecord")
    return django_user_model.objects.get(pk=user.pk)


def test_csv_and_xlsx_exports_read_back_equal_and_the_requester_is_emailed(
    start_worker, smtp_server, viewer
):
    make_tricky_records()
    as_csv = services.create_export(
        user=viewer, model_label="reports.SampleRecord", link_base="https://admin.example.org"
    )
    as_xlsx = services.create_export(user=viewer, model_label="reports.SampleRecord", fmt="xlsx")
    start_worker(["reports", "email"], env=smtp_server.worker_env, concurrency=2)

    as_csv, as_xlsx = wait_for_export(as_csv), wait_for_export(as_xlsx)
    assert (as_csv.status, as_xlsx.status) == ("ready", "ready"), (as_csv.error, as_xlsx.error)
    assert as_csv.rows_done == as_csv.rows_total == len(expected_rows())

    lines = read_csv(services.export_path(as_csv))
    assert lines[0] == EXPORTED_FIELDS  # api_token is never exported
    assert lines[1:] == [[csv_text(value) for value in row] for row in expected_rows()]
    assert '\'=HYPERLINK("http://evil.example","click")' in [line[1] for line in lines]

    values, quoted = read_xlsx(services.export_path(as_xlsx))
    assert values[0] == EXPORTED_FIELDS
    for got, flags, row in zip(values[1:], quoted[1:], expected_rows(), strict=True):
        assert got[1:4] == list(row[1:4]) and got[5] == row[5] and got[7] == row[7]
        assert got[4] == (None if row[4] is None else float(row[4]))
        assert abs(got[6] - row[6].replace(tzinfo=None)) < dt.timedelta(milliseconds=1)
        assert flags[1] == row[1].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert flags[7] == (row[7] or "").startswith(("=", "+", "-", "@", "\t", "\r"))

    # One email per export, through the email queue, with an authorised link.
    messages = wait_for(lambda: len(smtp_server.messages) >= 2 and smtp_server.messages)
    by_subject = {m["Subject"]: m for m in messages}
    rows = len(expected_rows())
    csv_mail = by_subject[f"Your export of reports.SampleRecord is ready (CSV, {rows} rows)"]
    assert csv_mail["To"] == "viewer@example.org"
    body = csv_mail.get_content()
    assert f"https://admin.example.org/reports/exports/{as_csv.pk}/download/" in body
    assert f"Your export of reports.SampleRecord is ready (XLSX, {rows} rows)" in by_subject

    # Every task run was recorded by the worker that ran it. Runs are written in
    # batches, each task's after it returns: the exports' records may land after
    # the emails' (the export queues its email before it finishes), so wait for all.
    def recorded(task_name: str) -> int:
        return TaskRun.objects.filter(task_name=task_name).count()

    assert wait_for(
        lambda: (
            recorded("notifications.tasks.send_email_message") == 2
            and recorded("reports.tasks.run_export") == 2
        )
    )
    runs = TaskRun.objects.filter(task_name="reports.tasks.run_export")
    assert [(r.queue, r.state) for r in runs] == [("reports", "SUCCESS")] * 2
    assert all(r.runtime > 0 for r in runs)


def test_progress_moves_in_the_task_state_and_the_record(start_worker, app, viewer):
    make_records(6000)
    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    channel = f"celery-task-meta-{export.task_id}"
    pubsub = redis.Redis.from_url(app.conf.result_backend).pubsub()
    pubsub.subscribe(channel)
    start_worker(["reports"])  # the export is queued already; listen from its first update

    progress, record_seen, final = [], [], None
    deadline = time.monotonic() + 60
    while final is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if not message or message["type"] != "message":
            continue
        meta = json.loads(message["data"])
        if meta["status"] == "PROGRESS":
            progress.append(meta["result"])
            export.refresh_from_db()
            record_seen.append(export.rows_done)
        elif meta["status"] in ("SUCCESS", "FAILURE"):
            final = meta
    pubsub.close()

    assert final and final["status"] == "SUCCESS", final
    done = [p["rows_done"] for p in progress]
    assert done[0] == 0 and done[-1] == 6000 and len(set(done)) >= 4
    assert done == sorted(done)
    assert all(p["rows_total"] == 6000 and p["export_id"] == export.pk for p in progress)
    assert [p["percent"] for p in progress][-1] == 100
    # The record is saved before the task state: it is never behind what the state says.
    assert all(seen >= p for seen, p in zip(record_seen, done, strict=True))
    export.refresh_from_db()
    assert (export.status, export.rows_done, export.rows_total) == ("ready", 6000, 6000)


def test_admin_action_exports_all_matching_and_downloads_are_authorised(
    start_worker, client, viewer, django_user_model
):
    make_tricky_records()
    changelist = "/admin/reports/samplerecord/?active__exact=1&q=e"
    client.force_login(viewer)
    page = client.post(
        changelist, {"action": "export_to_file", "select_across": "1", "_selected_action": ["1"]}
    )
    assert page.status_code == 200 and b"Export all" in page.content
    started = client.post(
        changelist,
        {
            "action": "export_to_file",
            "select_across": "1",
            "_selected_action": ["1"],
            "index": "0",
            "post": "yes",
            "format": "xlsx",
            "fields": ["id", "name"],
        },
    )
    assert started.status_code == 302
    export = ExportRequest.objects.get()
    assert export.use_admin_query and export.admin_query == "active__exact=1&q=e"
    matching = SampleRecord.objects.filter(  # the admin's list filter and search, name or email
        Q(name__icontains="e") | Q(email__icontains="e"), active=True
    )

    download = f"/reports/exports/{export.pk}/download/"
    assert client.get(download).status_code == 409  # not ready yet: nothing is served
    start_worker(["reports"])
    export = wait_for_export(export)
    assert export.status == "ready", export.error

    response = client.get(download)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith(
        f'attachment; filename="reports-samplerecord-{export.pk}-'
    )
    assert "no-store" in response["Cache-Control"]
    saved = services.export_path(export)
    saved_bytes = saved.read_bytes()
    assert b"".join(response.streaming_content) == saved_bytes
    values, _ = read_xlsx(saved)
    assert values[1:] == [list(row) for row in expected_rows(matching, ["id", "name"])]
    assert 0 < len(values) - 1 < SampleRecord.objects.count()

    # The admin list shows the progress bar and the download link.
    listing = client.get("/admin/reports/exportrequest/")
    assert b"<progress" in listing.content and download.encode() in listing.content

    # Only the requester or a superuser downloads; a public URL does not exist.
    other = django_user_model.objects.create_user("other", password="pw-irrelevant-123")
    grant_view(other, "samplerecord")
    client.force_login(other)
    assert client.get(download).status_code == 404
    assert client.get(f"/reports/exports/{export.pk}/progress/").status_code == 404
    root = django_user_model.objects.create_superuser("root", password="pw-irrelevant-123")
    client.force_login(root)
    assert client.get(download).status_code == 200
    client.logout()
    anonymous = client.get(download)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    assert client.get(f"/media/exports/{saved.name}").status_code == 404
    assert "media" not in saved.parts

    # A requester who lost the view permission no longer downloads; expired is gone.
    viewer.user_permissions.clear()
    client.force_login(django_user_model.objects.get(pk=viewer.pk))
    assert client.get(download).status_code == 404
    client.force_login(root)
    ExportRequest.objects.filter(pk=export.pk).update(
        expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )
    assert client.get(download).status_code == 410


def test_task_activity_report_from_real_runs(start_worker, viewer):
    from taskcore.tasks import debug_task

    grant_view(viewer, "taskrun")
    start_worker(["default", "reports"], concurrency=2)
    debug_task.delay("ok").get(timeout=20)
    debug_task.delay("ok again").get(timeout=20)
    with pytest.raises(Exception, match="sleep must be between"):
        debug_task.delay(sleep=-1).get(timeout=20)
    wait_for(lambda: TaskRun.objects.filter(task_name="taskcore.tasks.debug_task").count() == 3)

    export = services.create_task_activity_report(user=viewer, fmt="csv")
    export = wait_for_export(export)
    assert export.status == "ready", export.error
    lines = read_csv(services.export_path(export))
    header, rows = lines[0], {line[1]: dict(zip(lines[0], line, strict=True)) for line in lines[1:]}
    assert header[:6] == ["queue", "task", "runs", "succeeded", "failed", "retried"]
    assert header[-4:] == ["median_runtime_s", "p95_runtime_s", "max_runtime_s", "last_finished_at"]
    debug = rows["taskcore.tasks.debug_task"]
    assert (debug["queue"], debug["runs"], debug["succeeded"], debug["failed"]) == (
        "default",
        "3",
        "2",
        "1",
    )
    assert debug["dead_letters"] == "1"  # taskcore keeps the failure as a dead letter
    assert float(debug["median_runtime_s"]) > 0


@pytest.mark.chaos
def test_a_killed_export_is_never_presented_as_ready_and_reruns_whole(start_worker, viewer):
    make_records(60_000)
    export = services.create_export(user=viewer, model_label="reports.SampleRecord", fmt="xlsx")
    worker = start_worker(["reports"], concurrency=1)
    wait_for(
        lambda: ExportRequest.objects.filter(pk=export.pk, rows_done__gte=5000).exists(),
        timeout=60,
        interval=0.02,
    )
    final = services.export_path(ExportRequest(pk=export.pk, file_name=f"export-{export.pk}.xlsx"))
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)
    export.refresh_from_db()
    assert export.status == "running" and not final.exists()  # a half file is never final
    assert [
        p for p in final.parent.iterdir() if re.match(rf"\.partial-export-{export.pk}-", p.name)
    ]

    export = wait_for_export(export, timeout=90)  # redelivered at once, run again whole
    assert export.status == "ready" and export.rows_done == 60_000
    values, _ = read_xlsx(final)
    assert len(values) == 60_001 and values[-1][1] == "record 59999"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert services.delete_expired_exports(now=later)["partials_deleted"] >= 1
