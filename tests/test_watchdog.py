"""The stalled-worker watchdog (taskcore/watchdog.py) and R11 of the chaos suite.

The judge is plain data: its tests feed it observations. The chaos tests stall a
real worker's consumer (``taskcore.testing.faults``: its task channel reports no
prefetch credit, as in the wedge of issue 19) while messages wait in its queue,
and watch what an operator would: ``manage.py celery_health``'s JSON, the
queue's depth, the tasks that run, the worker's exit status.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskcore.redis_clients import state_redis
from taskcore.testing.waiting import wait_until
from taskcore.watchdog import (
    EXIT,
    EXIT_STALLED,
    RESTART_CONSUMER,
    Observation,
    ProgressJudge,
)
from tests.test_deploy_start_script import (  # noqa: F401 - fixtures used below
    WORKER_NODE,
    _ping,
    probe_app,
    run_script,
    script_env,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
EXECUTIONS = "chaos:executions"


def seen(now, *, waiting=5, free=2, started=0, reserved=(), poll_age=None) -> Observation:
    return Observation(now, waiting, free, started, frozenset(reserved), poll_age)


# --- the judge ------------------------------------------------------------------------
def test_waiting_work_free_slots_and_no_progress_restart_the_consumer_then_exit():
    judge = ProgressJudge(stall_seconds=60)
    assert judge.observe(seen(0)).action is None  # the first look is the baseline
    assert judge.observe(seen(10)).stalled_for == 0  # the stall starts being counted here
    verdict = judge.observe(seen(40))
    assert verdict.stalled_for == 30 and verdict.action is None
    assert "5 messages wait" in verdict.reason
    assert judge.observe(seen(70)).action == RESTART_CONSUMER
    assert judge.observe(seen(100)).action is None  # a second period for the restart
    assert judge.observe(seen(130)).action == EXIT
    assert judge.consumer_restarts == 1


def test_a_task_started_or_a_new_reservation_is_progress():
    judge = ProgressJudge(stall_seconds=60)
    judge.observe(seen(0, started=3, reserved={"a"}))
    judge.observe(seen(10, started=3, reserved={"a"}))
    assert judge.observe(seen(65, started=4, reserved={"a"})).action is None
    judge.observe(seen(70, started=4, reserved={"a"}))
    assert judge.observe(seen(125, started=4, reserved={"a", "b"})).action is None
    assert judge.idle_since is None


def test_requests_dropped_by_a_consumer_restart_are_not_progress():
    judge = ProgressJudge(stall_seconds=60)
    judge.observe(seen(0, reserved={"a", "b"}))
    judge.observe(seen(10, reserved={"a", "b"}))
    assert judge.observe(seen(70, reserved={"a", "b"})).action == RESTART_CONSUMER
    assert judge.observe(seen(75, reserved=())).action is None
    assert judge.observe(seen(131, reserved=())).action == EXIT


@pytest.mark.parametrize(
    "idle", [{"waiting": 0}, {"free": 0}, {"waiting": None}], ids=["empty", "busy", "unreadable"]
)
def test_an_empty_queue_a_busy_pool_or_an_unreadable_broker_is_no_stall(idle):
    judge = ProgressJudge(stall_seconds=60)
    for now in range(0, 300, 10):
        assert judge.observe(seen(now, **idle)).action is None


def test_progress_after_the_consumer_restart_cancels_the_exit():
    judge = ProgressJudge(stall_seconds=60)
    judge.observe(seen(0))
    judge.observe(seen(10))
    assert judge.observe(seen(70)).action == RESTART_CONSUMER
    judge.observe(seen(75, started=1))
    judge.observe(seen(80, started=1))
    assert judge.observe(seen(135, started=1)).action is None
    assert judge.observe(seen(140, started=1)).action == RESTART_CONSUMER


def test_a_broker_read_outstanding_for_the_period_is_a_stall_even_without_waiting_work():
    judge = ProgressJudge(stall_seconds=60)
    judge.observe(seen(0, waiting=0))
    verdict = judge.observe(seen(65, waiting=0, poll_age=61))
    assert verdict.action == RESTART_CONSUMER
    assert "half-open" in verdict.reason


# --- R11: chaos ---------------------------------------------------------------------------
def health_of_workers() -> dict:
    """``manage.py celery_health --only workers --format json``: the workers check."""
    done = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--only", "workers", "--format", "json"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout)
    return next(check for check in report["checks"] if check["name"] == "workers")


def worker_healthcheck(node: str) -> subprocess.CompletedProcess:
    """What the Compose healthcheck of a worker container runs after the spec's ping."""
    return subprocess.run(
        [sys.executable, "deploy/healthcheck.py", "worker", node],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_container_healthcheck_passes_a_working_worker_and_fails_a_missing_one(
    start_worker,
):
    worker = start_worker(["default"], concurrency=1)
    healthy = worker_healthcheck(worker.hostname)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert f"{worker.hostname} answers and makes progress" in healthy.stdout
    missing = worker_healthcheck("nobody@nowhere")
    assert missing.returncode == 1
    assert "nobody@nowhere does not answer" in missing.stdout


def send_executions(app, count: int, prefix: str) -> None:
    with app.producer_or_acquire() as producer:
        for index in range(count):
            app.send_task(
                "taskcore.testing.record_execution",
                args=[f"{prefix}-{index}", 0],
                queue="default",
                producer=producer,
                ignore_result=True,
            )


def stall(app, worker, *, persist: bool) -> None:
    replies = app.control.broadcast(
        "testing_stall_consumer",
        arguments={"persist": persist},
        destination=[worker.hostname],
        reply=True,
        timeout=5,
    )
    assert replies, "the worker did not take the fault"


@pytest.mark.chaos
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_r11_a_stalled_consumer_is_reported_and_restarted_while_work_waits(app, start_worker, pool):
    """Default period (60 s): reported stalled within 60 s, consuming again within 90 s.

    Both worker shapes of the queue table (threads: the shape issue 19 saw wedged).
    """
    from tests.test_chaos import record_figures

    total = 300
    worker = start_worker(["default"], concurrency=2, pool=pool, env={"CELERY_LOG_LEVEL": "INFO"})
    pid = worker.process.pid
    stall(app, worker, persist=False)
    send_executions(app, total, "r11")
    stalled_at = time.monotonic()
    client = state_redis()
    reported = resumed = restarted = None
    depth_while_stalled: list[int] = []
    detail = ""
    while time.monotonic() - stalled_at < 150:
        if restarted is None and "restarting its consumer" in worker.output():
            restarted = time.monotonic() - stalled_at
        ran = client.llen(EXECUTIONS)
        if ran and resumed is None:
            resumed = time.monotonic() - stalled_at
        if resumed is None:
            depth_while_stalled.append(client.llen("default"))
        if reported is None:
            check = health_of_workers()
            if check["status"] == "critical" and "stalled" in check["detail"]:
                reported, detail = time.monotonic() - stalled_at, check["detail"]
                container_check = worker_healthcheck(worker.hostname)
        if ran >= total:
            break
        time.sleep(1)
    ran = client.llen(EXECUTIONS)
    log = worker.output()
    figures = {
        "stall_seconds": 60,
        "pool": pool,
        "sent": total,
        "reported_stalled_after_s": None if reported is None else round(reported, 1),
        "consumer_restart_logged_after_s": None if restarted is None else round(restarted, 1),
        "resumed_after_s": None if resumed is None else round(resumed, 1),
        "ran": ran,
        "min_depth_while_stalled": min(depth_while_stalled) if depth_while_stalled else None,
        "same_process": worker.process.poll() is None and worker.process.pid == pid,
    }
    record_figures(f"R11 consumer restart {pool}", figures)
    assert reported is not None and reported <= 60, (figures, log[-3000:])
    assert "answer ping but make no progress" in detail
    # The container healthcheck (deploy/healthcheck.py worker) saw it too.
    assert container_check.returncode == 1 and "is stalled" in container_check.stdout
    assert resumed is not None and resumed <= 90, (figures, log[-3000:])
    assert "restarting its consumer" in log and figures["same_process"], figures
    assert figures["min_depth_while_stalled"] and figures["min_depth_while_stalled"] > 0
    assert ran == total, figures
    # The next tick of the watchdog (at most 5 s) publishes the progress.
    assert wait_until(lambda: health_of_workers()["status"] == "ok", timeout=20)


@pytest.mark.chaos
def test_r11_a_stall_a_consumer_restart_cannot_cure_ends_the_process_with_status_69(
    app, start_worker
):
    """The fault survives the consumer restart: the worker exits, a fresh process drains."""
    from tests.test_chaos import record_figures

    period, total = 15, 50
    env = {"CELERY_WORKER_STALL_SECONDS": str(period), "CELERY_LOG_LEVEL": "INFO"}
    worker = start_worker(["default"], concurrency=2, env=env)
    stall(app, worker, persist=True)
    send_executions(app, total, "r11-exit")
    stalled_at = time.monotonic()
    try:
        status = worker.process.wait(timeout=2 * period + 60)
    except subprocess.TimeoutExpired:
        status = None
    exited_after = time.monotonic() - stalled_at
    log = worker.output()
    client = state_redis()
    waiting_at_exit = client.llen("default")
    # What the supervisor does (start_celery.sh, Compose, systemd): start it again.
    start_worker(["default"], concurrency=2, env=env)
    deadline = time.monotonic() + 60
    while client.llen(EXECUTIONS) < total and time.monotonic() < deadline:
        time.sleep(0.5)
    figures = {
        "stall_seconds": period,
        "exit_status": status,
        "exited_after_s": round(exited_after, 1),
        "waiting_at_exit": waiting_at_exit,
        "ran_after_restart": client.llen(EXECUTIONS),
    }
    record_figures("R11 exit", figures)
    assert status == EXIT_STALLED, (figures, log[-3000:])
    assert "restarting its consumer" in log and "still stalled" in log
    assert exited_after >= 2 * period - 5, figures  # one consumer restart was tried first
    assert waiting_at_exit == total
    assert figures["ran_after_restart"] == total, figures


# --- a broker that answers but refuses writes is critical -------------------------------
def broker_check(url: str, monkeypatch):
    from celery import Celery

    from taskcore.health import run_health

    # Celery's variables win over arguments (as in tests/test_chaos.py).
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    app = Celery("refusing-broker", broker=url, backend=url, set_as_current=False)
    report = run_health(app, only=["broker"], timeout=5)
    return next(result for result in report.results if result.name == "broker")


def test_a_redis_out_of_memory_answers_ping_but_the_broker_check_is_critical(
    private_redis, monkeypatch
):
    server = private_redis("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    result = broker_check(server.url, monkeypatch)
    assert result.status.value == "critical", result
    assert "refuses writes: out of memory" in result.detail
    assert "maxmemory" in result.remedy


def test_a_paused_redis_makes_the_broker_check_critical_within_its_timeout(
    private_redis, monkeypatch
):
    import redis

    server = private_redis()
    assert broker_check(server.url, monkeypatch).status.value == "ok"
    redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    result = broker_check(server.url, monkeypatch)
    assert result.status.value == "critical", result
    assert "a write did not complete" in result.detail


@pytest.mark.chaos
def test_r11_start_celery_sh_restarts_a_worker_the_watchdog_stopped(
    script_env,  # noqa: F811 - fixtures of tests/test_deploy_start_script.py
    run_script,  # noqa: F811
    probe_app,  # noqa: F811
):
    """The whole path with the development supervisor: stall, exit 69, restart, drained."""
    import redis

    from tests.test_chaos import record_figures

    period, total = 10, 50
    env = {**script_env, "CELERY_WORKER_STALL_SECONDS": str(period), "RESTART_MAX_ATTEMPTS": "3"}
    run = run_script(["--no-setup", "--no-beat", "--no-web", "--no-flower", "--no-smtp"], env)
    run.wait_for(r"running; press Ctrl-C to stop")
    _ping(probe_app, WORKER_NODE)
    replies = probe_app.control.broadcast(
        "testing_stall_consumer",
        arguments={"persist": True},
        destination=[WORKER_NODE],
        reply=True,
        timeout=5,
    )
    assert replies
    send_executions(probe_app, total, "r11-script")
    stalled_at = time.monotonic()
    run.wait_for(r"worker stopped itself: stalled")
    restarted = time.monotonic() - stalled_at
    run.wait_for(r"worker exited with status 69; restart 1 of 3")
    client = redis.Redis.from_url(script_env["CELERY_BROKER_URL"])
    deadline = time.monotonic() + 90
    while client.llen(EXECUTIONS) < total and time.monotonic() < deadline:
        time.sleep(0.5)
    drained = time.monotonic() - stalled_at
    figures = {
        "stall_seconds": period,
        "sent": total,
        "script_restarted_worker_after_s": round(restarted, 1),
        "drained_after_s": round(drained, 1),
        "ran": client.llen(EXECUTIONS),
    }
    record_figures("R11 start_celery.sh", figures)
    assert figures["ran"] == total, (figures, run.output()[-4000:])
    run.process.send_signal(signal.SIGINT)
    assert run.wait(90) == 0, run.output()[-4000:]
