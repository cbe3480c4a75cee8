"""Audit of the Celery configuration for settings that lose or repeat work.

One function used by the worker at start-up (refuses to run on a critical
problem), by Django's system checks (``manage.py check``) and later by the
health command.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskcore.brokers import AMQP, REDIS, SENTINEL, broker_kind
from taskcore.queues import queue_table


@dataclass(frozen=True)
class ConfigProblem:
    code: str  # stable identifier, e.g. for Django's system check ids
    level: str  # "critical" or "warning"
    message: str
    remedy: str


def parks_delayed_messages(broker_url: str) -> bool:
    """Whether the URL's transport is ours, which keeps delayed messages until due."""
    from kombu.transport import resolve_transport

    try:
        return resolve_transport(broker_url.split("://", 1)[0]).__module__.startswith("taskcore.")
    except Exception:
        return False


def audit(conf) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    queues = queue_table()
    broker_url = str(conf.broker_url or "")
    transport_options = conf.broker_transport_options or {}
    visibility_timeout = transport_options.get("visibility_timeout", 3600)

    kind = broker_kind(broker_url)
    if kind in (REDIS, SENTINEL):
        longest_limit = queues.longest_time_limit()
        if visibility_timeout <= longest_limit:
            problems.append(
                ConfigProblem(
                    "visibility_vs_time_limit",
                    "critical",
                    f"visibility_timeout {visibility_timeout}s is not longer than the longest "
                    f"task time limit {longest_limit}s: a running task would be delivered twice",
                    "raise CELERY_VISIBILITY_TIMEOUT above the longest time_limit in "
                    "the queue table",
                )
            )
        longest_delay = queues.longest_retry_delay()
        # Our transport parks delayed messages until due (taskcore.reliable_redis);
        # kombu's hands them out at once, to be held past the visibility timeout.
        if visibility_timeout <= longest_delay and not parks_delayed_messages(broker_url):
            problems.append(
                ConfigProblem(
                    "visibility_vs_retry",
                    "critical",
                    f"visibility_timeout {visibility_timeout}s is not longer than the longest "
                    f"retry countdown {longest_delay}s: a waiting retry would be delivered twice",
                    "raise CELERY_VISIBILITY_TIMEOUT or lower retry_backoff_cap",
                )
            )

    if kind == SENTINEL and not transport_options.get("master_name"):
        problems.append(
            ConfigProblem(
                "sentinel_without_master_name",
                "critical",
                "the broker is a sentinel:// URL but no master name is configured",
                "set REDIS_SENTINEL_MASTER (the name the Sentinels monitor)",
            )
        )
    if kind == AMQP:
        problems.extend(_rabbitmq_problems(conf, transport_options))

    accepted = set(conf.accept_content or ())
    if accepted - {"json", "application/json"}:
        problems.append(
            ConfigProblem(
                "unsafe_serializer",
                "critical",
                f"accept_content allows {sorted(accepted)}: only JSON is safe to deserialise",
                "set CELERY_ACCEPT_CONTENT = ['json']",
            )
        )
    if not conf.result_expires:
        problems.append(
            ConfigProblem(
                "results_never_expire",
                "warning",
                "results never expire: the result backend grows without bound",
                "set CELERY_RESULT_EXPIRES (seconds)",
            )
        )
    declared = {queue.name for queue in (conf.task_queues or ())}
    missing = set(queues.names) - declared
    if missing:
        problems.append(
            ConfigProblem(
                "undeclared_queues",
                "critical",
                f"queues in the queue table but not declared: {sorted(missing)}",
                "derive CELERY_TASK_QUEUES from the queue table (QueueTable.kombu_queues())",
            )
        )
    problems.extend(_sqlite_problems())
    if conf.task_create_missing_queues:
        problems.append(
            ConfigProblem(
                "missing_queues_created",
                "warning",
                "task_create_missing_queues is on: a typo in a queue name creates a queue "
                "no worker consumes",
                "set CELERY_TASK_CREATE_MISSING_QUEUES = False",
            )
        )
    return problems


def _sqlite_problems() -> list[ConfigProblem]:
    """A busy timeout as long as a soft time limit turns a wait for the lock into a dead letter.

    SQLite has one write lock; a writer waits for it up to the busy timeout, then
    gets "database is locked" (retried). Waiting until the time limit instead ends
    the task for good, for a lock that a stuck writer may release a moment later.
    """
    from django.conf import settings

    database = settings.DATABASES.get("default", {})
    if not database.get("ENGINE", "").endswith("sqlite3"):
        return []
    busy_timeout = float(database.get("OPTIONS", {}).get("timeout", 5))
    shortest = min(spec.soft_time_limit for spec in queue_table().specs)
    if busy_timeout < shortest:
        return []
    return [
        ConfigProblem(
            "sqlite_busy_timeout_vs_time_limit",
            "warning",
            f"SQLite busy timeout {busy_timeout:g}s is not shorter than the shortest soft time "
            f"limit {shortest}s: a task waiting for a stuck writer's lock ends as a time-limit "
            "dead letter instead of retrying",
            "lower SQLITE_BUSY_TIMEOUT (default 5) well below the shortest soft_time_limit",
        )
    ]


def _rabbitmq_problems(conf, transport_options) -> list[ConfigProblem]:
    """RabbitMQ has no visibility timeout; its consumer_timeout plays that part."""
    queues = queue_table()
    problems = []
    longest_limit = queues.longest_time_limit()
    consumer_timeout = int(conf.get("rabbitmq_consumer_timeout") or 1800)
    if consumer_timeout <= longest_limit:
        problems.append(
            ConfigProblem(
                "consumer_timeout_vs_time_limit",
                "warning",
                f"RabbitMQ consumer_timeout {consumer_timeout}s (RABBITMQ_CONSUMER_TIMEOUT, the "
                f"server's setting) is not longer than the longest task time limit "
                f"{longest_limit}s: RabbitMQ would close the channel of a long task and deliver "
                "it again",
                "set consumer_timeout in rabbitmq.conf (milliseconds) above the longest "
                "time_limit, e.g. 3600000, and RABBITMQ_CONSUMER_TIMEOUT to match",
            )
        )
    if not transport_options.get("confirm_publish"):
        problems.append(
            ConfigProblem(
                "no_publisher_confirms",
                "warning",
                "publisher confirms are off: a message RabbitMQ drops while publishing is lost "
                "without an error",
                "set confirm_publish in CELERY_BROKER_TRANSPORT_OPTIONS",
            )
        )
    classic = sorted(
        queue.name
        for queue in (conf.task_queues or ())
        if (queue.queue_arguments or {}).get("x-queue-type") != "quorum"
    )
    if classic:
        problems.append(
            ConfigProblem(
                "classic_queues",
                "warning",
                f"queues {classic} are not quorum queues: they live on one RabbitMQ node",
                "derive CELERY_TASK_QUEUES from the queue table (QueueTable.kombu_queues())",
            )
        )
    return problems


def critical_problems(conf) -> list[str]:
    return [f"{p.message} (fix: {p.remedy})" for p in audit(conf) if p.level == "critical"]
