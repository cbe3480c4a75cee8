"""State shared by the checks of one health run: clients and reads done once.

Checks run in parallel threads; several need the same broker read (the worker
census feeds the workers check and every queue check). ``once`` computes each
such read a single time, the other threads wait for it, and an error is raised
again to every check that depends on it.
"""

from __future__ import annotations

import threading
import time

from taskcore.brokers import AMQP, broker_kind
from taskcore.queues import queue_table
from taskcore.redis_clients import NotRedis, broker_redis, broker_url, state_redis

from . import conf
from .redis_queues import BrokerQueues, QueueDepth, RedisLayout, read_queues
from .workers import WorkerCensus, worker_census


class HealthContext:
    def __init__(self, app, timeout: float, broadcast_timeout: float | None = None):
        self.app = app
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.broadcast_timeout = min(
            broadcast_timeout or conf.number("HEALTH_BROADCAST_TIMEOUT"), timeout
        )
        self.kind = broker_kind(broker_url(app))
        self._values: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def amqp(self) -> bool:
        return self.kind == AMQP

    def remaining(self) -> float:
        return max(0.05, self.deadline - time.monotonic())

    def once(self, key: str, compute):
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                try:
                    self._values[key] = (True, compute())
                except Exception as exc:  # re-raised to every caller below
                    self._values[key] = (False, exc)
        succeeded, value = self._values[key]
        if not succeeded:
            raise value
        return value

    # --- shared reads -------------------------------------------------------
    def broker(self):
        """The broker's Redis (the primary, behind Sentinel); NotRedis on RabbitMQ."""

        def connect():
            if self.amqp:
                raise NotRedis("the broker is RabbitMQ: its queues are not in Redis")
            return broker_redis(self.app, self.timeout)

        return self.once("broker", connect)

    def liveness(self):
        """The Redis holding beat's lock and heartbeat (the state Redis)."""
        return self.once("liveness", lambda: state_redis(self.app, self.timeout))

    def broker_ping_ms(self) -> float:
        """Round trip to the broker (on RabbitMQ: the time to open a connection)."""

        def ping():
            if self.amqp:
                return self.amqp_server()["connect_ms"]
            client = self.broker()
            client.ping()  # connects (and authenticates): not part of the round trip
            started = time.perf_counter()
            client.ping()
            return (time.perf_counter() - started) * 1000

        return self.once("broker_ping", ping)

    def amqp_server(self) -> dict:
        def connect():
            started = time.perf_counter()
            with self.app.connection_for_read(connect_timeout=self.timeout) as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout)
                elapsed = (time.perf_counter() - started) * 1000
                properties = getattr(connection.connection, "server_properties", {}) or {}
            version = properties.get("version", "?")
            if isinstance(version, bytes):
                version = version.decode()
            product = properties.get("product", "RabbitMQ")
            if isinstance(product, bytes):
                product = product.decode()
            return {"connect_ms": elapsed, "version": version, "product": product}

        return self.once("amqp_server", connect)

    def redis_info(self) -> dict:
        return self.once("redis_info", lambda: self.broker().info())

    def redis_config(self, name: str) -> str | None:
        """A CONFIG GET value; None where CONFIG is disabled (managed Redis services)."""

        def read():
            try:
                return self.broker().config_get(name).get(name)
            except Exception as exc:
                if "unknown command" in str(exc).lower() or "NOPERM" in str(exc):
                    return None
                raise

        return self.once(f"config:{name}", read)

    def census(self) -> WorkerCensus:
        def ask():
            self.broker_ping_ms()  # fail fast, with the broker's own error
            return worker_census(self.app, min(self.broadcast_timeout, self.remaining()))

        return self.once("census", ask)

    def queues(self) -> BrokerQueues:
        if self.amqp:
            return self.once("queues", self._amqp_queues)
        layout = RedisLayout.from_transport_options(self.app.conf.broker_transport_options)
        return self.once("queues", lambda: read_queues(self.broker(), queue_table().names, layout))

    def _amqp_queues(self) -> BrokerQueues:
        """RabbitMQ: depth and consumers from passive declares; no message age."""
        from taskcore.brokers import read_queues as read_broker_queues

        reading = read_broker_queues(
            self.app, queue_table().names, ask_workers=False, timeout=self.timeout
        )
        if not reading.reachable:
            raise ConnectionError(reading.error or "RabbitMQ does not answer")
        queues = {
            name: QueueDepth(name, depth=queue.messages or 0, read_at=reading.read_at)
            for name, queue in reading.queues.items()
        }
        for queue in queues.values():
            if queue.depth:
                queue.by_priority = {0: queue.depth}
        consumers = {name: queue.consumers for name, queue in reading.queues.items()}
        return BrokerQueues(queues=queues, unacked=None, consumers=consumers, ages=False)
