from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Operations dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Workers load installed apps too: this counts task outcomes and runtimes
        # per queue (dashboard.stats) in every worker process.
        from . import stats

        stats.connect_signals()
