"""Export requests, task-run records, and a sample model for tests and benchmarks."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ExportRequest(models.Model):
    """One requested file: a model export or an admin report. One row per request.

    The file is written beside its final name and renamed when complete, so
    ``status == READY`` always means a whole file; a rerun replaces it.
    """

    class Kind(models.TextChoices):
        MODEL = "model", "Model export"
        TASK_ACTIVITY = "task_activity", "Task-activity report"

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        XLSX = "xlsx", "XLSX"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MODEL)
    model_label = models.CharField(
        max_length=200, help_text="app_label.ModelName of the exported model"
    )
    filters = models.JSONField(
        default=dict, blank=True, help_text="ORM lookups on the model's own fields"
    )
    admin_query = models.TextField(
        blank=True,
        default="",
        help_text="The admin change list's query string ('all matching' exports)",
    )
    use_admin_query = models.BooleanField(default=False)
    fields = models.JSONField(default=list, blank=True, help_text="Exported columns, in order")
    params = models.JSONField(default=dict, blank=True, help_text="Report parameters")
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.CSV)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="export_requests",
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    task_id = models.CharField(max_length=255, blank=True, default="")
    rows_done = models.PositiveBigIntegerField(default=0)
    rows_total = models.PositiveBigIntegerField(null=True, blank=True)
    file_name = models.CharField(
        max_length=255, blank=True, default="", help_text="Inside REPORTS_EXPORT_ROOT"
    )
    file_size = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    link_base = models.CharField(
        max_length=500, blank=True, default="", help_text="Scheme and host for emailed links"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"Export #{self.pk} {self.model_label} ({self.format}, {self.status})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.READY:
            return 100
        if not self.rows_total:
            return 0
        return min(100, int(self.rows_done * 100 / self.rows_total))

    @property
    def download_name(self) -> str:
        """The file name a browser saves: readable, no path, no user input."""
        stamp = (self.finished_at or self.created_at).strftime("%Y%m%d-%H%M%S")
        what = self.model_label.replace(".", "-").lower()
        if self.kind == self.Kind.TASK_ACTIVITY:
            what = "task-activity"
        return f"{what}-{self.pk}-{stamp}.{self.format}"


class TaskRun(models.Model):
    """One task execution as a worker finished it; written by ``reports.activity``."""

    class State(models.TextChoices):
        SUCCESS = "SUCCESS", "Success"
        FAILURE = "FAILURE", "Failure"
        RETRY = "RETRY", "Retry"
        OTHER = "OTHER", "Other"

    task_id = models.CharField(max_length=255, blank=True, default="")
    task_name = models.CharField(max_length=255)
    queue = models.CharField(max_length=100, blank=True, default="")
    state = models.CharField(max_length=20, choices=State.choices)
    runtime = models.FloatField(null=True, blank=True, help_text="Seconds")
    retries = models.PositiveIntegerField(default=0, help_text="Retries before this run")
    exception = models.CharField(max_length=255, blank=True, default="")
    finished_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ("-finished_at", "-pk")
        indexes = [models.Index(fields=["queue", "task_name", "finished_at"])]

    def __str__(self) -> str:
        return f"{self.task_name} {self.state} at {self.finished_at:%Y-%m-%d %H:%M:%S}"


class SampleRecord(models.Model):
    """Demonstration data: what the export tests and benchmark B4 export."""

    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True, default="")
    quantity = models.IntegerField(null=True, blank=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField()
    # Nullable text on purpose: NULL and "" both occur in real data and must export cleanly.
    notes = models.TextField(null=True, blank=True)  # noqa: DJ001
    api_token = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ("pk",)

    def __str__(self) -> str:
        return self.name
