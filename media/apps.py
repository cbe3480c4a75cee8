from django.apps import AppConfig
from django.core import checks


class MediaConfig(AppConfig):
    name = "media"
    verbose_name = "Media uploads"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import conf, signals  # noqa: F401 - connects the receivers

        @checks.register()
        def media_settings(app_configs=None, **kwargs):
            return [checks.Error(problem, id="media.E001") for problem in conf.problems()]
