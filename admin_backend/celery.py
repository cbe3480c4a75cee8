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

from taskcore import results

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


class AdminBackendCelery(Celery):
    """Celery, with ``celery beat`` configured as this project's beat before it logs.

    Celery's own ``beat_init`` signal comes after beat's first lines, so beat would
    write them as the web does (not into celery_beat.log).

    Messages are sent by taskcore's ``app.amqp`` (grouped task-sent events, queues
    declared once per connection: taskcore/sending.py).
    """

    amqp_cls = "taskcore.sending:AMQP"

    @cached_property
    def Beat(self):
        from celery.apps.beat import Beat

        class ProjectBeat(Beat):
            def setup_logging(self, colorize=None):
                adopt_process_role("beat")
                super().setup_logging(colorize)

        return self.subclass_with_self(ProjectBeat)


# Every task gets the project retry policy (taskcore.base.BaseTask).
app = AdminBackendCelery("admin_backend", task_cls="taskcore.base:BaseTask")
app.config_from_object(DjangoCelerySettings())
app.autodiscover_tasks()
# Redis result backends that wait out a Redis at maxmemory (taskcore/results.py).
app.loader.override_backends = results.BACKENDS
# A worker that answers ping but takes no work restarts its consumer, then exits
# (CELERY_WORKER_STALL_SECONDS; taskcore/watchdog.py).
app.steps["consumer"].add("taskcore.watchdog:StallWatchdog")


# The program this process runs: "worker" or "beat" once Celery starts it, "flower"
# when deploy/flowerconfig.py says so, else "web"; and the level --loglevel gave
# Celery's loggers.
_process: dict[str, str | None] = {"role": "web", "celery_loglevel": None}


def adopt_process_role(role: str) -> None:
    """Configure this process as ``role``: its log files and its database session name.

    Called by the program that knows what it is (the worker's ``celeryd_init``
    signal, the beat program class above, Flower's configuration file); the settings
    are the same in every process.
    """
    from django.conf import settings
    from django.db import connections

    _process["role"] = role
    if role in ("worker", "beat"):
        # Before their first broker connection: wait out outages, unlike a caller.
        app.conf.update(settings.LONG_RUNNING_BROKER_OPTIONS)
    configure_logging()
    # Read at connect time: connections opened from now on carry the role.
    for alias in connections:
        options = connections.settings[alias].setdefault("OPTIONS", {})
        if "application_name" in options:
            options["application_name"] = f"admin_backend {role}"


def configure_logging(web_logging: dict | None = None) -> None:
    """Apply the logging configuration of this process's role (Django's LOGGING_CONFIG).

    Django calls it at setup with LOGGING, the web's; a Celery program that already
    adopted its role keeps its own configuration instead.
    """
    from django.conf import settings

    role = _process["role"]
    if role == "web" and web_logging is not None:
        logging.config.dictConfig(web_logging)  # LOGGING as given, overrides included
    else:
        logging.config.dictConfig(settings.LOGGING_BY_ROLE[role])
    if _process["celery_loglevel"]:
        logging.getLogger("celery").setLevel(_process["celery_loglevel"])


@signals.celeryd_init.connect
def configure_worker(conf=None, **kwargs):
    """A worker: before its logging is set up and before its result backend exists."""
    from django.conf import settings

    conf.update(settings.WORKER_RESULT_BACKEND_RETRY)
    adopt_process_role("worker")


@signals.setup_logging.connect
def use_django_logging(loglevel=None, **kwargs):
    """Celery configures nothing itself when this signal has a receiver.

    Django's LOGGING for this process's role (files, rotation, task ids, secret
    masking) applies to every Celery process; ``--loglevel`` still sets the level
    of Celery's loggers.
    """
    _process["celery_loglevel"] = loglevel
    configure_logging()


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
