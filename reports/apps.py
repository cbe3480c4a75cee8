from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports and exports"

    def ready(self):
        # Task-run recording (Celery signals) and export-file removal (model signals).
        from . import activity, signals  # noqa: F401
