"""Task runs: recorded from the task pipeline, summed up in the task-activity report.

One row per execution, from the pipeline's ``FINISHED`` event (taskcore.pipeline,
registered in ``ReportsConfig.ready()``): success, failure or retry alike, with
the runtime the pipeline measured and the exception type, and also for a failure
the worker's main process reports (hard time limit, lost child; no runtime then).

Rows are written in batches (``taskcore.batching``: one multi-row INSERT per
500 runs or per second, per process), not one commit per task: a worker killed
with SIGKILL loses at most its last second of activity rows, never a task.

``REPORTS_RECORD_TASK_RUNS = False`` switches recording off. A failure to record
is logged and never affects the task.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Max, Q
from django.utils import timezone

from taskcore.batching import FlushingBuffer
from taskcore.pipeline import TaskEvent

from . import conf

logger = logging.getLogger(__name__)


RUN_COLUMNS = (
    "task_id",
    "task_name",
    "queue",
    "state",
    "runtime",
    "retries",
    "exception",
    "finished_at",
)


def _write_runs(rows: list[dict]) -> None:
    """One parameterised INSERT for the batch, in one transaction.

    Not ``bulk_create``: building a model instance per row and preparing every
    field through it cost ~50 us a row, a few percent of a worker's CPU per task
    at steady load (B1 steady in docs/benchmarks.md). The values are those the
    model's fields would write (``record_run`` bounds them); datetimes go through
    the backend's own adaptation.
    """
    from django.db import connections, router, transaction

    from .models import TaskRun

    alias = router.db_for_write(TaskRun)
    connection = connections[alias]
    quote = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    # Identifiers from the model, quoted by the backend; the values are parameters.
    sql = (
        f"INSERT INTO {quote(TaskRun._meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(c) for c in RUN_COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})"
    )
    values = [(*(row[c] for c in RUN_COLUMNS[:-1]), adapt(row["finished_at"])) for row in rows]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.executemany(sql, values)


_runs = FlushingBuffer("reports-task-runs", _write_runs)


@functools.cache
def _known_states() -> frozenset[str]:
    from .models import TaskRun

    return frozenset(TaskRun.State.values)


def record_run(*, task_id, task_name, queue, state, runtime, retries, exception="") -> None:
    from .models import TaskRun

    _runs.add(
        {
            "task_id": str(task_id or "")[:255],
            "task_name": str(task_name or "?")[:255],
            "queue": str(queue or "")[:100],
            "state": state if state in _known_states() else TaskRun.State.OTHER,
            "runtime": runtime if runtime is not None and math.isfinite(runtime) else None,
            "retries": int(retries or 0),
            "exception": str(exception or "")[:255],
            "finished_at": timezone.now(),
        }
    )


def on_task_finished(run: TaskEvent) -> None:
    """The pipeline's FINISHED subscriber: one row per execution."""
    if conf.record_task_runs():
        record_run(
            task_id=run.task_id,
            task_name=run.name,
            queue=run.queue,
            state=run.state,
            runtime=run.runtime,
            retries=run.retries,
            exception=run.exception_type,
        )


# --- the task-activity report --------------------------------------------------

BASE_COLUMNS = [
    "queue",
    "task",
    "runs",
    "succeeded",
    "failed",
    "retried",
]
RUNTIME_COLUMNS = ["median_runtime_s", "p95_runtime_s", "max_runtime_s", "last_finished_at"]


def dead_letter_model():
    """taskcore's DeadLetter model when it exists, else None (the column is left out)."""
    from django.apps import apps

    if not apps.is_installed("taskcore"):
        return None
    try:
        from taskcore.models import DeadLetter
    except ImportError:
        return None
    return DeadLetter


def report_columns() -> list[str]:
    extra = ["dead_letters"] if dead_letter_model() is not None else []
    return [*BASE_COLUMNS, *extra, *RUNTIME_COLUMNS]


def report_kinds() -> list[str]:
    from . import writers

    kinds = {
        "queue": writers.TEXT,
        "task": writers.TEXT,
        "median_runtime_s": writers.FLOAT,
        "p95_runtime_s": writers.FLOAT,
        "max_runtime_s": writers.FLOAT,
        "last_finished_at": writers.DATETIME,
    }
    return [kinds.get(column, writers.INTEGER) for column in report_columns()]


def _quantile_positions(count: int, q: float) -> tuple[int, int, float]:
    """Linear interpolation between order statistics (numpy's default, 'inclusive')."""
    position = (count - 1) * q
    low = math.floor(position)
    return low, min(low + 1, count - 1), position - low


def _dead_letter_counts(since: datetime, until: datetime) -> dict[tuple[str, str], int]:
    """Tasks that failed for good (``taskcore.models.DeadLetter``) last seen in the period."""
    model = dead_letter_model()
    if model is None:
        return {}
    grouped = (
        model._default_manager.filter(last_seen__gte=since, last_seen__lt=until)
        .values("queue", "task_name")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {(row["queue"] or "", row["task_name"]): row["n"] for row in grouped}


def task_activity_rows(
    since: datetime, until: datetime, *, chunk_size: int = 5000
) -> tuple[int, Iterator[tuple]]:
    """(number of rows, rows) of the report for runs finished in [since, until).

    Counts come from one GROUP BY; the median and 95th percentile from one pass
    over the runtimes sorted by the database, keeping only the few order
    statistics each group needs: memory stays flat however many runs there are.
    """
    from .models import TaskRun

    period = TaskRun.objects.filter(finished_at__gte=since, finished_at__lt=until)
    groups = list(
        period.values("queue", "task_name")
        .annotate(
            runs=Count("pk"),
            succeeded=Count("pk", filter=Q(state=TaskRun.State.SUCCESS)),
            failed=Count("pk", filter=Q(state=TaskRun.State.FAILURE)),
            retried=Count("pk", filter=Q(state=TaskRun.State.RETRY)),
            timed=Count("runtime"),
            max_runtime=Max("runtime"),
            last=Max("finished_at"),
        )
        .order_by("queue", "task_name")
    )
    dead_letters = _dead_letter_counts(since, until)
    with_dead_letters = dead_letter_model() is not None
    keys = {(g["queue"], g["task_name"]) for g in groups}
    for key in dead_letters:  # failed for good without a recorded run in the period
        if key not in keys:
            groups.append(
                {"queue": key[0], "task_name": key[1], "runs": 0, "succeeded": 0, "failed": 0}
                | {"retried": 0, "timed": 0, "max_runtime": None, "last": None}
            )
    groups.sort(key=lambda g: (g["queue"], g["task_name"]))

    # Which order statistics each group needs: {key: {index: value}}.
    wanted: dict[tuple[str, str], dict[int, float | None]] = {}
    for group in groups:
        if group["timed"]:
            needed = {}
            for q in (0.5, 0.95):
                low, high, _ = _quantile_positions(group["timed"], q)
                needed[low] = needed[high] = None
            wanted[(group["queue"], group["task_name"])] = needed

    def rows() -> Iterator[tuple]:
        current, index = None, 0
        runtimes = (
            period.filter(runtime__isnull=False)
            .order_by("queue", "task_name", "runtime")
            .values_list("queue", "task_name", "runtime")
            .iterator(chunk_size=chunk_size)
        )
        for queue, task_name, runtime in runtimes:
            key = (queue, task_name)
            if key != current:
                current, index = key, 0
            needed = wanted.get(key)
            if needed is not None and index in needed:
                needed[index] = runtime
            index += 1
        for group in groups:
            key = (group["queue"], group["task_name"])
            stats: list = []
            for q in (0.5, 0.95):
                if group["timed"]:
                    low, high, fraction = _quantile_positions(group["timed"], q)
                    values = wanted[key]
                    stats.append(round(values[low] + (values[high] - values[low]) * fraction, 6))
                else:
                    stats.append(None)
            row = [
                group["queue"],
                group["task_name"],
                group["runs"],
                group["succeeded"],
                group["failed"],
                group["retried"],
            ]
            if with_dead_letters:
                row.append(dead_letters.get(key, 0))
            max_runtime = group["max_runtime"]
            row += [*stats, round(max_runtime, 6) if max_runtime is not None else None]
            row.append(group["last"])
            yield tuple(row)

    return len(groups), rows()
