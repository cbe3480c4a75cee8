"""Django system checks: `manage.py check` reports an unsafe Celery configuration."""

from django.core import checks


@checks.register("celery")
def celery_configuration_check(app_configs=None, **kwargs):
    from celery import current_app as app

    from .config_audit import audit

    messages = []
    for problem in audit(app.conf):
        cls = checks.Critical if problem.level == "critical" else checks.Warning
        messages.append(cls(problem.message, hint=problem.remedy, id=f"taskcore.{problem.code}"))
    return messages
