"""Stalled-worker watchdog: a worker that answers ping but takes no work heals itself.

Why: the most reported failure of Celery on Redis (celery#8030, #10205, #10302)
is a worker that stays alive and connected, answers ``inspect ping``, and
consumes nothing. Seen here (issue 19): a threads worker whose failed requests
were never acknowledged ran out of prefetch credit while its pool sat idle and
messages waited; it stayed so for good. Nothing noticed it.

What: a consumer bootstep (:class:`StallWatchdog`) puts a timer into the
worker's event loop. Every tick (a twelfth of the period, 1-5 s) it compares:

- **work waiting**: messages ready in the worker's queues (and delayed ones
  already due), one pipelined ``LLEN``/``ZCOUNT`` round trip to the broker;
- **free slots**: pool processes not running a task, bounded by the prefetch
  credit the worker's own requests leave (so rate-limited or ETA requests it
  holds do not count as free: that worker is busy, not stalled);
- **progress**: a task started, or a request id not seen at the last tick (a
  new reservation). Cleared requests (a consumer restart drops the reserved
  ones) are not progress.

Work waiting and free slots with no progress for ``CELERY_WORKER_STALL_SECONDS``
(default 60), or a broker read outstanding that long (a half-open connection
that kombu's own BRPOP health check did not drop): the worker logs why and
restarts its consumer, as after a lost connection (the channel is closed, its
unacknowledged messages go back to their queues, a new channel starts with
fresh prefetch credit). Still no progress one period later: the worker stops
(warm shutdown: running tasks finish) with exit code :data:`EXIT_STALLED`, so
its supervisor (start_celery.sh, Compose's restart policy, systemd's
``Restart=on-failure``) starts a fresh process.

Each tick writes the worker's verdict to the state Redis (a small hash per
worker, expiring unless renewed), which ``celery_health``'s ``workers`` check
reads: a worker stalled for half the period is reported critical ("stalled").

Cost: nothing per task; per tick one broker round trip and one state write, in
the event loop (0.5 s timeouts; none for 30 s after one failed). A worker
whose event loop itself is blocked fires no timer, but then it answers no ping
either, which the ``workers`` check and the container healthcheck report.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from celery import bootsteps
from celery.worker import state as worker_state

logger = logging.getLogger("taskcore.watchdog")

# Exit status of a worker that stayed stalled after its consumer restart
# (EX_UNAVAILABLE of sysexits.h): its supervisor restarts it.
EXIT_STALLED = 69
DEFAULT_STALL_SECONDS = 60.0
# The health check reports a worker stalled this far into the period (before
# the worker acts, so an operator sees it; and for good when the cure fails).
REPORT_FRACTION = 0.5
KEY_PREFIX = "taskcore:worker:progress:"
# The watchdog's Redis reads and writes run in the event loop: short timeouts, and
# after a failure none for a while, so an unreachable Redis (packets dropped)
# does not hold the loop a few seconds every tick.
PROBE_TIMEOUT = 0.5
PROBE_BACKOFF_SECONDS = 30.0


def progress_key(hostname: str) -> str:
    return f"{KEY_PREFIX}{hostname}"


class ConsumerStalled(ConnectionError):
    """Raised into the consumer's event loop: Celery restarts a consumer on a connection error."""


# --- the judgement (plain data, no Celery) -------------------------------------------
@dataclass
class Observation:
    now: float  # monotonic seconds
    waiting: int | None  # messages ready for this worker; None: could not read
    free_slots: int
    started: int  # tasks started since the worker started (Celery's counter)
    reserved: frozenset  # ids of the requests the worker holds
    poll_age: float | None = None  # seconds the consumer's broker read is outstanding


RESTART_CONSUMER, EXIT = "restart consumer", "exit"


@dataclass
class Verdict:
    stalled_for: float = 0.0
    reason: str = ""
    action: str | None = None


@dataclass
class ProgressJudge:
    """Decides, tick by tick, whether a worker progresses, and what to do when not."""

    stall_seconds: float
    idle_since: float | None = None
    restarted: bool = False  # the consumer was restarted and no progress came since
    consumer_restarts: int = 0
    last_progress: float | None = None
    _started: int | None = None
    _reserved: frozenset = field(default_factory=frozenset)

    def observe(self, seen: Observation) -> Verdict:
        progressed = (self._started is not None and seen.started != self._started) or bool(
            seen.reserved - self._reserved
        )
        first = self._started is None
        self._started, self._reserved = seen.started, seen.reserved
        if progressed or first:
            self.last_progress = seen.now
            self.idle_since, self.restarted = None, False
            return Verdict()
        if seen.poll_age is not None and seen.poll_age >= self.stall_seconds:
            reason = (
                f"its broker read has been outstanding for {seen.poll_age:.0f}s "
                "(half-open connection)"
            )
            self.idle_since = self.idle_since or seen.now - seen.poll_age
        elif seen.waiting and seen.free_slots > 0:
            reason = (
                f"{seen.waiting} messages wait in its queues and {seen.free_slots} slots are "
                "free, but it took nothing"
            )
            self.idle_since = self.idle_since or seen.now
        else:
            # Nothing to take, or busy (or the broker unreadable): not a stall.
            self.idle_since = None
            return Verdict()
        stalled_for = seen.now - self.idle_since
        verdict = Verdict(stalled_for, f"{reason} for {stalled_for:.0f}s")
        if stalled_for >= self.stall_seconds:
            verdict.action = EXIT if self.restarted else RESTART_CONSUMER
            if not self.restarted:
                self.restarted, self.idle_since = True, seen.now  # a second period starts
                self.consumer_restarts += 1
        return verdict


# --- the worker's side ---------------------------------------------------------------
def _tick_seconds(stall_seconds: float) -> float:
    return min(5.0, max(1.0, stall_seconds / 12))


class StallWatchdog(bootsteps.StartStopStep):
    """Consumer bootstep: the watchdog's timer in the worker's event loop.

    Registered by the project (``app.steps["consumer"].add(StallWatchdog)``). The
    judge lives on the step, so a consumer restart (which starts the steps
    again) keeps what the watchdog knows.
    """

    label = "stall watchdog"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.stall_seconds = float(
            c.app.conf.get("worker_stall_seconds", DEFAULT_STALL_SECONDS) or 0
        )
        self.judge = ProgressJudge(self.stall_seconds)
        self._entry = None
        self._broker = None
        self._state = None
        self._unreadable_logged = False
        self._probe_failed_at: float | None = None

    def _probing(self) -> bool:
        failed = self._probe_failed_at
        return failed is None or time.monotonic() - failed >= PROBE_BACKOFF_SECONDS

    def start(self, c):
        self._cancel()
        if self.stall_seconds <= 0:
            return
        if c.hub is None:
            logger.warning("stall watchdog off: this worker runs without an event loop")
            return
        self._entry = c.hub.call_repeatedly(_tick_seconds(self.stall_seconds), self.tick, c)

    def stop(self, c):
        self._cancel()

    def shutdown(self, c):
        self._cancel()

    def _cancel(self):
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    # -- one tick ------------------------------------------------------------------
    def tick(self, c) -> None:
        try:
            seen = self.observe(c)
        except Exception:  # the watchdog never takes the worker down by itself
            logger.exception("stall watchdog: could not observe the consumer")
            return
        verdict = self.judge.observe(seen)
        self.publish(c, seen, verdict)
        if verdict.action == RESTART_CONSUMER:
            logger.error(
                "worker %s stalled: %s; restarting its consumer (exits with status %d if "
                "that does not help within %.0fs)",
                c.hostname,
                verdict.reason,
                EXIT_STALLED,
                self.stall_seconds,
            )
            # Raised from a callback of the loop (not from this timer entry, whose
            # errors the hub logs and swallows): the consumer treats it as a lost
            # connection and restarts.
            c.hub.call_soon(self._raise_stalled, verdict.reason)
        elif verdict.action == EXIT:
            logger.critical(
                "worker %s still stalled after its consumer restart: %s; stopping with "
                "exit status %d so that its supervisor starts a fresh one",
                c.hostname,
                verdict.reason,
                EXIT_STALLED,
            )
            self._cancel()
            worker_state.should_stop = EXIT_STALLED  # warm shutdown at the loop's next turn

    @staticmethod
    def _raise_stalled(reason: str) -> None:
        raise ConsumerStalled(f"stall watchdog: {reason}")

    def observe(self, c) -> Observation:
        active = len(worker_state.active_requests)
        reserved = frozenset(request.id for request in tuple(worker_state.reserved_requests))
        processes = int(getattr(c.pool, "num_processes", 0) or c.controller.concurrency or 1)
        free = processes - active
        prefetch = c.qos.value if c.qos is not None else 0
        if prefetch:
            free = min(free, prefetch - len(reserved))
        return Observation(
            now=time.monotonic(),
            waiting=self.waiting(c),
            free_slots=max(0, free),
            started=worker_state.all_total_count[0],
            reserved=reserved,
            poll_age=self.poll_age(c),
        )

    @staticmethod
    def poll_age(c) -> float | None:
        channel = getattr(c.task_consumer, "channel", None)
        sent_at = getattr(channel, "_brpop_sent_at", None)
        if channel is None or not getattr(channel, "_in_poll", None) or sent_at is None:
            return None
        return time.monotonic() - sent_at

    def waiting(self, c) -> int | None:
        """Messages ready in the consumed queues (and delayed ones due), None on RabbitMQ."""
        from taskcore.health.redis_queues import RedisLayout
        from taskcore.redis_clients import NotRedis, broker_redis

        queues = [queue.name for queue in c.task_consumer.queues]
        if not self._probing():
            return None
        channel = getattr(c.task_consumer, "channel", None)
        refused_at = getattr(channel, "refused_for_memory_at", float("-inf"))
        if time.monotonic() - refused_at < 2 * _tick_seconds(self.stall_seconds):
            return None  # Redis refuses writes (maxmemory): waiting for it, not stalled
        try:
            if self._broker is None:
                self._broker = broker_redis(c.app, timeout=PROBE_TIMEOUT)
            layout = RedisLayout.from_transport_options(c.app.conf.broker_transport_options)
            now = time.time()
            with self._broker.pipeline(transaction=False) as pipe:
                for name in queues:
                    for _step, key in layout.keys(name):
                        pipe.llen(key)
                        pipe.zcount(layout.delayed(key), "-inf", now)
                replies = pipe.execute()
        except NotRedis:
            return None
        except Exception as exc:
            self._probe_failed_at = time.monotonic()
            if not self._unreadable_logged:
                logger.warning("stall watchdog: cannot read the queues: %s", exc)
                self._unreadable_logged = True
            return None
        self._unreadable_logged, self._probe_failed_at = False, None
        return sum(int(reply or 0) for reply in replies)

    def publish(self, c, seen: Observation, verdict: Verdict) -> None:
        """The verdict, for ``celery_health`` (a hash in the state Redis, renewed each tick)."""
        from taskcore.redis_clients import state_redis

        wall = time.time()
        last = self.judge.last_progress
        record = {
            "hostname": c.hostname,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": wall,
            "progress_at": wall - (seen.now - last) if last is not None else "",
            "waiting": "" if seen.waiting is None else seen.waiting,
            "free_slots": seen.free_slots,
            "stalled_for": round(verdict.stalled_for, 1),
            "stalled": int(verdict.stalled_for >= self.stall_seconds * REPORT_FRACTION),
            "reason": verdict.reason,
            "stall_seconds": self.stall_seconds,
            "consumer_restarts": self.judge.consumer_restarts,
        }
        if not self._probing():
            return
        try:
            if self._state is None:
                self._state = state_redis(c.app, timeout=PROBE_TIMEOUT)
            key = progress_key(c.hostname)
            with self._state.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=record)
                pipe.expire(key, int(3 * _tick_seconds(self.stall_seconds)) + 5)
                pipe.execute()
        except Exception as exc:  # a state Redis that refuses writes must not stop the check
            self._probe_failed_at = time.monotonic()
            logger.debug("stall watchdog: verdict not published: %s", exc)


def read_verdicts(client, hostnames) -> dict[str, dict]:
    """The watchdog's last verdict per worker (absent: no watchdog, or the worker is gone)."""
    hostnames = list(hostnames)
    with client.pipeline(transaction=False) as pipe:
        for hostname in hostnames:
            pipe.hgetall(progress_key(hostname))
        replies = pipe.execute()
    verdicts = {}
    for hostname, raw in zip(hostnames, replies, strict=True):
        if raw:
            verdicts[hostname] = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in raw.items()
            }
    return verdicts
