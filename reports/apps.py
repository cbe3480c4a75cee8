from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports and exports"

    def ready(self):
        # Task-run recording (the task pipeline) and export-file removal (model signals).
        from taskcore import contributions, pipeline

        from . import activity, api, services, signals, tasks  # noqa: F401

        pipeline.subscribe(activity.on_task_finished, events=[pipeline.FINISHED])
        pipeline.subscribe(
            tasks.fail_unfinished_export, events=[pipeline.FAILED], tasks=[tasks.RUN_EXPORT]
        )

        contributions.register_work_in_progress(self.label, api.exports_in_progress)
        contributions.register_cleanup("expired_exports", services.delete_expired_exports)
        contributions.register_cleanup("old_task_runs", services.delete_old_task_runs)
