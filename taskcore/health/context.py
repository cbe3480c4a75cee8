"""State shared by the checks of one health run: clients and reads done once.

Checks run in parallel threads; several need the same broker read (the worker
census feeds the workers check and every queue check). ``once`` computes each
such read a single time, the other threads wait for it, and an error is raised
again to every check that depends on it.
"""

from __future__ import annotations

import threading
import time

from admin_backend.queues import QUEUE_NAMES

from . import conf
from .connections import broker_redis, broker_url, is_redis_url
from .redis_queues import BrokerQueues, RedisLayout, read_queues
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
        self._values: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

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
        def connect():
            url = broker_url(self.app)
            if not is_redis_url(url):
                raise RuntimeError(f"the broker is not Redis ({url.split(':', 1)[0]}://)")
            return broker_redis(self.app, self.timeout)

        return self.once("broker", connect)

    def broker_ping_ms(self) -> float:
        def ping():
            client = self.broker()
            client.ping()  # connects (and authenticates): not part of the round trip
            started = time.perf_counter()
            client.ping()
            return (time.perf_counter() - started) * 1000

        return self.once("broker_ping", ping)

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
            self.broker_ping_ms()  # fail fast with the broker's own error
            return worker_census(self.app, min(self.broadcast_timeout, self.remaining()))

        return self.once("census", ask)

    def queues(self) -> BrokerQueues:
        layout = RedisLayout.from_transport_options(self.app.conf.broker_transport_options)
        return self.once("queues", lambda: read_queues(self.broker(), QUEUE_NAMES, layout))
