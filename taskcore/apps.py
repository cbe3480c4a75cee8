from django.apps import AppConfig


class TaskcoreConfig(AppConfig):
    name = "taskcore"
    verbose_name = "Task platform"

    def ready(self):
        # System checks and the worker signals' receivers register themselves on import.
        # The task pipeline connects Celery's task signals (the only module that
        # does); taskcore's own subscribers: the task log lines and dead letters.
        from . import checks, deadletters, lifecycle, pipeline  # noqa: F401

        pipeline.install()
        lifecycle.subscribe_task_lines()
        pipeline.subscribe(deadletters.keep_failed_task, events=[pipeline.FAILED])
        pipeline.subscribe(deadletters.keep_refused_message, events=[pipeline.REJECTED])
