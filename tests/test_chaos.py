"""Chaos suite R1-R4: real workers, a Redis of its own with AOF, processes killed on purpose.

Run alone with ``./run_tests.sh -m chaos``. Each test prints its figures (also
kept in var/chaos-figures.json); docs/reliability.md records them with the
configuration below.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from taskcore.models import DeadLetter, EffectClaim

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

PROJECT_DIR = Path(__file__).resolve().parent.parent
FIGURES_FILE = PROJECT_DIR / "var" / "chaos-figures.json"
EFFECT_TASK = "taskcore.testing.record_effect"

# Every time limit capped at 10 s makes a 15 s visibility timeout safe, so the
# tasks of a killed worker come back within seconds (see docs/reliability.md).
CHAOS_SETTINGS = {
    "CELERY_TIME_LIMIT_CAP": "10",
    "CELERY_VISIBILITY_TIMEOUT": "15",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "CELERY_MAX_DELIVERIES": "3",
    "CELERY_LOG_LEVEL": "WARNING",
}
AOF_EVERYSEC = ("--appendonly", "yes", "--appendfsync", "everysec")


def record_figures(name: str, figures: dict) -> None:
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    existing = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    existing[name] = figures
    FIGURES_FILE.write_text(json.dumps(existing, indent=2, sort_keys=True))
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), file=sys.__stdout__)


class ChaosStack:
    """A private Redis, the environment pointing at it, and a client app on it."""

    def __init__(self, server, monkeypatch, worker_database_url):
        self.server = server
        url = server.url
        self.env = {
            **CHAOS_SETTINGS,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "CACHE_URL": url,
            "DATABASE_URL": worker_database_url,
        }
        # Celery's variables win over arguments: the client app must see them too.
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
        self.client = Celery("chaos-client", broker=url, backend=url, set_as_current=False)
        self.client.conf.broker_transport_options = {"visibility_timeout": 15}
        # The settings registered the project's transport under kombu's "redis"
        # alias, so this client, like every publisher in the process, uses it.

    def publish(self, keys, ignore_result: bool = True) -> int:
        """Send one effect task per key over one producer; results ignored unless asked."""
        sent = 0
        with self.client.producer_or_acquire() as producer:
            for key in keys:
                self.client.send_task(
                    EFFECT_TASK,
                    args=[str(key)],
                    queue="default",
                    producer=producer,
                    ignore_result=ignore_result,
                    retry=True,
                    retry_policy={
                        "max_retries": 30,
                        "interval_start": 0.2,
                        "interval_step": 0.2,
                        "interval_max": 1,
                    },
                )
                sent += 1
        return sent

    def duplicates(self) -> int:
        # The effect task counts absorbed duplicates through Django's cache (key prefix applies).
        client = redis.Redis.from_url(self.server.url)
        keys = client.keys("*chaos:duplicates")
        return int(client.get(keys[0])) if keys else 0


@pytest.fixture
def chaos(private_redis, monkeypatch, worker_database_url):
    return lambda *redis_args: ChaosStack(
        private_redis(*redis_args), monkeypatch, worker_database_url
    )


def wait_for_effects(expected: int, timeout: float = 900, on_tick=None, stall: float = 90) -> int:
    """Wait until ``expected`` effects exist; give up after ``stall`` seconds without progress.

    Progress, not a fixed deadline: on a loaded machine the same run takes much
    longer, but a stuck worker or a lost message still shows up as a stall.
    """
    deadline = time.monotonic() + timeout
    done, last_progress, last_done = 0, time.monotonic(), -1
    while time.monotonic() < deadline:
        done = EffectClaim.objects.filter(scope="chaos").count()
        if done >= expected:
            return done
        if done != last_done:
            last_done, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > stall:
            return done
        if on_tick:
            on_tick(done)
        time.sleep(0.25)
    return done


def test_r1_killing_worker_children_and_main_processes_loses_nothing(chaos, start_worker):
    stack = chaos(*AOF_EVERYSEC)
    total = 10_000
    workers = [start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)]
    sent = stack.publish(range(total))
    kills = {"children": 0, "main": 0}
    main_kill_marks = [total * 3 // 10, total * 6 // 10]
    last_child_kill = [time.monotonic()]

    def chaos_tick(done: int) -> None:
        worker = workers[-1]
        if main_kill_marks and done >= main_kill_marks[0]:
            main_kill_marks.pop(0)
            worker.kill()  # the main process and its children, like a lost host
            kills["main"] += 1
            workers.append(
                start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)
            )
        elif time.monotonic() - last_child_kill[0] > 0.5:
            children = worker.child_pids()
            if children:
                try:
                    os.kill(random.choice(children), signal.SIGKILL)
                    kills["children"] += 1
                except ProcessLookupError:
                    pass
            last_child_kill[0] = time.monotonic()

    effects = wait_for_effects(total, on_tick=chaos_tick)
    dead = DeadLetter.objects.count()
    figures = {
        "sent": sent,
        "effects": effects,
        "lost": sent - effects,
        "dead_letters": dead,
        "duplicates_absorbed": stack.duplicates(),
        "children_killed": kills["children"],
        "main_processes_killed": kills["main"],
    }
    record_figures("R1", figures)
    assert kills["main"] >= 2 and kills["children"] >= 5
    assert effects == total, figures


@pytest.mark.parametrize(
    ("variant", "redis_args", "stop_signal"),
    [
        ("aof-everysec-sigterm", AOF_EVERYSEC, signal.SIGTERM),
        ("aof-everysec-sigkill", AOF_EVERYSEC, signal.SIGKILL),
    ],
)
def test_r2_restarting_redis_mid_run_loses_nothing_with_aof(
    chaos, start_worker, variant, redis_args, stop_signal
):
    stack = chaos(*redis_args)
    total = 10_000
    start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)
    sent = stack.publish(range(total))
    restarted = []

    def restart_once(done: int) -> None:
        if not restarted and done >= total // 3:
            stack.server.restart(stop_signal)
            restarted.append(done)

    effects = wait_for_effects(total, on_tick=restart_once)
    figures = {
        "sent": sent,
        "effects": effects,
        "lost": sent - effects,
        "restarted_after_effects": restarted[0] if restarted else None,
        "duplicates_absorbed": stack.duplicates(),
    }
    record_figures(f"R2 {variant}", figures)
    assert restarted
    assert effects == total, figures


def test_r2_without_persistence_a_redis_restart_loses_the_queue(chaos, start_worker):
    """The fact users must know: Redis without AOF forgets every queued message."""
    stack = chaos("--appendonly", "no", "--save", "")
    total = 10_000
    sent = stack.publish(range(total))
    worker = start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)
    restarted = []

    def restart_once(done: int) -> None:
        if not restarted and done >= 500:
            stack.server.restart(signal.SIGKILL)
            restarted.append(done)

    effects = wait_for_effects(total, on_tick=restart_once, stall=15)
    worker.stop()
    lost = sent - EffectClaim.objects.filter(scope="chaos").count()
    record_figures(
        "R2 no-persistence-sigkill",
        {"sent": sent, "effects": sent - lost, "lost": lost, "restarted_after_effects": restarted},
    )
    assert restarted and effects < total and lost > 0


SEND_THROUGH_OUTBOX = """
import json, sys, time
import django
django.setup()
from django.db import transaction
from taskcore import outbox
task, count, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
slowest = 0.0
for n in range(count):
    started = time.monotonic()
    with transaction.atomic():
        outbox.send_after_commit(task, [f"{prefix}-{n}"])
    slowest = max(slowest, time.monotonic() - started)
print(json.dumps({"slowest_call_s": round(slowest, 3)}))
"""


def send_through_outbox(stack: ChaosStack, count: int, prefix: str) -> dict:
    """An application process sending ``count`` effect tasks with send_after_commit."""
    application = subprocess.run(
        [sys.executable, "-c", SEND_THROUGH_OUTBOX, EFFECT_TASK, str(count), prefix],
        cwd=PROJECT_DIR,
        env={**os.environ, **stack.env, "DJANGO_SETTINGS_MODULE": "admin_backend.settings"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert application.returncode == 0, application.stderr
    return json.loads(application.stdout.strip().splitlines()[-1])


def test_r8_a_worker_restarted_while_redis_is_full_waits_and_then_consumes(chaos, start_worker):
    """A supervisor restarts a worker while Redis refuses writes: it must not exit."""
    stack = chaos(*AOF_EVERYSEC, "--maxmemory-policy", "noeviction")
    # Its queues were declared before (by this worker's previous start, or a publisher).
    start_worker(["default"], concurrency=1, env=stack.env, client_app=stack.client).stop()
    client = redis.Redis.from_url(stack.server.url)
    client.config_set("maxmemory", 1)
    second = start_worker(
        ["default"], wait=False, concurrency=1, env=stack.env, client_app=stack.client
    )
    time.sleep(10)  # kombu declared its queues, the consumer started and was refused
    alive_while_full = second.process.poll() is None
    client.config_set("maxmemory", 0)
    sent = stack.publish(f"after-full-{n}" for n in range(50))
    effects = wait_for_effects(sent, stall=30)
    figures = {"alive_while_full": alive_while_full, "sent_after": sent, "effects": effects}
    record_figures("R8 restart while full", figures)
    assert alive_while_full, second.output()[-3000:]
    assert effects == sent, figures


def test_r3_tasks_enqueued_while_redis_is_down_all_run_via_the_outbox(chaos, start_worker):
    stack = chaos(*AOF_EVERYSEC)
    total = 1_000
    stack.server.stop()
    send_through_outbox(stack, total, "outbox")
    from taskcore.models import OutboxMessage

    waiting = OutboxMessage.objects.filter(published_at__isnull=True).count()
    stack.server.restart()
    # A worker that starts relays the outbox (and beat runs the relay task every minute).
    start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)
    effects = wait_for_effects(total)
    figures = {
        "enqueued_while_down": total,
        "waited_in_outbox": waiting,
        "effects": effects,
        "lost": total - effects,
        "published": OutboxMessage.objects.filter(published_at__isnull=False).count(),
        # The one publish tried while Redis was down (the others skipped straight to the relay).
        "failed_publish_attempts": sum(row.attempts - 1 for row in OutboxMessage.objects.all()),
    }
    record_figures("R3", figures)
    assert waiting == total
    assert effects == total, figures


def test_r4_a_poison_task_ends_in_exactly_one_dead_letter(chaos, start_worker):
    stack = chaos(*AOF_EVERYSEC)
    worker = start_worker(["default"], concurrency=1, env=stack.env, client_app=stack.client)
    result = stack.client.send_task("taskcore.testing.kills_its_process", queue="default")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not DeadLetter.objects.filter(task_id=result.id):
        time.sleep(0.2)
    letters = DeadLetter.objects.filter(task_id=result.id)
    # The worker lives on and the queue is empty: the poison is gone for good.
    time.sleep(2)
    queued = redis.Redis.from_url(stack.server.url).llen("default")
    figures = {
        "dead_letters": letters.count(),
        "max_deliveries": 3,
        "queued_after": queued,
        "reason": letters.first().reason if letters else None,
    }
    record_figures("R4", figures)
    assert letters.count() == 1
    assert letters.first().reason == DeadLetter.Reason.REDELIVERED_TOO_OFTEN
    assert "delivered 4 times" in letters.first().exception_message
    assert queued == 0
    assert worker.process.poll() is None
    assert stack.client.control.ping(destination=[worker.hostname], timeout=2)


def test_r7_delayed_tasks_of_any_length_run_once_near_their_due_time(chaos, start_worker):
    """Countdowns from 1 s to 3x the visibility timeout, two workers, one killed -9 midway."""
    stack = chaos(*AOF_EVERYSEC)
    total, visibility = 1_000, 15
    workers = [
        start_worker(["default"], concurrency=2, env=stack.env, client_app=stack.client)
        for _ in range(2)
    ]
    sent_at = time.time()
    with stack.client.producer_or_acquire() as producer:
        for index in range(total):
            countdown = 1 + (3 * visibility - 1) * index / (total - 1)
            stack.client.send_task(
                "taskcore.testing.record_execution",
                args=[str(index), sent_at + countdown],
                countdown=countdown,
                queue="default",
                producer=producer,
                ignore_result=True,
            )
    client = redis.Redis.from_url(stack.server.url)
    parked = sum(client.zcard(key) for key in client.keys("taskcore.delayed.*"))
    time.sleep(max(0.0, sent_at + 1.5 * visibility - time.time()))
    workers[0].kill()  # main process and children, midway through the countdowns
    killed_at = time.time()

    def executions() -> list:
        return [json.loads(raw) for raw in client.lrange("chaos:executions", 0, -1)]

    deadline = sent_at + 3 * visibility + visibility + 30
    while len({key for key, _, _ in executions()}) < total and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # a second run of anything would show by now
    runs = executions()
    per_key: dict[str, int] = {}
    for key, _, _ in runs:
        per_key[key] = per_key.get(key, 0) + 1
    lateness = sorted(ran - due for _, due, ran in runs)
    late = [delay for delay in lateness if delay > 2]
    figures = {
        "sent": total,
        "parked_at_send": parked,
        "ran": len(per_key),
        "ran_twice_or_more": sum(1 for count in per_key.values() if count > 1),
        "early": sum(1 for delay in lateness if delay < -0.05),
        "late_over_2s": len(late),
        "lateness_p50_s": round(lateness[len(lateness) // 2], 3) if lateness else None,
        "lateness_max_s": round(lateness[-1], 3) if lateness else None,
        "killed_at_s": round(killed_at - sent_at, 1),
    }
    record_figures("R7", figures)
    assert len(per_key) == total, figures
    assert figures["ran_twice_or_more"] == 0, figures
    assert figures["early"] == 0, figures
    # Only what the killed worker held (prefetch and running: at most 4) waits for the
    # visibility timeout before it comes back; everything else runs within 2 s of due.
    assert len(late) <= 4 and all(delay < visibility + 5 for delay in late), figures


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 8)])
def test_r8_redis_at_maxmemory_loses_nothing_and_acknowledges_nothing_unrun(
    chaos, start_worker, pool, concurrency
):
    """Redis refuses writes (maxmemory, noeviction) for 60 s while tasks are consumed.

    Meanwhile an application process sends through the outbox: its calls return
    at once (the rows wait) and the workers' relay publishes them once Redis
    takes writes again, although beat is not running and the queue is deep.
    """
    stack = chaos(*AOF_EVERYSEC, "--maxmemory-policy", "noeviction")
    total, outage, through_outbox = 5_000, 60, 200
    # The queue table's time limits (default: soft 60 s, hard 90 s), not the chaos
    # suite's 10 s cap: a result written when memory returns waits up to the outage.
    env = {**stack.env, "CELERY_TIME_LIMIT_CAP": "120", "CELERY_VISIBILITY_TIMEOUT": "300"}
    worker = start_worker(
        ["default"], pool=pool, concurrency=concurrency, env=env, client_app=stack.client
    )
    # With results: each run writes its STARTED state and its result to Redis too.
    sent = stack.publish(range(total), ignore_result=False)
    wait_for_effects(total // 10, stall=60)
    client = redis.Redis.from_url(stack.server.url)
    client.config_set("maxmemory", 1)  # every write that may grow memory is refused
    full_since = time.monotonic()
    at_full = EffectClaim.objects.filter(scope="chaos").count()
    application = send_through_outbox(stack, through_outbox, "outbox-full")
    time.sleep(max(0.0, outage - (time.monotonic() - full_since)))
    during = EffectClaim.objects.filter(scope="chaos").count() - at_full
    client.config_set("maxmemory", 0)
    back = time.monotonic()
    first_after = None

    def note_progress(done: int) -> None:
        nonlocal first_after
        if first_after is None and done > at_full + during:
            first_after = time.monotonic() - back

    effects = wait_for_effects(total + through_outbox, on_tick=note_progress, stall=90)
    from taskcore.models import OutboxMessage

    figures = {
        "pool": pool,
        "sent": sent,
        "sent_through_outbox": through_outbox,
        "slowest_outbox_call_s": application["slowest_call_s"],
        "outbox_rows_published": OutboxMessage.objects.filter(published_at__isnull=False).count(),
        "effects": effects,
        "lost": sent + through_outbox - effects,
        "dead_letters": DeadLetter.objects.count(),
        "dead_letter_errors": sorted(
            {f"{d.exception_type}: {d.exception_message[:80]}" for d in DeadLetter.objects.all()}
        ),
        "outage_s": outage,
        "effects_during_outage": during,
        "consuming_again_after_s": round(first_after, 1) if first_after is not None else None,
        "duplicates_absorbed": stack.duplicates(),
        "worker_alive": worker.process.poll() is None,
    }
    record_figures(f"R8 {pool}", figures)
    assert effects == total + through_outbox, figures
    assert figures["outbox_rows_published"] == through_outbox, figures
    assert figures["slowest_outbox_call_s"] < 1, figures
    assert figures["dead_letters"] == 0, figures
    assert figures["worker_alive"], worker.output()[-3000:]
    assert first_after is not None and first_after < 30, figures
