from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"

    def ready(self):
        from taskcore import contributions, pipeline

        from . import api, tasks

        pipeline.subscribe(
            tasks.fail_deliveries_of_a_failed_batch,
            events=[pipeline.FAILED],
            tasks=[tasks.SEND_DELIVERY_BATCH],
        )

        contributions.register_work_in_progress(self.label, api.campaigns_in_progress)
