"""The task pipeline: the only receiver of Celery's task signals, and what it hands on."""

from __future__ import annotations

import logging
import random
import time

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery import signals

from taskcore import pipeline
from taskcore.base import PermanentError
from taskcore.tasks import debug_task
from taskcore.testing.signals import TASK_SIGNALS, task_signal_receivers
from taskcore.testing.tasks import task_signal_receivers as receivers_in_worker
from taskcore.testing.waiting import wait_until

# Celery's own Django fixup, connected in workers only: it closes stale database
# connections around each task. Celery's, not ours; nothing else may be there.
CELERY_DJANGO_FIXUP = {
    "task_prerun": ["celery.fixups.django.DjangoWorkerFixup.on_task_prerun"],
    "task_postrun": ["celery.fixups.django.DjangoWorkerFixup.on_task_postrun"],
}
# The signals the pipeline listens to (Celery's others it does not need).
OBSERVED = {
    "before_task_publish",
    "task_received",
    "task_prerun",
    "task_postrun",
    "task_retry",
    "task_failure",
    "task_rejected",
    "task_revoked",
    "task_unknown",
}


def assert_only_the_pipeline(found: dict[str, list[str]], allowed: dict[str, list[str]]) -> None:
    assert set(found) == set(TASK_SIGNALS)
    for name, receivers in found.items():
        ours = [r for r in receivers if r.startswith("taskcore.pipeline.")]
        others = [r for r in receivers if r not in ours]
        assert others == allowed.get(name, []), f"{name}: receivers outside the pipeline"
        assert len(ours) == (1 if name in OBSERVED else 0), f"{name}: {ours}"


def test_after_django_setup_only_the_pipeline_receives_task_signals():
    assert_only_the_pipeline(task_signal_receivers(), {})


@pytest.mark.parametrize("pool", ["prefork", "threads"])  # threads: the main process runs it
def test_in_a_started_worker_only_the_pipeline_receives_task_signals(start_worker, pool):
    start_worker(["default"], pool=pool)
    found = receivers_in_worker.delay().get(timeout=30)
    assert_only_the_pipeline(found, CELERY_DJANGO_FIXUP)


@pytest.fixture
def events():
    """Every pipeline event of the test, as records, by a subscriber removed afterwards."""
    seen: list[pipeline.TaskEvent] = []
    pipeline.subscribe(seen.append, events=pipeline.EVENTS, key="test.events")
    yield seen
    pipeline.unsubscribe("test.events")


@pytest.mark.django_db
def test_a_run_is_one_started_and_one_finished_record_with_its_runtime(events):
    debug_task.apply(args=["hello"], task_id="run-1")
    assert [(e.event, e.task_id) for e in events] == [("started", "run-1"), ("finished", "run-1")]
    finished = events[1]
    assert (finished.name, finished.queue) == (debug_task.name, "default")
    assert finished.state == "SUCCESS"
    assert finished.runtime is not None and 0 < finished.runtime < 5
    assert finished.in_run and finished.exception is None


@pytest.mark.django_db
def test_a_failure_for_good_is_one_failed_record_before_the_finished_one(events):
    debug_task.apply(kwargs={"sleep": -1}, task_id="run-2")  # PermanentError
    assert [e.event for e in events] == ["started", "failed", "finished"]
    failed, finished = events[1], events[2]
    assert isinstance(failed.exception, PermanentError)
    assert failed.exception_type == "PermanentError" and "PermanentError" in failed.traceback
    assert failed.kwargs == {"sleep": -1} and failed.max_retries == debug_task.max_retries
    assert (finished.state, finished.exception_type) == ("FAILURE", "PermanentError")


@pytest.mark.django_db
def test_a_failure_the_main_process_reports_is_failed_then_finished_outside_a_run(events):
    # What a worker's main process sends when it kills a child at the hard time limit.
    signals.task_failure.send(
        sender=debug_task, task_id="killed", exception=TimeLimitExceeded(90), args=["x"]
    )
    assert [(e.event, e.in_run) for e in events] == [("failed", True), ("finished", False)]
    assert events[1].state == "FAILURE" and events[1].runtime is None
    assert events[0].queue == "default"  # no delivery info: the queue table's


@pytest.mark.django_db
def test_a_failing_subscriber_neither_fails_the_task_nor_stops_the_others(events, caplog):
    def broken(record):
        raise RuntimeError("subscriber bug")

    pipeline.subscribe(broken, events=[pipeline.STARTED, pipeline.FINISHED], key="test.broken")
    try:
        with caplog.at_level(logging.ERROR, logger="taskcore.pipeline"):
            assert debug_task.apply(args=["a"]).get()["message"] == "a"
            assert debug_task.apply(args=["b"]).get()["message"] == "b"
    finally:
        pipeline.unsubscribe("test.broken")
    assert [e.event for e in events] == ["started", "finished"] * 2
    logged = [r for r in caplog.records if "test.broken failed" in r.getMessage()]
    assert len(logged) == 1  # at most once a minute per subscriber


def test_subscribers_of_one_task_get_only_its_events():
    seen = []
    pipeline.subscribe(seen.append, events=[pipeline.FAILED], tasks=["a.b.c"], key="test.one")
    try:
        for task_id, name in (("1", "x.y"), ("2", "a.b.c")):
            record = pipeline.TaskEvent(pipeline.FAILED, task_id, name)
            pipeline._dispatch(pipeline._by_event[pipeline.FAILED], record)
    finally:
        pipeline.unsubscribe("test.one")
    assert [e.task_id for e in seen] == ["2"]
    with pytest.raises(ValueError, match="unknown pipeline events"):
        pipeline.subscribe(seen.append, events=["exploded"])


def test_every_message_is_stamped_with_its_publication_time():
    headers = {"id": "m-1", "task": "t"}
    signals.before_task_publish.send(sender="t", headers=headers, body=(), routing_key="default")
    assert isinstance(headers[pipeline.SENT_AT_HEADER], float)


# --- retry policy: Celery's options and backoff ------------------------------------


def test_retry_backoff_comes_from_the_queue_table_as_celerys_task_options(app, settings):
    app.loader.import_default_modules()
    table = settings.TASKCORE_QUEUE_TABLE
    for name in ("notifications.tasks.send_delivery_batch", "media.tasks.process_upload"):
        task, spec = app.tasks[name], table.spec_for_task(name)
        assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (
            spec.retry_backoff_base,
            spec.retry_backoff_cap,
            True,
        )
        assert task.max_retries == spec.max_retries


def test_retry_countdown_is_celerys_full_jitter_exponential_backoff(app):
    app.loader.import_default_modules()
    task = app.tasks["notifications.tasks.send_delivery_batch"]  # factor 2, cap 600
    random.seed(7)
    for retries in range(12):
        task.push_request(retries=retries)
        try:
            delays = [task.retry_countdown() for _ in range(200)]
        finally:
            task.pop_request()
        ceiling = min(600, 2 * 2**retries)
        assert all(isinstance(d, int) and 0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole window


def test_task_lines_follow_the_settings(settings):
    from taskcore import lifecycle

    lines = {"taskcore.lifecycle.on_task_received", "taskcore.lifecycle.on_task_finished"}
    try:
        settings.CELERY_TASK_LIFECYCLE_LOG = False
        lifecycle.subscribe_task_lines()
        subscribed = set(pipeline.subscribers(pipeline.RECEIVED))
        subscribed |= set(pipeline.subscribers(pipeline.FINISHED))
        assert not lines & subscribed
        assert "taskcore.lifecycle.on_task_failed" in pipeline.subscribers(pipeline.FAILED)
        # Received lines are DEBUG in the summary mode: subscribed when they can be written.
        settings.CELERY_TASK_LIFECYCLE_LOG = True
        lifecycle.subscribe_task_lines()
        assert "taskcore.lifecycle.on_task_received" not in pipeline.subscribers(pipeline.RECEIVED)
        assert "taskcore.lifecycle.on_task_finished" in pipeline.subscribers(pipeline.FINISHED)
        settings.CELERY_TASK_LOG_LINES = "verbose"
        lifecycle.subscribe_task_lines()
        subscribed = set(pipeline.subscribers(pipeline.RECEIVED))
        assert lines <= subscribed | set(pipeline.subscribers(pipeline.FINISHED))
    finally:
        settings.CELERY_TASK_LIFECYCLE_LOG = True
        settings.CELERY_TASK_LOG_LINES = "summary"
        lifecycle.subscribe_task_lines()


@pytest.mark.django_db(transaction=True)
def test_a_child_killed_at_the_hard_time_limit_is_one_failure_for_every_subscriber(
    start_worker,
):
    """Celery 5.7's main process sends task_failure twice for such a task (the pool's
    error callback, then the timeout handler); the pipeline hands on one FAILED and one
    FINISHED, so the dead letter, the hooks and the task-run rows count it once."""
    from reports.models import TaskRun
    from taskcore.models import DeadLetter
    from taskcore.testing.tasks import outlives_its_soft_time_limit

    start_worker(["default"], pool="prefork")
    # Celery arms the hard limit when the soft one fires: soft below hard, as in the table.
    result = outlives_its_soft_time_limit.apply_async((30,), soft_time_limit=1, time_limit=2)

    assert wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).exists(), timeout=30)
    assert wait_until(lambda: TaskRun.objects.filter(task_id=result.id).exists(), timeout=10)
    time.sleep(3)  # the task-run rows are written in batches, at least once a second
    runs = list(TaskRun.objects.filter(task_id=result.id).values_list("state", "exception"))
    # (The child, terminated mid-run, may also end its own run: a row in state OTHER.)
    assert [run for run in runs if run[0] == "FAILURE"] == [("FAILURE", "TimeLimitExceeded")]
    assert DeadLetter.objects.get(task_id=result.id).exception_type == "TimeLimitExceeded"
