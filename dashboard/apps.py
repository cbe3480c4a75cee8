from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Operations dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Workers load installed apps too: this counts task outcomes and runtimes
        # per queue and task (dashboard.stats; the same counts feed /metrics) in
        # every worker process.
        from taskcore import pipeline

        from . import stats

        if stats.enabled():
            pipeline.subscribe(stats.on_task_finished, events=[pipeline.FINISHED])
            pipeline.subscribe(stats.on_task_failed, events=[pipeline.FAILED])
