"""Reports without a worker: what may be exported, the writers, requests, expiry, commands."""

from __future__ import annotations

import datetime as dt
import io
import os
import time
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.utils import timezone
from test_reports_support import (
    CREATED,
    EXPORTED_FIELDS,
    csv_text,
    expected_rows,
    grant_view,
    make_tricky_records,
    read_csv,
    read_xlsx,
)

from reports import activity, conf, services, writers
from reports.exportable import (
    BadFilter,
    ExportPermissionDenied,
    UnknownField,
    UnknownModel,
    check_fields,
    check_filters,
    exportable_fields,
    filtered_queryset,
    is_sensitive_name,
)
from reports.models import ExportRequest, SampleRecord, TaskRun
from taskcore.models import DeadLetter

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user(
        "viewer", email="viewer@example.org", password="pw-irrelevant-123", is_staff=True
    )
    grant_view(user, "samplerecord")
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache


# --- what may be exported ----------------------------------------------------------


def test_sensitive_fields_are_never_exportable():
    from django.contrib.auth.models import User

    assert "password" not in exportable_fields(User)
    assert exportable_fields(SampleRecord) == EXPORTED_FIELDS  # api_token left out
    for name in ("password", "api_token", "secret_answer", "session_key", "apikey", "salt"):
        assert is_sensitive_name(name), name
    for name in ("name", "monkey_count", "keyword", "turkey_breed", "notes"):
        assert not is_sensitive_name(name), name


def test_unknown_and_unregistered_models_get_clear_errors(viewer):
    with pytest.raises(UnknownModel, match=r"unknown model 'nope\.Nothing'.*app_label\.ModelName"):
        services.create_export(user=viewer, model_label="nope.Nothing")
    with pytest.raises(UnknownModel, match="unknown model 'justaword'"):
        services.create_export(user=viewer, model_label="justaword")
    with pytest.raises(UnknownModel, match="not registered in the admin"):
        services.create_export(user=viewer, model_label="contenttypes.ContentType")


def test_unknown_and_sensitive_fields_get_clear_errors():
    with pytest.raises(UnknownField, match=r"unknown field 'colour'.*exportable fields: id, name"):
        check_fields(SampleRecord, ["name", "colour"])
    with pytest.raises(UnknownField, match=r"'api_token' of reports\.SampleRecord is sensitive"):
        check_fields(SampleRecord, ["api_token"])
    assert check_fields(SampleRecord, ["notes", "id"]) == ["notes", "id"]
    assert check_fields(ExportRequest, ["requested_by_id"]) == ["requested_by"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"colour": "red"}, r"'colour' is not a filterable field of reports.SampleRecord"),
        ({"api_token__startswith": "a"}, "'api_token' is not a filterable field"),
        ({"name__bogus": "x"}, "'bogus' is not a lookup of reports.SampleRecord.name"),
        ({"quantity": "many"}, r"bad filter .*quantity"),
        ({"created_at__gte": "yesterday-ish"}, r"bad filter .*created_at"),
        ({"name": {"nested": 1}}, "value must be a string, number"),
        ({"pk__in": [[1]]}, "a list may hold only"),
        (["name"], "a filter is an object of lookups"),
    ],
)
def test_bad_filters_get_clear_errors(filters, message):
    with pytest.raises(BadFilter, match=message):
        filtered_queryset(SampleRecord, filters)


def test_filters_cannot_follow_relations_to_what_the_user_cannot_see():
    with pytest.raises(BadFilter, match="filters cannot follow relations"):
        check_filters(ExportRequest, {"requested_by__password__startswith": "pbkdf2"})
    with pytest.raises(BadFilter, match="filters cannot follow relations"):
        check_filters(ExportRequest, {"requested_by__username": "root"})
    assert check_filters(ExportRequest, {"requested_by__in": [1], "requested_by_id": 1})


def test_good_filters_select_rows():
    make_tricky_records()
    queryset = filtered_queryset(
        SampleRecord, {"active": True, "quantity__gte": 2, "name__icontains": "CMD"}
    )
    assert [r.name for r in queryset] == ["+cmd|' /C calc'!A0"]
    assert not filtered_queryset(SampleRecord, {"pk__in": []}).exists()


def test_export_needs_view_permission_on_the_model(django_user_model):
    nobody = django_user_model.objects.create_user("nobody", password="pw-irrelevant-123")
    with pytest.raises(ExportPermissionDenied, match=r"nobody may not view reports\.SampleRecord"):
        services.create_export(user=nobody, model_label="reports.SampleRecord")
    changer = django_user_model.objects.create_user("changer", password="pw-irrelevant-123")
    changer.user_permissions.add(Permission.objects.get(codename="change_samplerecord"))
    changer = django_user_model.objects.get(pk=changer.pk)
    assert services.create_export(user=changer, model_label="reports.SampleRecord").pk


def test_a_request_is_enqueued_only_after_commit(viewer, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        export = services.create_export(
            user=viewer, model_label="reports.SampleRecord", fmt="XLSX", fields=["name", "id"]
        )
    assert len(callbacks) == 1
    export.refresh_from_db()
    assert (export.status, export.format, export.fields) == ("pending", "xlsx", ["name", "id"])
    assert export.task_id and export.requested_by == viewer
    with pytest.raises(services.ExportError, match="unknown format 'pdf'"):
        services.create_export(user=viewer, model_label="reports.SampleRecord", fmt="pdf")


# --- the writers ------------------------------------------------------------------------


def test_neutralise_formula():
    for payload in ("=1+1", "+1", "-1", "@A1", "\t=1", "\r=1"):
        assert writers.neutralise_formula(payload) == "'" + payload
    assert writers.neutralise_formula("a=1") == "a=1"
    assert writers.neutralise_formula(None) == ""


def _write(tmp_path, fmt):
    records = make_tricky_records()
    assert len(records) == 10
    kinds = [writers.kind_of_field(SampleRecord._meta.get_field(f)) for f in EXPORTED_FIELDS]
    target = tmp_path / f"out.{fmt}"
    rows = iter(expected_rows())
    done, size = services.write_export_file(target, fmt, EXPORTED_FIELDS, kinds, rows, chunk_size=3)
    assert done == 10 and size == target.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")] == []
    return target


def test_csv_writer_round_trip_and_neutralisation(tmp_path):
    lines = read_csv(_write(tmp_path, "csv"))
    assert lines[0] == EXPORTED_FIELDS
    assert lines[1:] == [[csv_text(v) for v in row] for row in expected_rows()]
    names = [line[1] for line in lines[1:]]
    assert '\'=HYPERLINK("http://evil.example","click")' in names
    assert "'\rCR first" in names and "multi\r\nline, with ; separators" in names
    assert lines[3][3] == "-7"  # numbers are never "neutralised"


def test_xlsx_writer_round_trip_types_and_quote_prefix(tmp_path):
    values, quoted = read_xlsx(_write(tmp_path, "xlsx"))
    assert values[0] == EXPORTED_FIELDS
    for got, flags, row in zip(values[1:], quoted[1:], expected_rows(), strict=True):
        pk, name, email, quantity, amount, active, created_at, notes = row
        assert got[:6] == [
            pk,
            name,
            email,
            quantity,
            None if amount is None else float(amount),
            active,
        ]
        assert abs(got[6] - created_at.replace(tzinfo=None)) < dt.timedelta(milliseconds=1)
        assert got[7] == notes  # None stays empty, "" stays an empty string
        # A risky text is kept as it is, as text that Excel will not evaluate.
        assert flags[1] == name.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_a_failed_write_leaves_no_file(tmp_path):
    def rows():
        yield (1, "fine")
        raise RuntimeError("database went away")

    target = tmp_path / "broken.csv"
    with pytest.raises(RuntimeError):
        services.write_export_file(target, "csv", ["id", "name"], ["integer", "text"], rows())
    assert list(tmp_path.iterdir()) == []


# --- running in-process (services only), expiry ----------------------------------------


def test_rerun_replaces_the_file_and_refuses_while_running(viewer):
    make_tricky_records()
    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    result = services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    path = services.export_path(export)
    assert result["rows"] == 10 and export.status == "ready" and path.exists()
    assert path.parent == conf.export_root() and conf.export_root() != conf.settings.MEDIA_ROOT
    SampleRecord.objects.create(name="one more", created_at=CREATED)
    services.rerun_export(export)
    with pytest.raises(services.ExportError, match="is pending; wait"):
        services.rerun_export(export)
    assert services.run_export(export.pk, task_id="an-old-message")["skipped"].startswith(
        "superseded"
    )
    services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    assert services.export_path(export) == path and len(read_csv(path)) == 12
    assert export.rows_done == export.rows_total == 11


def test_permission_revoked_before_the_run_fails_it_clearly(viewer):
    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    viewer.user_permissions.clear()
    with pytest.raises(ExportPermissionDenied):
        services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    assert export.status == "failed" and "may not view reports.SampleRecord" in export.error
    assert export.file_name == ""


def test_delete_expired_exports_removes_files_and_stale_partials(viewer):
    make_tricky_records()
    exports = [
        services.create_export(user=viewer, model_label="reports.SampleRecord") for _ in "ab"
    ]
    for export in exports:
        services.run_export(export.pk, task_id=export.task_id)
    old, fresh = (ExportRequest.objects.get(pk=e.pk) for e in exports)
    ExportRequest.objects.filter(pk=old.pk).update(expires_at=timezone.now() - dt.timedelta(1))
    root = conf.export_root()
    stale = root / ".partial-export-99-abc.csv"
    stale.write_text("half")
    os.utime(stale, (time.time() - 4 * 3600,) * 2)
    running = root / ".partial-export-98-def.csv"
    running.write_text("being written")

    counts = services.delete_expired_exports(batch_size=1)

    assert counts == {"expired": 1, "files_deleted": 1, "partials_deleted": 1}
    old.refresh_from_db()
    assert old.status == "expired" and old.file_name == ""
    assert not (root / f"export-{old.pk}.csv").exists() and not stale.exists()
    assert services.export_path(fresh).exists() and running.exists()
    assert services.delete_expired_exports()["expired"] == 0


def test_deleting_a_request_deletes_its_file(viewer, django_capture_on_commit_callbacks):
    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    path = services.export_path(export)
    with django_capture_on_commit_callbacks(execute=True):
        export.delete()
    assert not path.exists()


# --- task runs and the task-activity report ------------------------------------------


def test_task_activity_rows_count_and_percentiles():
    now = timezone.now()
    runs = [("SUCCESS", float(i)) for i in range(1, 21)]  # 1..20 s
    runs += [("FAILURE", 100.0), ("RETRY", 0.5)]
    TaskRun.objects.bulk_create(
        TaskRun(task_name="media.tasks.x", queue="media", state=state, runtime=rt, finished_at=now)
        for state, rt in runs
    )
    TaskRun.objects.create(
        task_name="media.tasks.x", queue="media", state="SUCCESS", runtime=9e9,
        finished_at=now - dt.timedelta(days=30),
    )  # fmt: skip
    TaskRun.objects.create(
        task_name="email.y", queue="email", state="FAILURE", runtime=None, finished_at=now
    )
    for n, name in enumerate(["email.y", "email.y", "maintenance.z"]):
        DeadLetter.objects.create(
            task_id=f"dl-{n}", task_name=name, queue=name.split(".")[0], reason="permanent_error"
        )
    total, rows = activity.task_activity_rows(now - dt.timedelta(days=1), now + dt.timedelta(1))
    by_task = {row[1]: dict(zip(activity.report_columns(), row, strict=True)) for row in rows}
    assert total == 3
    assert "dead_letters" in activity.report_columns()
    assert by_task["email.y"]["dead_letters"] == 2 and by_task["media.tasks.x"]["dead_letters"] == 0
    assert by_task["maintenance.z"]["runs"] == 0 and by_task["maintenance.z"]["dead_letters"] == 1
    media = by_task["media.tasks.x"]
    assert (media["runs"], media["succeeded"], media["failed"], media["retried"]) == (22, 20, 1, 1)
    values = sorted(rt for _, rt in runs)  # numpy-style linear interpolation
    assert media["median_runtime_s"] == pytest.approx((values[10] + values[11]) / 2)
    position = 0.95 * 21
    low = values[int(position)]
    expected_p95 = low + (values[int(position) + 1] - low) * (position - int(position))
    assert media["p95_runtime_s"] == pytest.approx(expected_p95)
    assert media["max_runtime_s"] == 100.0
    email = by_task["email.y"]
    assert (email["runs"], email["failed"], email["median_runtime_s"]) == (1, 1, None)


def test_task_runs_are_recorded_from_signals_and_can_be_switched_off(settings):
    from taskcore.tasks import debug_task

    debug_task.apply(args=["recorded"])
    debug_task.apply(kwargs={"sleep": -1})  # fails: PermanentError
    runs = list(TaskRun.objects.order_by("pk").values_list("task_name", "state", "exception"))
    assert runs == [
        ("taskcore.tasks.debug_task", "SUCCESS", ""),
        ("taskcore.tasks.debug_task", "FAILURE", "PermanentError"),
    ]
    assert TaskRun.objects.filter(runtime__gt=0, queue="default").count() == 2
    settings.REPORTS_RECORD_TASK_RUNS = False
    debug_task.apply(args=["not recorded"])
    assert TaskRun.objects.count() == 2


# --- management commands ---------------------------------------------------------------


def test_export_command_errors_are_clear(viewer):
    cases = [
        (["nope.Model"], "unknown model 'nope.Model'"),
        (["reports.SampleRecord", "--fields", "name,colour"], "unknown field 'colour'"),
        (["reports.SampleRecord", "--filter", "{oops"], "--filter is not valid JSON"),
        (["reports.SampleRecord", "--filter", '{"colour": 1}'], "not a filterable field"),
        (["auth.User"], "viewer may not view auth.User"),
    ]
    for args, message in cases:
        with pytest.raises(CommandError, match=message):
            call_command("export_model", *args, "--user", "viewer")
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("export_model", "reports.SampleRecord", "--user", "ghost")
    assert not ExportRequest.objects.exists()


def test_export_command_creates_a_request(viewer, django_capture_on_commit_callbacks):
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command(
            "export_model",
            "reports.SampleRecord",
            "--user=viewer",
            "--format=xlsx",
            "--fields=id,name",
            '--filter={"active": true}',
            stdout=out,
        )
    export = ExportRequest.objects.get()
    assert len(callbacks) == 1 and f"export #{export.pk} of reports.SampleRecord queued" in (
        out.getvalue()
    )
    assert (export.format, export.fields, export.filters) == (
        "xlsx",
        ["id", "name"],
        {"active": True},
    )


def test_task_activity_command_checks_permission_and_period(viewer):
    with pytest.raises(CommandError, match=r"viewer may not view reports\.TaskRun"):
        call_command("task_activity_report", "--user", "viewer")
    grant_view(viewer, "taskrun")
    with pytest.raises(CommandError, match="the period is empty"):
        call_command(
            "task_activity_report",
            "--user",
            "viewer",
            "--since",
            "2025-02-01",
            "--until",
            "2025-01-01",
        )
    with pytest.raises(CommandError, match="--since 'last week' is not an ISO date"):
        call_command("task_activity_report", "--user", "viewer", "--since", "last week")


def test_decimal_and_big_numbers_in_xlsx(tmp_path):
    path = tmp_path / "n.xlsx"
    sink = writers.XlsxSink(str(path), ["a", "b", "c"], ["decimal", "integer", "other"])
    sink.write_rows([(Decimal("1234567890123456.78"), 2**60, {"k": "=v"})])
    sink.close()
    values, _ = read_xlsx(path)
    assert values[1] == ["1234567890123456.78", str(2**60), '{"k": "=v"}']


def test_csv_rendered_by_the_database_is_byte_identical_to_python_rendering(viewer, tmp_path):
    """The fast path (reports.sqltext) writes exactly what the reference writer writes."""
    make_tricky_records()
    SampleRecord.objects.create(name="whole second", created_at=CREATED.replace(microsecond=0))
    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    fast = services.export_path(export).read_bytes()

    kinds = [writers.kind_of_field(SampleRecord._meta.get_field(f)) for f in EXPORTED_FIELDS]
    reference = tmp_path / "reference.csv"
    services.write_export_file(reference, "csv", EXPORTED_FIELDS, kinds, iter(expected_rows()))
    assert fast.decode().splitlines() == reference.read_bytes().decode().splitlines()
    assert b"'=HYPERLINK" in fast and b"+00:00" in fast


# --- admin pages --------------------------------------------------------------------------


def test_admin_pages_and_the_activity_report_form(
    client, viewer, django_capture_on_commit_callbacks
):
    grant_view(viewer, "taskrun")
    client.force_login(viewer)
    TaskRun.objects.create(task_name="t", queue="default", state="SUCCESS", finished_at=CREATED)
    listing = client.get("/admin/reports/taskrun/")
    assert listing.status_code == 200 and b"activity-report/" in listing.content
    form = client.get("/admin/reports/taskrun/activity-report/")
    assert form.status_code == 200 and b'name="since"' in form.content
    bad = client.post(
        "/admin/reports/taskrun/activity-report/",
        {"since": "2025-02-01", "until": "2025-01-01", "format": "csv"},
    )
    assert b"The period ends before it starts." in bad.content
    with django_capture_on_commit_callbacks(execute=False):
        made = client.post(
            "/admin/reports/taskrun/activity-report/",
            {"since": "2025-01-01", "until": "2025-01-31", "format": "xlsx"},
        )
    export = ExportRequest.objects.get()
    assert made.status_code == 302 and made["Location"].endswith(
        f"/exportrequest/{export.pk}/change/"
    )
    assert export.kind == "task_activity" and export.format == "xlsx"
    assert export.params["since"].startswith("2025-01-01") and export.params["until"].startswith(
        "2025-02-01"
    )
    detail = client.get(made["Location"])
    assert detail.status_code == 200 and b"<progress" in detail.content


def test_admin_export_of_selected_rows_and_a_user_without_permission(
    client, viewer, django_user_model, django_capture_on_commit_callbacks
):
    records = make_tricky_records()
    client.force_login(viewer)
    chosen = [str(records[0].pk), str(records[3].pk)]
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/admin/reports/samplerecord/",
            {
                "action": "export_to_file",
                "_selected_action": chosen,
                "index": "0",
                "post": "yes",
                "format": "csv",
                "fields": ["name", "notes"],
            },
        )
    assert response.status_code == 302
    export = ExportRequest.objects.get()
    assert export.filters == {"pk__in": [records[0].pk, records[3].pk]}
    assert not export.use_admin_query and export.fields == ["name", "notes"]
    # Another staff user sees neither the export nor its progress.
    other = django_user_model.objects.create_user("other", password="pw-x-123", is_staff=True)
    client.force_login(other)
    assert client.get(f"/admin/reports/exportrequest/{export.pk}/change/").status_code in (302, 404)
    assert b"reports.SampleRecord" not in client.get("/admin/reports/exportrequest/").content
    assert client.get("/admin/reports/samplerecord/").status_code == 403


def test_an_export_killed_by_the_hard_time_limit_is_marked_failed(viewer):
    from billiard.exceptions import TimeLimitExceeded
    from celery import signals

    from reports.tasks import run_export

    export = services.create_export(user=viewer, model_label="reports.SampleRecord")
    ExportRequest.objects.filter(pk=export.pk).update(status="running")
    # What the worker's main process sends when it kills the child at the hard limit.
    signals.task_failure.send(
        sender=run_export,
        task_id="another-run",
        exception=TimeLimitExceeded(1800),
        args=[export.pk],
    )
    export.refresh_from_db()
    assert export.status == "running"  # not the run that owns the request
    signals.task_failure.send(
        sender=run_export,
        task_id=export.task_id,
        exception=TimeLimitExceeded(1800),
        args=[export.pk],
    )
    export.refresh_from_db()
    assert export.status == "failed" and "TimeLimitExceeded" in export.error


def test_task_activity_report_as_xlsx(viewer):
    grant_view(viewer, "taskrun")
    now = timezone.now()
    TaskRun.objects.bulk_create(
        TaskRun(
            task_name="media.tasks.x", queue="media", state="SUCCESS", runtime=rt, finished_at=now
        )
        for rt in (0.25, 0.5)
    )
    export = services.create_task_activity_report(user=viewer, fmt="xlsx")
    services.run_export(export.pk, task_id=export.task_id)
    export.refresh_from_db()
    values, _ = read_xlsx(services.export_path(export))
    row = dict(zip(values[0], values[1], strict=True))
    assert values[0] == activity.report_columns() and len(values) == 2
    assert (row["queue"], row["task"], row["runs"], row["succeeded"]) == (
        "media",
        "media.tasks.x",
        2,
        2,
    )
    assert row["median_runtime_s"] == 0.375 and row["max_runtime_s"] == 0.5
    assert abs(row["last_finished_at"] - timezone.make_naive(now)) < dt.timedelta(milliseconds=1)


def test_all_matching_replays_the_change_list_filters_not_its_page(django_user_model):
    make_tricky_records()
    root = django_user_model.objects.create_superuser("root", password="pw-irrelevant-123")
    rows = services._changelist_queryset(SampleRecord, root, "active__exact=0&p=99&all=")
    assert sorted(r.name for r in rows) == sorted(
        SampleRecord.objects.filter(active=False).values_list("name", flat=True)
    )
    with pytest.raises(BadFilter, match="admin filter 'colour__exact=1'"):
        services._changelist_queryset(SampleRecord, root, "colour__exact=1")


def test_delete_old_task_runs_in_batches():
    now = timezone.now()
    TaskRun.objects.bulk_create(
        TaskRun(task_name="t", state="SUCCESS", finished_at=now - dt.timedelta(days=days))
        for days in (1, 100, 200, 300)
    )
    assert services.delete_old_task_runs(dt.timedelta(days=90), batch_size=2) == 3
    assert TaskRun.objects.count() == 1
