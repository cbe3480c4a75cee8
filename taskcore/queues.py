"""The queue table's logic: routing, declarations, limits and worker groups from one table.

The project describes its queues as a tuple of :class:`QueueSpec` (in
``admin_backend/queues.py``) and hands a :class:`QueueTable` of them to the
platform through the ``TASKCORE_QUEUE_TABLE`` setting. Everything that needs a
queue name, a time limit or a worker shape asks :func:`queue_table` instead of
importing the project: this module is a library, it knows no queue by name.

Importable without Django settings (the settings module builds the table).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from kombu import Exchange, Queue

from taskcore.brokers import AMQP, broker_kind


@dataclass(frozen=True)
class QueueSpec:
    """One queue: what it carries, how long its work may take, how it is worked."""

    name: str
    purpose: str
    # Task-name prefixes (Django app labels) routed here; "default" takes the rest.
    apps: tuple[str, ...]
    # Time limits in seconds: soft raises SoftTimeLimitExceeded in the task, hard kills it.
    soft_time_limit: int
    time_limit: int
    # Celery rate limit string per task type and worker ("100/m"), None for unlimited.
    rate_limit: str | None = None
    # Retry policy for transient errors: exponential backoff with full jitter
    # (base and cap in seconds), until both max_retries and the horizon are spent.
    max_retries: int = 5
    retry_backoff_base: int = 2
    retry_backoff_cap: int = 300
    # Seconds after a task's first attempt during which a transient error is
    # retried however many attempts it takes: an outage shorter than this (a
    # database restart or failover, a Redis restart) costs no task. 0: count only.
    retry_horizon: int = 600
    # Worker shape (start here, then measure; see docs/benchmarks.md).
    worker_group: str = "all"
    pool: str = "prefork"
    concurrency: int = 2
    prefetch_multiplier: int = 1
    max_tasks_per_child: int = 1000
    max_memory_per_child_kb: int | None = None
    # (max, min) pool processes: the worker grows its pool to max under backlog and
    # shrinks it back to min once idle for AUTOSCALE_KEEPALIVE seconds (Celery's
    # default 30). Prefork only; ``concurrency`` must then equal max (the ceiling,
    # used where autoscale cannot apply: the threads pool on Windows).
    autoscale: tuple[int, int] | None = None
    # Worker processes of the group per host, each a full worker of the shape above
    # (node names <group>-1@host, <group>-2@host, ...). For the threads pool one per
    # core: threads share one interpreter lock, so a second process is what uses a
    # second core. The start scripts and compose run this many.
    worker_processes: int = 1
    # Health thresholds: queue depth (messages) and age of oldest message (seconds).
    depth_warning: int = 1_000
    depth_critical: int = 10_000
    age_warning: int = 60
    age_critical: int = 300
    # Largest message body (bytes): bigger arguments fail at .delay(), and a worker
    # refuses a bigger message (a dead letter, reason "refused"). Tasks pass ids.
    max_message_bytes: int = 1_048_576
    # Per task type overrides of the annotation values above, keyed by full task name.
    task_overrides: dict[str, dict[str, object]] = field(default_factory=dict)


class QueueTableError(ValueError):
    """The queue table contradicts itself; the message names each problem."""


def table_problems(specs: tuple[QueueSpec, ...]) -> list[str]:
    """What is wrong with a queue table: autoscale values, groups that disagree."""
    problems = []
    for spec in specs:
        if spec.autoscale is None:
            continue
        where = f"queue {spec.name!r}"
        try:
            high, low = spec.autoscale
        except (TypeError, ValueError):
            problems.append(f"{where}: autoscale must be (max, min), got {spec.autoscale!r}")
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (high, low)):
            problems.append(
                f"{where}: autoscale (max, min) must be integers, got {spec.autoscale!r}"
            )
        elif not high >= low >= 1:
            problems.append(
                f"{where}: autoscale (max, min) needs max >= min >= 1, got ({high}, {low})"
            )
        elif spec.concurrency != high:
            problems.append(
                f"{where}: concurrency {spec.concurrency} must equal the autoscale max {high}"
            )
        if spec.pool != "prefork":
            problems.append(
                f"{where}: autoscale needs pool 'prefork' (the {spec.pool!r} pool cannot grow "
                "or shrink); set pool='prefork' or drop autoscale"
            )
    groups: dict[str, list[QueueSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.worker_group, []).append(spec)
    for spec in specs:
        processes = spec.worker_processes
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            problems.append(
                f"queue {spec.name!r}: worker_processes must be a whole number >= 1, "
                f"got {processes!r}"
            )
    for group, members in groups.items():
        for attribute in ("pool", "autoscale", "worker_processes"):
            values = {repr(getattr(spec, attribute)) for spec in members}
            if len(values) > 1:
                problems.append(
                    f"worker group {group!r}: its queues disagree on {attribute} "
                    f"({', '.join(f'{s.name}={getattr(s, attribute)!r}' for s in members)}); "
                    "a group is one worker command line"
                )
    return problems


def validate_table(specs: tuple[QueueSpec, ...]) -> tuple[QueueSpec, ...]:
    problems = table_problems(specs)
    if problems:
        raise QueueTableError("queue table: " + "; ".join(problems))
    return specs


def cap_time_limits(specs: tuple[QueueSpec, ...], seconds: int | None) -> tuple[QueueSpec, ...]:
    """Cap every time limit and retry delay at ``seconds`` (``CELERY_TIME_LIMIT_CAP``).

    For deployments without long work (and the chaos tests): with every limit
    capped, a short visibility timeout becomes safe, so a dead worker's tasks
    come back in seconds instead of an hour.
    """
    if not seconds:
        return specs
    return tuple(
        replace(
            spec,
            soft_time_limit=min(spec.soft_time_limit, max(1, seconds - 1)),
            time_limit=min(spec.time_limit, seconds),
            retry_backoff_cap=min(spec.retry_backoff_cap, seconds),
        )
        for spec in specs
    )


class QueueTable:
    """A validated queue table and everything derived from it."""

    def __init__(
        self,
        specs: tuple[QueueSpec, ...],
        *,
        default_queue: str = "default",
        time_limit_cap: int | None = None,
    ) -> None:
        self.specs = cap_time_limits(validate_table(tuple(specs)), time_limit_cap)
        self.names: tuple[str, ...] = tuple(spec.name for spec in self.specs)
        self.by_name: dict[str, QueueSpec] = {spec.name: spec for spec in self.specs}
        if default_queue not in self.by_name:
            raise QueueTableError(f"queue table: default queue {default_queue!r} is not in it")
        self.default_queue = default_queue
        self._queue_of_app = {app: spec.name for spec in self.specs for app in spec.apps}

    def __repr__(self) -> str:
        return f"QueueTable({', '.join(self.names)})"

    def queue_for_task(self, task_name: str) -> str:
        """The queue a task name is routed to by its app prefix."""
        return self._queue_of_app.get(task_name.split(".", 1)[0], self.default_queue)

    def max_message_bytes(self, queue: str) -> int | None:
        """The queue's message size limit; None for a queue not in the table."""
        spec = self.by_name.get(queue)
        return spec.max_message_bytes if spec is not None else None

    def spec_for_task(self, task_name: str) -> QueueSpec:
        return self.by_name[self.queue_for_task(task_name)]

    def kombu_queues(self, broker_url: str) -> tuple[Queue, ...]:
        """Declarations for ``task_queues``, for the broker ``broker_url`` names.

        Redis: one direct exchange per queue, as Celery does. RabbitMQ: quorum
        queues (replicated, survive a node loss) bound to one *topic* exchange per
        queue with the same routing key, because Celery's native delayed delivery,
        which carries countdowns, ETAs and retry backoff on quorum queues, cannot
        route through direct exchanges. The routing is the same: a task for
        ``email`` goes to exchange ``email``, key ``email``, queue ``email``.
        """
        if broker_kind(broker_url) == AMQP:
            return tuple(
                Queue(
                    spec.name,
                    Exchange(spec.name, type="topic"),
                    routing_key=spec.name,
                    queue_arguments={"x-queue-type": "quorum"},
                )
                for spec in self.specs
            )
        return tuple(
            Queue(spec.name, Exchange(spec.name, type="direct"), routing_key=spec.name)
            for spec in self.specs
        )

    def route_task(self, name, args, kwargs, options, task=None, **kw):
        """Celery router (``task_routes``): send each task to its app's queue.

        An explicit ``queue=`` given at call time wins (Celery merges options that
        way), so ``health_check_task`` can still be sent to every queue.
        """
        return {"queue": self.queue_for_task(name)}

    @cached_property
    def annotations(self) -> QueueTableAnnotations:
        """Celery ``task_annotations`` deriving each task's limits from its queue."""
        return QueueTableAnnotations(self)

    def longest_time_limit(self) -> int:
        limits = [spec.time_limit for spec in self.specs]
        limits += [
            int(value)
            for spec in self.specs
            for override in spec.task_overrides.values()
            for key, value in override.items()
            if key == "time_limit"
        ]
        return max(limits)

    def longest_retry_delay(self) -> int:
        return max(spec.retry_backoff_cap for spec in self.specs)

    def worker_groups(self) -> dict[str, tuple[QueueSpec, ...]]:
        groups: dict[str, list[QueueSpec]] = {}
        for spec in self.specs:
            groups.setdefault(spec.worker_group, []).append(spec)
        return {name: tuple(specs) for name, specs in groups.items()}


class QueueTableAnnotations:
    """Celery ``task_annotations`` object deriving limits from the queue table.

    Celery calls ``annotate(task)`` once per task class; the returned attributes
    become that task's defaults (``time_limit``, ``rate_limit``, ...).
    """

    def __init__(self, table: QueueTable) -> None:
        self.table = table

    def annotate(self, task) -> dict[str, object]:
        if not task.name or task.name.startswith("celery."):
            return {}
        spec = self.table.spec_for_task(task.name)
        queue_values: dict[str, object] = {
            "soft_time_limit": spec.soft_time_limit,
            "time_limit": spec.time_limit,
            "max_retries": spec.max_retries,
            "rate_limit": spec.rate_limit,
            # Celery's retry options; taskcore.base.BaseTask retries with them.
            "retry_backoff": spec.retry_backoff_base,
            "retry_backoff_max": spec.retry_backoff_cap,
            "retry_jitter": True,
            "retry_horizon": spec.retry_horizon,
        }
        # A task's own decorator options (stored on its generated class) win over the queue's.
        # Celery passes the task class here (Task.annotate is a classmethod).
        # Celery's bind() first copies task_time_limit, task_soft_time_limit and
        # task_default_rate_limit (None by default) onto the class: only a value
        # that is set is the task's own.
        own = {
            key
            for key, value in vars(task if isinstance(task, type) else type(task)).items()
            if value is not None
        }
        values = {
            key: value
            for key, value in queue_values.items()
            if value is not None and key not in own
        }
        values.update(spec.task_overrides.get(task.name, {}))
        return values


def queue_table() -> QueueTable:
    """The project's queue table (the ``TASKCORE_QUEUE_TABLE`` setting)."""
    from django.conf import settings

    return settings.TASKCORE_QUEUE_TABLE
