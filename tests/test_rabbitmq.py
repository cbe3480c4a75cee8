"""The core behaviour on RabbitMQ: quorum queues, routing, retries, dead letters, redelivery.

Runs against the RabbitMQ at ``TEST_RABBITMQ_URL`` (default
``amqp://guest:guest@127.0.0.1:5672``) in a virtual host of its own, created
for the run with ``rabbitmqctl`` (or the management API) and deleted after;
without either, the URL's vhost is used and the five queues are deleted before
and after. An unreachable RabbitMQ FAILS these tests; set ``RUN_RABBITMQ_TESTS=0``
to skip them on purpose.

Results and the cache (delivery counts, absorbed duplicates) stay on the run's
Redis: RabbitMQ is the broker only (see docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from kombu.pools import ProducerPool
from rabbitmq_vhost import RabbitVhost, fail_unless_reachable

from admin_backend import queues
from taskcore import brokers
from taskcore.fanout import publish_many
from taskcore.models import DeadLetter, EffectClaim
from taskcore.testing.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

EFFECT_TASK = "taskcore.testing.record_effect"
BASE_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
MANAGEMENT_URL = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
# Short limits so a killed worker's work and retries come back in seconds.
FAST_SETTINGS = {
    "CELERY_TIME_LIMIT_CAP": "10",
    "CELERY_MAX_DELIVERIES": "3",
    "CELERY_LOG_LEVEL": "WARNING",
}


PROJECT_DIR = Path(__file__).resolve().parent.parent
FIGURES_FILE = PROJECT_DIR / "var" / "chaos-figures.json"


def record_figures(name: str, figures: dict) -> None:
    """Keep the figures beside the chaos suite's (var/chaos-figures.json) and print them."""
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    existing = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    existing[name] = figures
    FIGURES_FILE.write_text(json.dumps(existing, indent=2, sort_keys=True))
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), file=sys.__stdout__)


@pytest.fixture(scope="module")
def rabbit_vhost():
    if os.environ.get("RUN_RABBITMQ_TESTS") == "0":
        pytest.skip("RUN_RABBITMQ_TESTS=0: RabbitMQ tests skipped on purpose")
    fail_unless_reachable(BASE_URL)
    vhost = RabbitVhost(BASE_URL, MANAGEMENT_URL)
    yield vhost
    vhost.drop()


def client_app(url: str, result_backend: str) -> Celery:
    """A publishing app configured like admin_backend's for an amqp:// broker."""
    client = Celery("rabbitmq-client", broker=url, backend=result_backend, set_as_current=False)
    client.conf.update(
        task_queues=queues.TABLE.kombu_queues(url),
        task_default_queue=queues.DEFAULT_QUEUE,
        task_default_exchange=queues.DEFAULT_QUEUE,
        task_default_routing_key=queues.DEFAULT_QUEUE,
        task_default_exchange_type="topic",
        task_create_missing_queues=False,
        task_routes=(queues.TABLE.route_task,),
        broker_transport_options={"confirm_publish": True},
        task_serializer="json",
        accept_content=["json"],
    )
    return client


class RabbitStack:
    def __init__(self, vhost: RabbitVhost, test_redis, monkeypatch, worker_database_url):
        self.url = vhost.url
        self.env = {
            **FAST_SETTINGS,
            "CELERY_BROKER_URL": self.url,
            "CELERY_RESULT_BACKEND": test_redis.url,
            "DATABASE_URL": worker_database_url,
        }
        # Celery's variables win over arguments: the client app must see them too.
        monkeypatch.setenv("CELERY_BROKER_URL", self.url)
        monkeypatch.setenv("CELERY_RESULT_BACKEND", test_redis.url)
        self.client = client_app(self.url, test_redis.url)
        self.redis = test_redis.client()
        # Every exchange exists before a worker binds them for delayed delivery.
        brokers.declare_queues(self.client)
        self.purge()

    def purge(self) -> None:
        with self.client.connection_for_write() as connection:
            for name in queues.QUEUE_NAMES:
                connection.default_channel.queue_purge(name)

    def depths(self) -> dict[str, int | None]:
        reading = brokers.read_queues(self.client, ask_workers=False)
        assert reading.reachable, reading.error
        return {name: q.messages for name, q in reading.queues.items()}

    def publish_effects(self, keys, queue: str = "default") -> int:
        sent = 0
        with self.client.producer_or_acquire() as producer:
            for key in keys:
                self.client.send_task(
                    EFFECT_TASK, args=[str(key)], queue=queue, producer=producer, ignore_result=True
                )
                sent += 1
        return sent

    def duplicates(self) -> int:
        keys = self.redis.keys("*chaos:duplicates")
        return int(self.redis.get(keys[0])) if keys else 0


@pytest.fixture
def rabbit(rabbit_vhost, test_redis, monkeypatch, worker_database_url):
    stack = RabbitStack(rabbit_vhost, test_redis, monkeypatch, worker_database_url)
    for key in stack.redis.keys("*chaos:duplicates"):
        stack.redis.delete(key)
    yield stack
    stack.purge()


def wait_for_effects(expected: int, timeout: float, on_tick=None, stall: float = 90) -> int:
    """Wait for ``expected`` effects; give up at the deadline or after ``stall`` s without one."""
    deadline = time.monotonic() + timeout
    done, last_done, last_progress = 0, -1, time.monotonic()
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


def test_the_five_queues_are_quorum_queues_on_topic_exchanges(rabbit):
    declared = {queue.name: queue for queue in rabbit.client.conf.task_queues}
    assert set(declared) == set(queues.QUEUE_NAMES)
    for name, queue in declared.items():
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "topic",
            name,
        )
    # Re-declaring a quorum queue as classic is refused by RabbitMQ: they really are quorum.
    from amqp.exceptions import PreconditionFailed

    with rabbit.client.connection_for_write() as connection:
        channel = connection.channel()
        with pytest.raises(PreconditionFailed):
            channel.queue_declare("email", durable=True, arguments={"x-queue-type": "classic"})


def test_each_task_is_routed_to_its_queue_on_rabbitmq(rabbit):
    """Same table, same routing as on Redis: one message lands in each of the five queues."""
    task_for_queue = {
        "default": "taskcore.tasks.debug_task",
        "email": "notifications.tasks.send_email_message",
        "media": "media.tasks.process_upload",
        "reports": "reports.tasks.export_model_csv",
        "maintenance": "maintenance.tasks.run_cleanup",
    }
    for task_name in task_for_queue.values():
        rabbit.client.send_task(task_name, args=[], ignore_result=True)
    wait_until(lambda: all(depth == 1 for depth in rabbit.depths().values()), timeout=10)
    assert rabbit.depths() == dict.fromkeys(queues.QUEUE_NAMES, 1)


def test_publish_many_declares_a_missing_queue_so_every_message_lands(rabbit, test_redis):
    """publish_many declares the queue once per call, not per message: it must still do so."""
    with rabbit.client.connection_for_write() as connection:
        connection.default_channel.queue_delete("reports")
    # kombu remembers what each connection declared, and Celery's connection and
    # producer pools are kombu's global ones for the URL: give this app its own,
    # on a connection that has declared nothing.
    fresh = client_app(rabbit.url, test_redis.url)
    fresh.amqp._producer_pool = ProducerPool(fresh.connection_for_write().Pool(limit=1), limit=1)

    # shared=False: a shared task would be added to every app finalised after this
    # test (the Sentinel tests' clients), shadowing the real task of that name.
    @fresh.task(name=EFFECT_TASK, ignore_result=True, shared=False)
    def record_effect(key):
        return key

    try:
        publish_many(record_effect, [(f"fan-{index}",) for index in range(5)], queue="reports")
        assert wait_until(lambda: rabbit.depths()["reports"] == 5, timeout=10)
    finally:
        brokers.declare_queues(rabbit.client)  # for the tests after this one
        # Only this pool: fresh.close() would close the global one the other tests use.
        fresh.amqp._producer_pool.force_close_all()


def test_the_depth_reader_counts_messages_and_consumers(rabbit, start_worker):
    rabbit.publish_effects(["depth-1", "depth-2", "depth-3"], queue="reports")
    wait_until(lambda: rabbit.depths()["reports"] == 3, timeout=10)
    reading = brokers.read_queues(rabbit.client, ask_workers=False)
    assert reading.queues["reports"].messages == 3
    assert reading.kind == "amqp" and reading.consumers_source == "broker"
    assert reading.queues["reports"].consumers == 0
    assert set(reading.without_consumers()) == set(queues.QUEUE_NAMES)

    start_worker(["email", "default"], env=rabbit.env, client_app=rabbit.client)
    reading = brokers.read_queues(rabbit.client, ask_workers=False)
    assert reading.queues["email"].consumers == 1
    assert reading.queues["default"].consumers == 1
    assert reading.without_consumers() == ["maintenance", "media", "reports"]


def test_a_permanent_failure_becomes_one_dead_letter(rabbit, start_worker):
    start_worker(["default"], env=rabbit.env, client_app=rabbit.client)
    result = rabbit.client.send_task("taskcore.testing.fails_permanently", args=["bad input"])
    letter = wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).first(), timeout=20)
    assert letter is not None
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert letter.queue == "default"
    assert wait_until(lambda: rabbit.depths()["default"] == 0, timeout=5)


def test_a_countdown_is_delivered_through_native_delayed_delivery(rabbit, start_worker):
    """Quorum queues cannot hold a message back: the countdown goes through the
    celery_delayed_* exchanges (topic routing) and reaches the queue when due."""
    start_worker(["default"], env=rabbit.env, client_app=rabbit.client)
    rabbit.client.send_task(EFFECT_TASK, args=["delayed"], countdown=2, ignore_result=True)
    assert wait_until(lambda: EffectClaim.objects.filter(scope="chaos").count() == 1, timeout=30)


# Celery 5.7 + kombu 5.7: with quorum queues, 0 < countdown < 1 raises
# "countdown must be a positive number" inside retry(); taskcore/base.py rounds
# such countdowns up to 1 s on RabbitMQ, which this test proves.
def test_transient_failures_retry_with_backoff_then_succeed(rabbit, start_worker):
    start_worker(["default"], env=rabbit.env, client_app=rabbit.client)
    key = f"rmq-retry-{uuid.uuid4().hex[:6]}"
    result = rabbit.client.send_task("taskcore.testing.fails_transiently", args=[key, 2])
    assert result.get(timeout=30) == 3
    assert not DeadLetter.objects.filter(task_id=result.id).exists()


def test_retries_exhausted_become_one_dead_letter(rabbit, start_worker):
    """3 retries allowed, 10 failures planned: one dead letter after the last retry."""
    start_worker(["default"], env=rabbit.env, client_app=rabbit.client)
    key = f"rmq-exhaust-{uuid.uuid4().hex[:6]}"
    result = rabbit.client.send_task("taskcore.testing.fails_transiently", args=[key, 10])
    letter = wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).first(), timeout=30)
    assert letter is not None
    # Without the base.py countdown fix the first retry is rejected (a permanent
    # failure); with it, the task fails for good after its retries.
    assert letter.reason in (
        DeadLetter.Reason.RETRIES_EXHAUSTED,
        DeadLetter.Reason.PERMANENT_ERROR,
    )
    assert DeadLetter.objects.filter(task_id=result.id).count() == 1


def test_a_killed_worker_s_unacknowledged_tasks_are_redelivered_at_once(rabbit, start_worker):
    """acks_late on RabbitMQ: a dead worker's deliveries return when its connection
    closes (no visibility timeout to wait for), and every effect happens once."""
    total = 300
    rabbit.publish_effects(f"redeliver-{n}" for n in range(total))
    worker = start_worker(["default"], concurrency=2, env=rabbit.env, client_app=rabbit.client)
    assert wait_until(lambda: EffectClaim.objects.filter(scope="chaos").count() >= 20, 30)
    worker.kill()
    start_worker(["default"], concurrency=2, env=rabbit.env, client_app=rabbit.client)
    assert wait_for_effects(total, timeout=60) == total
    assert not DeadLetter.objects.exists()


def test_a_poison_message_ends_in_exactly_one_dead_letter(rabbit, start_worker):
    """The child dies on every delivery; RabbitMQ requeues it (redelivered flag) each
    time; after CELERY_MAX_DELIVERIES the task is a dead letter and the queue is empty."""
    worker = start_worker(["default"], concurrency=1, env=rabbit.env, client_app=rabbit.client)
    result = rabbit.client.send_task("taskcore.testing.kills_its_process")
    letter = wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).first(), timeout=60)
    assert letter is not None
    assert letter.reason == DeadLetter.Reason.REDELIVERED_TOO_OFTEN
    assert "delivered 4 times" in letter.exception_message
    assert DeadLetter.objects.filter(task_id=result.id).count() == 1
    assert wait_until(lambda: rabbit.depths()["default"] == 0, timeout=5)
    assert worker.process.poll() is None


@pytest.mark.chaos
def test_r1_on_rabbitmq_killing_children_and_main_processes_loses_nothing(rabbit, start_worker):
    total = 10_000
    workers = [start_worker(["default"], concurrency=2, env=rabbit.env, client_app=rabbit.client)]
    published_at = time.monotonic()
    sent = rabbit.publish_effects(range(total))
    publish_seconds = time.monotonic() - published_at
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
                start_worker(["default"], concurrency=2, env=rabbit.env, client_app=rabbit.client)
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

    started = time.monotonic()
    effects = wait_for_effects(
        total, timeout=int(os.environ.get("CHAOS_TIMEOUT", "900")), on_tick=chaos_tick
    )
    figures = {
        "broker": "rabbitmq quorum queue, publisher confirms",
        "sent": sent,
        "effects": effects,
        "lost": sent - effects,
        # Not lost but not yet worked when the deadline came (a slow machine).
        "still_queued_at_deadline": rabbit.depths()["default"],
        "dead_letters": DeadLetter.objects.count(),
        "duplicates_absorbed": rabbit.duplicates(),
        "children_killed": kills["children"],
        "main_processes_killed": kills["main"],
        "publish_s": round(publish_seconds, 1),
        "run_s": round(time.monotonic() - started, 1),
    }
    record_figures("R1 rabbitmq", figures)
    assert kills["main"] >= 2 and kills["children"] >= 5
    assert effects == total, figures
