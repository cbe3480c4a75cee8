"""The queue table: the one place where this project's queues are described.

Routing, kombu ``Queue`` declarations, task annotations (time and rate limits,
retry policy), the start script's worker commands and the health thresholds are
all derived from ``QUEUES`` by :class:`taskcore.queues.QueueTable`; the settings
hand the table to the platform as ``TASKCORE_QUEUE_TABLE``. Never type a queue
name anywhere else.

This module must stay importable without Django settings (the start script and
the settings module both read it).
"""

from __future__ import annotations

from taskcore.queues import QueueSpec, QueueTable

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
        # Greylisting and relay outages (SMTP 4xx) often last longer than 10 minutes.
        retry_horizon=3_600,
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


DEFAULT_QUEUE = "default"
# The table as written. The settings' TASKCORE_QUEUE_TABLE is this one, or a copy
# with every time limit capped (CELERY_TIME_LIMIT_CAP); that one is what runs.
TABLE = QueueTable(QUEUES, default_queue=DEFAULT_QUEUE)
QUEUE_NAMES: tuple[str, ...] = TABLE.names
QUEUES_BY_NAME = TABLE.by_name
queue_for_task = TABLE.queue_for_task
spec_for_task = TABLE.spec_for_task
worker_groups = TABLE.worker_groups
