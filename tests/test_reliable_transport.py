"""taskcore.reliable_redis: a message is in its queue or in ``unacked``, never only in memory.

Real Redis (the run's database), real kombu connections; the fault-injection case
runs a consumer in a child process that dies at the point under test.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskcore import reliable_redis

PROJECT_DIR = Path(__file__).resolve().parent.parent
OURS = "taskcore.reliable_redis:Transport"
# The settings of this test run make the "redis" alias name ours (use_for_redis_urls).
KOMBU = "kombu.transport.redis:Transport"


@pytest.fixture
def url():
    return os.environ["CELERY_BROKER_URL"]


@pytest.fixture
def client(url):
    return redis.Redis.from_url(url)


def make_queue(name="rt"):
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def publish(url, queue, count, transport=OURS):
    with Connection(url, transport=transport) as conn:
        producer = Producer(conn.channel())
        for i in range(count):
            producer.publish(
                {"i": i}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
            )


def consume(url, queue, *, prefetch, ack, limit, timeout=3):
    """Deliveries of one consumer until ``limit`` or ``timeout`` seconds of silence."""
    received = []
    with Connection(url, transport=OURS) as conn:
        channel = conn.channel()
        channel.basic_qos(0, prefetch, False)

        def on_message(body, message):
            received.append(body["i"])
            if ack:
                message.ack()

        with Consumer(channel, [queue], callbacks=[on_message]):
            while len(received) < limit:
                try:
                    conn.drain_events(timeout=timeout)
                except TimeoutError:
                    break
    return received


DIE_ON_DELIVERY = textwrap.dedent(
    """
    import os, sys
    from kombu import Connection, Consumer, Exchange, Queue
    from kombu.transport import virtual

    url, transport = sys.argv[1], sys.argv[2]
    # The process dies after Redis handed the message over and before the
    # consumer got it: a kill -9 of the worker at that instant.
    virtual.Transport._deliver = lambda *args, **kwargs: os._exit(3)
    queue = Queue("rt", Exchange("rt", type="direct"), routing_key="rt")
    # Like a Celery worker: a no_ack consumer of a fanout queue (gossip, broadcast
    # control) on the same channel as the task consumer.
    gossip = Queue("rt-gossip", Exchange("rt-events", type="fanout"), auto_delete=True)
    with Connection(url, transport=transport) as conn:
        channel = conn.channel()
        with Consumer(channel, [gossip], no_ack=True, callbacks=[lambda body, message: None]):
            with Consumer(channel, [queue], callbacks=[lambda body, message: None]):
                conn.drain_events(timeout=10)
    """
)


@pytest.mark.parametrize("transport", [OURS, KOMBU])
def test_a_consumer_killed_between_pop_and_delivery(url, client, transport):
    queue = make_queue()
    publish(url, queue, 1, transport=transport)
    child = subprocess.run(
        [sys.executable, "-c", DIE_ON_DELIVERY, url, transport],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 3, child.stderr
    assert client.llen("rt") == 0
    if transport == OURS:
        # Recorded as unacknowledged in the same step: it comes back after the
        # visibility timeout.
        assert client.hlen("unacked") == 1
        assert client.zcard("unacked_index") == 1
    else:
        # kombu's transport records it in a second round trip, never made: the
        # message is gone. This is the window the chaos suite hit.
        assert client.hlen("unacked") == 0


def test_a_reserved_message_comes_back_after_the_visibility_timeout(url, client):
    queue = make_queue()
    publish(url, queue, 1)
    subprocess.run(
        [sys.executable, "-c", DIE_ON_DELIVERY, url, OURS],
        cwd=PROJECT_DIR,
        capture_output=True,
        timeout=60,
    )
    assert client.hlen("unacked") == 1
    with Connection(url, transport=OURS, transport_options={"visibility_timeout": 0}) as conn:
        conn.channel().qos.restore_visible(num=10, interval=1)
    assert client.hlen("unacked") == 0
    assert consume(url, queue, prefetch=1, ack=True, limit=1) == [0]


def test_a_reservation_takes_no_more_than_the_prefetch_credit(url, client):
    queue = make_queue()
    publish(url, queue, 10)
    received = []
    with Connection(url, transport=OURS) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 3, False)
        with Consumer(channel, [queue], callbacks=[lambda body, m: received.append(body["i"])]):
            for _ in range(3):
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
            assert received == [0, 1, 2]
            assert client.llen("rt") == 7
            assert client.hlen("unacked") == 3
    # Unacknowledged at shutdown: kombu puts them back at once.
    assert client.llen("rt") == 10
    assert client.hlen("unacked") == 0


def test_acknowledged_messages_leave_unacked_and_order_is_kept(url, client):
    queue = make_queue()
    publish(url, queue, 25)
    assert consume(url, queue, prefetch=4, ack=True, limit=25) == list(range(25))
    assert client.llen("rt") == 0
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0
    # Bells were trimmed: a burst leaves few spurious wake-ups behind.
    assert client.llen(reliable_redis.bell_key("rt")) <= reliable_redis.MAX_BELLS


def test_an_idle_consumer_is_woken_by_a_new_message(url):
    queue = make_queue()
    publish(url, queue, 0)
    received = []
    with Connection(url, transport=OURS) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 4, False)
        consumer = Consumer(
            channel, [queue], callbacks=[lambda b, m: (received.append(b), m.ack())]
        )
        with consumer:
            for _ in range(3):  # find the queue empty, then wait on the bells
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
            publish(url, queue, 1)
            conn.drain_events(timeout=10)
    assert received == [{"i": 0}]


def test_an_entry_that_is_not_a_message_is_moved_aside_and_logged(url, client, caplog):
    queue = make_queue()
    publish(url, queue, 1)
    client.rpush("rt", b"not a kombu message")  # the next one a consumer takes
    with caplog.at_level(logging.ERROR, logger="taskcore.reliable_redis"):
        assert consume(url, queue, prefetch=4, ack=True, limit=1) == [0]
    (entry,) = client.lrange(reliable_redis.refused_key("rt"), 0, -1)
    record = json.loads(entry)
    assert record["message"] == "not a kombu message"
    assert record["refused_reason"] == "not a kombu message: not JSON"
    assert "were not kombu messages" in caplog.text


def test_no_ack_consumers_keep_kombus_plain_pops(url, client):
    queue = make_queue()
    publish(url, queue, 2)
    with Connection(url, transport=OURS) as conn:
        channel = conn.channel()
        assert channel.basic_get("rt", no_ack=True).payload == {"i": 0}
        received = []
        with Consumer(channel, [queue], no_ack=True, callbacks=[lambda b, m: received.append(b)]):
            conn.drain_events(timeout=5)
    assert received == [{"i": 1}]
    assert client.hlen("unacked") == 0


def settings_value(expression: str, broker_url: str, **environment: str) -> str:
    """What ``expression`` (over Django's settings ``s`` and the Celery ``app``) prints."""
    code = (
        "import django,os;os.environ['DJANGO_SETTINGS_MODULE']='admin_backend.settings';"
        "django.setup();from django.conf import settings as s;"
        f"from admin_backend.celery import app;print({expression})"
    )
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": "redis://h:6379/0",
        **environment,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


BROKER_CONNECTION = (
    "(lambda c: f'{c.get_transport_cls().__module__}:{c.get_transport_cls().__name__} "
    "{c.as_uri()}')(app.connection_for_write())"
)


@pytest.mark.parametrize(
    ("url", "atomic", "transport", "shown_as"),
    [
        ("redis://h:6379/0", "1", OURS, "redis://"),
        ("sentinel://h:26379", "1", "taskcore.reliable_redis:SentinelTransport", "sentinel://"),
        ("redis://h:6379/0", "0", KOMBU, "redis://"),
        ("sentinel://h:26379", "0", "kombu.transport.redis:SentinelTransport", "sentinel://"),
        ("rediss://h:6380/0", "1", KOMBU, "rediss://"),
        ("amqp://guest:guest@h:5672//", "1", "kombu.transport.pyamqp:Transport", "amqp://"),
    ],
)
def test_settings_choose_the_atomic_transport_and_the_url_stays_ordinary(
    url, atomic, transport, shown_as
):
    """Celery, `celery inspect` and Flower see redis:// (Flower answers queue lengths only then)."""
    shown = settings_value(BROKER_CONNECTION, url, CELERY_BROKER_ATOMIC_RESERVE=atomic)
    chosen, uri = shown.split(" ", 1)
    assert chosen == transport
    assert uri.startswith(shown_as)
    assert settings_value("getattr(s, 'CELERY_BROKER_TRANSPORT', None)", url) == "None"


def test_a_failover_to_the_next_sentinel_url_keeps_the_transport():
    """kombu takes the transport from the URL's scheme again when it switches hosts; an
    explicit transport class (the old CELERY_BROKER_TRANSPORT) fell back to kombu's there."""
    conn = Connection("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2")  # this run's settings
    assert conn.get_transport_cls() is reliable_redis.SentinelTransport
    conn.switch("sentinel://127.0.0.1:2")
    assert conn.get_transport_cls() is reliable_redis.SentinelTransport
    explicit = Connection("sentinel://127.0.0.1:1", transport="kombu.transport.redis:Transport")
    explicit.switch("sentinel://127.0.0.1:2")
    assert explicit.transport_cls == "sentinel"


def test_a_publish_no_replica_acknowledged_raises_not_replicated(url, client):
    queue = make_queue()
    options = {"replica_acks": 1, "replica_ack_timeout": 50}
    with Connection(url, transport=OURS, transport_options=options) as conn:
        producer = Producer(conn.channel())
        with pytest.raises(reliable_redis.NotReplicated, match="0 of 1 replicas"):
            producer.publish({"i": 0}, exchange=queue.exchange, routing_key="rt", declare=[queue])
        with pytest.raises(Exception, match="delivery is uncertain"):  # kombu's batch error
            with producer.batch():
                producer.publish({"i": 1}, exchange=queue.exchange, routing_key="rt")
    # Sent all the same: a retry makes a duplicate at worst, never a loss.
    assert client.llen("rt") == 2


def test_a_publish_returns_once_the_replica_has_it(private_redis):
    primary = private_redis()
    port = primary.url.rsplit(":", 1)[1].split("/")[0]
    replica = private_redis("--replicaof", "127.0.0.1", port)
    deadline = time.monotonic() + 15
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica did not sync"
        time.sleep(0.1)
    queue = make_queue()
    options = {"replica_acks": 1, "replica_ack_timeout": 2000}
    with Connection(primary.url, transport=OURS, transport_options=options) as conn:
        producer = Producer(conn.channel())
        producer.publish({"i": 0}, exchange=queue.exchange, routing_key="rt", declare=[queue])
        with producer.batch():
            for i in range(1, 50):
                producer.publish({"i": i}, exchange=queue.exchange, routing_key="rt")
    # Acknowledged means the replica holds it: read there, not on the primary.
    assert replica.client().llen("rt") == 50


@pytest.mark.parametrize(
    ("url", "replica_acks"), [("redis://h:6379/0", "0"), ("sentinel://h:26379", "1")]
)
def test_publishes_wait_for_a_replica_behind_sentinel_by_default(url, replica_acks):
    value = settings_value("s.CELERY_BROKER_TRANSPORT_OPTIONS['replica_acks']", url)
    assert value == replica_acks


def test_a_requeue_redis_refuses_is_kept_and_sent_once_it_takes_writes(private_redis):
    """A task rejects with requeue when its bookkeeping was refused (taskcore.base)."""
    server = private_redis("--maxmemory-policy", "noeviction")
    client = server.client()
    queue = make_queue()
    publish(server.url, queue, 2)
    deliveries = []
    with Connection(server.url, transport=OURS) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 1, False)

        def on_message(body, message):
            deliveries.append((body["i"], bool(message.delivery_info.get("redelivered"))))
            if len(deliveries) == 1:
                client.config_set("maxmemory", 1)  # every write that may grow memory is refused
                message.reject(requeue=True)
            else:
                message.ack()

        with Consumer(channel, [queue], callbacks=[on_message]):
            conn.drain_events(timeout=2)
            # Refused: still in unacked (nothing lost), the prefetch credit given back.
            assert client.hlen("unacked") == 1 and client.llen("rt") == 1
            assert channel._pending_requeues
            for _ in range(3):  # reservations are refused too: nothing moves
                try:
                    conn.drain_events(timeout=0.3)
                except TimeoutError:
                    pass
            assert deliveries == [(0, False)]
            client.config_set("maxmemory", 0)
            deadline = time.monotonic() + 5
            while len(deliveries) < 3 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    # Requeued once (behind the queue, marked redelivered as kombu does), nothing lost.
    assert deliveries == [(0, False), (1, False), (0, True)]
    assert client.hlen("unacked") == 0 and client.llen("rt") == 0
