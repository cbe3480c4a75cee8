"""The queue table: the one place where queues are described.

Routing, kombu ``Queue`` declarations, task annotations (time and rate limits,
retry policy), the start script's worker commands and the health thresholds are
all derived from ``QUEUES``. Never type a queue name anywhere else.

This module must stay importable without Django settings (the start script and
the settings module both read it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from kombu import Exchange, Queue


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
    # Retry policy for transient errors: exponential backoff with full jitter.
    max_retries: int = 5
    retry_backoff_base: int = 2
    retry_backoff_cap: int = 300
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
    # Per task type overrides of the annotation values above, keyed by full task name.
    task_overrides: dict[str, dict[str, object]] = field(default_factory=dict)


QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(
        name="default",
        purpose="General tasks: system tasks, debug tasks",
        apps=(),
        soft_time_limit=60,
        time_limit=90,
        worker_group="io",
        # Measured (B1): threads 8 / prefetch 4 run short I/O tasks 2.4x faster than
        # prefork 4 / prefetch 1 on 2 cores. Threads enforce no time limits and do
        # not requeue at once on a crash: default tasks are short and bound by socket
        # timeouts. The all-queues worker stays prefork, prefetch 1 (spec). (email,
        # measured in the same shape, has its own autoscaled group now: see below.)
        pool="threads",
        concurrency=8,
        prefetch_multiplier=4,
        # Measured (B1, 2 cores): two threads workers run tiny tasks 1.5x and 2 ms
        # I/O tasks 1.3x faster than one; like Dramatiq's processes x threads.
        worker_processes=2,
    ),
    QueueSpec(
        name="email",
        purpose="Email processing: notifications, bulk emails",
        apps=("notifications",),
        soft_time_limit=120,
        time_limit=180,
        rate_limit="600/m",
        max_retries=8,
        retry_backoff_cap=600,
        # Its own group, autoscaled: campaigns arrive in bursts of batch tasks (one
        # per EMAIL_BATCH_SIZE recipients, seconds each), so the per-message cost
        # that favours threads for `default` (B1: 2 ms tasks) does not matter here,
        # and prefork adds what threads lack: pool autoscaling, the time limits (a
        # batch stopped by the soft limit hands its unsent recipients back and
        # retries them) and an immediate requeue when a child dies. Prefetch 1: the
        # autoscaler grows on reserved messages, max x 1 of them per host, so one
        # host does not hoard a campaign while another of the group idles.
        worker_group="mail",
        pool="prefork",
        concurrency=8,
        autoscale=(8, 2),
        prefetch_multiplier=1,
    ),
    QueueSpec(
        name="media",
        purpose="Media processing: image processing, file uploads",
        apps=("media",),
        soft_time_limit=120,
        time_limit=150,
        max_retries=3,
        worker_group="cpu",
        max_memory_per_child_kb=512_000,
    ),
    QueueSpec(
        name="reports",
        purpose="Report generation: data exports, admin reports",
        apps=("reports",),
        soft_time_limit=1_500,
        time_limit=1_800,
        max_retries=3,
        worker_group="batch",
        concurrency=1,
        max_tasks_per_child=100,
        max_memory_per_child_kb=1_024_000,
        age_warning=300,
        age_critical=1_800,
    ),
    QueueSpec(
        name="maintenance",
        purpose="System maintenance: health checks, cleanup tasks",
        apps=("maintenance", "dashboard"),
        soft_time_limit=240,
        time_limit=300,
        max_retries=3,
        worker_group="ops",
        concurrency=1,
    ),
)


def _apply_time_limit_cap(specs: tuple[QueueSpec, ...]) -> tuple[QueueSpec, ...]:
    """``CELERY_TIME_LIMIT_CAP`` (seconds) caps every time limit and retry delay.

    For deployments without long work (and the chaos tests): with every limit
    capped, a short visibility timeout becomes safe, so a dead worker's tasks
    come back in seconds instead of an hour.
    """
    cap = os.environ.get("CELERY_TIME_LIMIT_CAP")
    if not cap:
        return specs
    seconds = int(cap)
    return tuple(
        replace(
            spec,
            soft_time_limit=min(spec.soft_time_limit, max(1, seconds - 1)),
            time_limit=min(spec.time_limit, seconds),
            retry_backoff_cap=min(spec.retry_backoff_cap, seconds),
        )
        for spec in specs
    )


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
        raise QueueTableError("admin_backend/queues.py: " + "; ".join(problems))
    return specs


QUEUES = _apply_time_limit_cap(validate_table(QUEUES))

DEFAULT_QUEUE = "default"
QUEUES_BY_NAME: dict[str, QueueSpec] = {spec.name: spec for spec in QUEUES}
QUEUE_NAMES: tuple[str, ...] = tuple(spec.name for spec in QUEUES)


def queue_for_task(task_name: str) -> str:
    """Return the queue a task name is routed to by its app prefix."""
    app_label = task_name.split(".", 1)[0]
    for spec in QUEUES:
        if app_label in spec.apps:
            return spec.name
    return DEFAULT_QUEUE


def spec_for_task(task_name: str) -> QueueSpec:
    return QUEUES_BY_NAME[queue_for_task(task_name)]


def kombu_queues(broker_url: str | None = None) -> tuple[Queue, ...]:
    """Declarations for ``task_queues``, for the broker ``broker_url`` names.

    Redis: one direct exchange per queue, as Celery does. RabbitMQ (``amqp://``,
    ``pyamqp://``): quorum queues (replicated, survive a node loss) bound to one
    *topic* exchange per queue with the same routing key, because Celery's native
    delayed delivery, which carries countdowns, ETAs and retry backoff on quorum
    queues, cannot route through direct exchanges. The routing is the same: a
    task for ``email`` goes to exchange ``email``, key ``email``, queue ``email``.
    ``broker_url`` defaults to ``CELERY_BROKER_URL`` from the environment.
    """
    if broker_url is None:
        broker_url = os.environ.get("CELERY_BROKER_URL", "")
    from taskcore.brokers import AMQP, broker_kind

    if broker_kind(broker_url) == AMQP:
        return tuple(
            Queue(
                spec.name,
                Exchange(spec.name, type="topic"),
                routing_key=spec.name,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for spec in QUEUES
        )
    return tuple(
        Queue(spec.name, Exchange(spec.name, type="direct"), routing_key=spec.name)
        for spec in QUEUES
    )


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (``task_routes``): send each task to its app's queue.

    An explicit ``queue=`` given at call time wins (Celery merges options that
    way), so ``health_check_task`` can still be sent to every queue.
    """
    return {"queue": queue_for_task(name)}


class QueueTableAnnotations:
    """Celery ``task_annotations`` object deriving limits from the queue table.

    Celery calls ``annotate(task)`` once per task class; the returned attributes
    become that task's defaults (``time_limit``, ``rate_limit``, ...).
    """

    def annotate(self, task) -> dict[str, object]:
        if not task.name or task.name.startswith("celery."):
            return {}
        spec = spec_for_task(task.name)
        queue_values: dict[str, object] = {
            "soft_time_limit": spec.soft_time_limit,
            "time_limit": spec.time_limit,
            "max_retries": spec.max_retries,
            "rate_limit": spec.rate_limit,
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


def longest_time_limit() -> int:
    limits = [spec.time_limit for spec in QUEUES]
    limits += [
        int(value)
        for spec in QUEUES
        for override in spec.task_overrides.values()
        for key, value in override.items()
        if key == "time_limit"
    ]
    return max(limits)


def longest_retry_delay() -> int:
    return max(spec.retry_backoff_cap for spec in QUEUES)


def worker_groups() -> dict[str, tuple[QueueSpec, ...]]:
    groups: dict[str, list[QueueSpec]] = {}
    for spec in QUEUES:
        groups.setdefault(spec.worker_group, []).append(spec)
    return {name: tuple(specs) for name, specs in groups.items()}
