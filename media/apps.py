from django.apps import AppConfig
from django.core import checks


class MediaConfig(AppConfig):
    name = "media"
    verbose_name = "Media uploads"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from taskcore import contributions, pipeline

        from . import api, cleanup, conf, signals, tasks  # noqa: F401 - signals: model receivers

        upload = [tasks.PROCESS_UPLOAD]
        pipeline.subscribe(tasks.mark_upload_failed, events=[pipeline.FAILED], tasks=upload)
        pipeline.subscribe(tasks.mark_upload_retrying, events=[pipeline.RETRIED], tasks=upload)

        contributions.register_work_in_progress(self.label, api.uploads_in_progress)
        contributions.register_cleanup("media_orphans", cleanup.delete_orphans)

        @checks.register()
        def media_settings(app_configs=None, **kwargs):
            return [checks.Error(problem, id="media.E001") for problem in conf.problems()]
