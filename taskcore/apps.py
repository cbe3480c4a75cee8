from django.apps import AppConfig


class TaskcoreConfig(AppConfig):
    name = "taskcore"
    verbose_name = "Task platform"

    def ready(self):
        # Signal handlers and system checks register themselves on import.
        from . import checks, deadletters, lifecycle, publishing  # noqa: F401
