"""The Celery application of admin_backend.

All settings come from Django's settings (``CELERY_`` namespace), which read the
environment; the queue table in ``admin_backend/queues.py`` derives queues,
routes and limits. This module only creates the app, wires logging into
Django's ``LOGGING`` and refuses to start a worker on an unsafe configuration.
"""

from __future__ import annotations

import logging.config
import os
from collections.abc import Mapping
from functools import cached_property

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")


class DjangoCelerySettings(Mapping):
    """Django's ``CELERY_*`` settings under Celery's names, copied when Celery first reads them.

    ``CELERY_TASK_ROUTES`` is handed over as ``task_routes``: what
    ``namespace="CELERY"`` would do, without its flaw. With the namespace, Celery
    also matches CELERY_ACCEPT_CONTENT and 17 more against its pre-4.0 names, and
    every worker logs a deprecation warning for each at start-up (it spares only
    the string "django.conf:settings", celery#6366).

    A plain dict: Celery looks its settings up several times per published
    message; through Django's ``LazySettings`` each lookup costs a chain of
    getattr calls, ~15% of a publish (B1 in docs/benchmarks.md). Settings do not
    change at run time.
    """

    PREFIX = "CELERY_"

    @cached_property
    def _values(self) -> dict:
        from django.conf import settings

        return {
            name.removeprefix(self.PREFIX).lower(): getattr(settings, name)
            for name in dir(settings)
            if name.startswith(self.PREFIX) and name.isupper()
        }

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)


# Every task gets the project retry policy (taskcore.base.BaseTask).
app = Celery("admin_backend", task_cls="taskcore.base:BaseTask")
app.config_from_object(DjangoCelerySettings())
app.autodiscover_tasks()


@signals.setup_logging.connect
def use_django_logging(loglevel=None, **kwargs):
    """Celery configures nothing itself when this signal has a receiver.

    Django's LOGGING (files, rotation, task ids, secret masking) applies to every
    Celery process; ``--loglevel`` still sets the level of Celery's loggers.
    """
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger("celery").setLevel(loglevel)


@signals.worker_init.connect
def refuse_unsafe_configuration(sender=None, **kwargs):
    """Fail loudly, before consuming anything, when the settings would lose or repeat work."""
    from taskcore.config_audit import critical_problems

    problems = critical_problems(app.conf)
    if problems:
        message = "Unsafe Celery configuration, worker not started:\n- " + "\n- ".join(problems)
        logging.getLogger("celery.lifecycle.worker").critical(message)
        # SystemExit, not an exception: Celery logs and swallows exceptions raised
        # by signal receivers, and the worker would start anyway.
        raise SystemExit(os.EX_CONFIG)


@signals.worker_init.connect
def declare_every_queue_on_rabbitmq(sender=None, **kwargs):
    """Delayed delivery binds all five queues on RabbitMQ: their exchanges must exist first.

    A worker declares only the queues it consumes; until every group has started
    once, Celery's delayed-delivery setup would fail for the others.
    """
    from taskcore import brokers

    if brokers.broker_kind(app.conf.broker_url) == brokers.AMQP:
        brokers.declare_queues(app)
