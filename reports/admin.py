"""Admin: the site-wide export action, export requests with progress, task runs and their report.

``export_to_file`` is added to ``admin.site`` for every registered model. It
shows a confirmation page (format, columns), then saves an ``ExportRequest``
that the reports queue turns into a file. "Selected" rows are exported by
primary key; "all N matching" replays the change list's filters and search in
the worker as the requesting user.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .exportable import ExportError, exportable_fields
from .models import ExportRequest, SampleRecord, TaskRun

EXPORT_ACTION = "export_to_file"


class ExportForm(forms.Form):
    format = forms.ChoiceField(
        choices=ExportRequest.Format.choices, initial="csv", widget=forms.RadioSelect
    )
    fields = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, help_text="Sensitive fields are never exported."
    )

    def __init__(self, *args, model, **kwargs):
        super().__init__(*args, **kwargs)
        names = exportable_fields(model)
        self.fields["fields"].choices = [
            (name, str(model._meta.get_field(name).verbose_name)) for name in names
        ]
        self.fields["fields"].initial = names


def _jsonable(pk):
    return pk if isinstance(pk, int | str) else str(pk)


@admin.action(description="Export selected / all matching to CSV or XLSX", permissions=["view"])
def export_to_file(modeladmin, request, queryset):
    model = modeladmin.model
    select_across = request.POST.get("select_across") == "1"
    selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
    if request.POST.get("post") == "yes":
        form = ExportForm(request.POST, model=model)
        if form.is_valid():
            if select_across:
                filters, admin_query = {}, request.GET.urlencode()
            else:
                pks = queryset.values_list("pk", flat=True)
                filters = {"pk__in": [_jsonable(pk) for pk in pks]}
                admin_query = None
            try:
                export = services.create_export(
                    user=request.user,
                    model_label=model._meta.label,
                    fields=form.cleaned_data["fields"],
                    filters=filters,
                    fmt=form.cleaned_data["format"],
                    admin_query=admin_query,
                    link_base=request.build_absolute_uri("/").rstrip("/"),
                )
            except ExportError as exc:
                modeladmin.message_user(request, f"Export not started: {exc}", messages.ERROR)
                return None
            link = reverse("admin:reports_exportrequest_change", args=[export.pk])
            modeladmin.message_user(
                request,
                format_html(
                    'Export #{} started: <a href="{}">follow its progress</a>. '
                    "You will get an email with the download link when it is ready.",
                    export.pk,
                    link,
                ),
                messages.SUCCESS,
            )
            return None
    else:
        form = ExportForm(model=model)
    count = queryset.count()
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Export {model._meta.verbose_name_plural}",
        "opts": model._meta,
        "form": form,
        "count": count,
        "select_across": select_across,
        "selected": selected,
        "action_name": EXPORT_ACTION,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/reports/export_confirm.html", context)


admin.site.add_action(export_to_file, EXPORT_ACTION)


def _progress_html(export: ExportRequest):
    done, total = export.rows_done, export.rows_total
    counts = f"{done:,} / {total:,}" if total is not None else f"{done:,}"
    return format_html(
        '<span class="export-progress" data-status="{}" data-url="{}">'
        '<progress value="{}" max="100" style="width:10em"></progress> '
        '<span class="export-percent">{}%</span> <small class="export-rows">{}</small></span>',
        export.status,
        reverse("reports:progress", args=[export.pk]),
        export.percent,
        export.percent,
        counts,
    )


@admin.register(ExportRequest)
class ExportRequestAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "what",
        "format",
        "status",
        "progress",
        "requested_by",
        "created_at",
        "expires_at",
        "download",
    )
    list_filter = ("status", "format", "kind")
    search_fields = ("model_label",)
    actions = ("rerun",)
    readonly_fields = (
        "kind",
        "model_label",
        "format",
        "status",
        "progress",
        "download",
        "requested_by",
        "fields",
        "filters",
        "admin_query",
        "params",
        "error",
        "file_size",
        "task_id",
        "created_at",
        "started_at",
        "finished_at",
        "expires_at",
    )
    fields = readonly_fields

    class Media:
        js = ("reports/export_progress.js",)

    @admin.display(description="What")
    def what(self, obj):
        if obj.kind == ExportRequest.Kind.TASK_ACTIVITY:
            return "Task-activity report"
        return obj.model_label

    @admin.display(description="Progress")
    def progress(self, obj):
        return _progress_html(obj)

    @admin.display(description="Download")
    def download(self, obj):
        if obj.status != ExportRequest.Status.READY:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("reports:download", args=[obj.pk]), obj.download_name
        )

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("requested_by")
        if request.user.is_superuser:
            return queryset
        return queryset.filter(requested_by=request.user)

    # Every staff user sees (only) their own exports; nobody edits them.
    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        return obj is None or user.is_superuser or obj.requested_by_id == user.pk

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return self.has_view_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop(EXPORT_ACTION, None)
        return actions

    @admin.action(description="Run the selected exports again", permissions=["view"])
    def rerun(self, request, queryset):
        started, refused = 0, []
        for export in queryset:
            try:
                services.rerun_export(export)
                started += 1
            except ExportError as exc:
                refused.append(str(exc))
        if started:
            self.message_user(request, f"{started} export(s) queued again.", messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)


class ActivityReportForm(forms.Form):
    since = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}), help_text="Included (to its end)."
    )
    format = forms.ChoiceField(
        choices=ExportRequest.Format.choices, initial="csv", widget=forms.RadioSelect
    )

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("The period ends before it starts.")
        return data


class HousekeepingFilter(admin.SimpleListFilter):
    """Runs of the platform's own periodic jobs (the dashboard's 10-second collector)
    flood the list: hidden unless asked for (``REPORTS_TASK_RUNS_HIDDEN``)."""

    title = "housekeeping runs"
    parameter_name = "housekeeping"

    def lookups(self, request, model_admin):
        return (("shown", "Shown"),)

    def choices(self, changelist):
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Hidden",
        }
        yield from list(super().choices(changelist))[1:]

    def queryset(self, request, queryset):
        if self.value() == "shown":
            return queryset
        return queryset.exclude(task_name__in=settings.REPORTS_TASK_RUNS_HIDDEN)


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = (
        "finished_at",
        "task_name",
        "queue",
        "state",
        "runtime",
        "retries",
        "exception",
    )
    list_filter = ("state", "queue", HousekeepingFilter)
    search_fields = ("task_name", "task_id")
    date_hierarchy = "finished_at"
    change_list_template = "admin/reports/taskrun/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [
            path(
                "activity-report/",
                self.admin_site.admin_view(self.activity_report_view),
                name="reports_taskrun_activity_report",
            ),
            *super().get_urls(),
        ]

    def activity_report_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        today = timezone.localdate()
        if request.method == "POST":
            form = ActivityReportForm(request.POST)
            if form.is_valid():
                zone = timezone.get_current_timezone()
                since = datetime.combine(form.cleaned_data["since"], time.min, tzinfo=zone)
                until = datetime.combine(
                    form.cleaned_data["until"] + timedelta(days=1), time.min, tzinfo=zone
                )
                try:
                    export = services.create_task_activity_report(
                        user=request.user,
                        since=since,
                        until=until,
                        fmt=form.cleaned_data["format"],
                        link_base=request.build_absolute_uri("/").rstrip("/"),
                    )
                except ExportError as exc:
                    self.message_user(request, f"Report not started: {exc}", messages.ERROR)
                else:
                    self.message_user(
                        request,
                        f"Task-activity report #{export.pk} started; you will get an email "
                        "when it is ready.",
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(
                        reverse("admin:reports_exportrequest_change", args=[export.pk])
                    )
        else:
            form = ActivityReportForm(initial={"since": today - timedelta(days=7), "until": today})
        context = {
            **self.admin_site.each_context(request),
            "title": "Task-activity report",
            "opts": self.model._meta,
            "form": form,
        }
        return TemplateResponse(request, "admin/reports/taskrun/activity_report.html", context)


class SampleRecordAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "email", "quantity", "amount", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "email")


# Demo data for trying the exports: in the admin only where REPORTS_DEMO_ADMIN
# (default: DEBUG) says so, never in a production admin by accident.
if settings.REPORTS_DEMO_ADMIN:
    admin.site.register(SampleRecord, SampleRecordAdmin)
