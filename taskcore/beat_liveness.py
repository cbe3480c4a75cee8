"""Beat liveness: a heartbeat in Redis, and one beat at a time.

Two beats double every periodic task, and a stopped beat is silent: nothing
fails, the periodic work just stops. So the scheduler below

- takes a lock in Redis (``admin_backend:beat:lock``, with a TTL) before it
  schedules anything, and refuses to start (exit code 75) while another beat
  holds it; a lock left by a beat that crashed on this host (its PID is gone) is
  taken over at once, one left on another host expires after ``BEAT_LOCK_TTL``;
- writes a heartbeat (``admin_backend:beat:heartbeat``: time, PID, host) every
  ``BEAT_HEARTBEAT_INTERVAL`` seconds and renews the lock in the same atomic
  step; a beat that finds its lock taken by another stops;
- releases the lock when it stops, so a restart does not wait for the TTL.

Both keys live in the state Redis (``taskcore.redis_clients.state_redis``: the
broker's Redis, its primary behind Sentinel; ``REDIS_URL`` beside RabbitMQ).

``celery_health`` reads the heartbeat (check ``beat``): warning past
``BEAT_HEARTBEAT_WARNING`` seconds, critical past ``BEAT_HEARTBEAT_CRITICAL``.
The PID file is celery beat's own ``--pidfile`` (it refuses a second beat on
the same host too).

Use: ``celery -A admin_backend beat --scheduler taskcore.beat_liveness:LivenessScheduler``
or ``CELERY_BEAT_SCHEDULER = "taskcore.beat_liveness:LivenessScheduler"``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

from django_celery_beat.schedulers import DatabaseScheduler

from taskcore.health import conf
from taskcore.redis_clients import state_redis

HEARTBEAT_KEY = "admin_backend:beat:heartbeat"
LOCK_KEY = "admin_backend:beat:lock"
EXIT_LOCK_HELD = os.EX_TEMPFAIL  # 75: try again later
_PROCESS_STARTED = time.time()  # (about) when this process started: module import

logger = logging.getLogger("taskcore.beat_liveness")

# Renew the lock and write the heartbeat only while the lock is ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('SET', KEYS[2], ARGV[3])
    return 1
end
return 0
"""
# Replace a lock only if it still holds the value we judged stale.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class BeatLockHeld(RuntimeError):
    def __init__(self, holder: dict | None):
        self.holder = holder or {}
        super().__init__(
            "another celery beat holds the beat lock "
            f"(pid {self.holder.get('pid', '?')} on {self.holder.get('host', '?')}, "
            f"since {_when(self.holder.get('started_at'))}): two beats would send every "
            "periodic task twice"
        )


def _when(timestamp) -> str:
    if not timestamp:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))


def _decode(raw) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _crashed_on_this_host(holder: dict, identity: dict) -> bool:
    """A lock holder on this host that is gone without releasing the lock.

    Its PID no longer runs, or it is our own PID from before this process started
    (a restarted container gives beat the same PID again).
    """
    if holder.get("host") != identity["host"]:
        return False
    if holder.get("pid") == identity["pid"]:
        return float(holder.get("started_at") or 0) < _PROCESS_STARTED
    return not _pid_alive(holder.get("pid"))


def read_heartbeat(client) -> dict | None:
    """The last heartbeat (``ts``, ``pid``, ``host``, ``instance``, ``started_at``) or None."""
    return _decode(client.get(HEARTBEAT_KEY))


def read_lock(client) -> tuple[dict | None, float | None]:
    """The lock holder and the lock's remaining lifetime in seconds."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get(LOCK_KEY)
        pipe.pttl(LOCK_KEY)
        raw, pttl = pipe.execute()
    return _decode(raw), (pttl / 1000 if pttl and pttl > 0 else None)


class BeatLiveness:
    """The lock and heartbeat of one beat process."""

    def __init__(self, client, *, interval: float, ttl: float):
        self.client = client
        self.interval = max(0.1, interval)
        # An unrenewed lock must survive a few missed heartbeats, not just one.
        self.ttl = max(ttl, 3 * self.interval)
        self.identity = {
            "instance": uuid.uuid4().hex,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
        }
        self.lock_value = json.dumps(self.identity, sort_keys=True)
        self.last_beat = 0.0
        self.held = False

    @classmethod
    def for_app(cls, app) -> BeatLiveness:
        ttl = conf.number("BEAT_LOCK_TTL")
        return cls(
            # Its own client, answering well within the lock's TTL: a Redis that
            # hangs must not hold beat past the lock, while a standby takes it over.
            state_redis(app, timeout=min(5.0, ttl / 3)),
            interval=conf.number("BEAT_HEARTBEAT_INTERVAL"),
            ttl=ttl,
        )

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def acquire(self) -> None:
        """Take the lock or raise BeatLockHeld."""
        if self.client.set(LOCK_KEY, self.lock_value, nx=True, px=self.ttl_ms):
            self.held = True
            return
        raw = self.client.get(LOCK_KEY)
        holder = _decode(raw)
        crashed_here = holder is not None and _crashed_on_this_host(holder, self.identity)
        if crashed_here and self.client.eval(
            _TAKE_OVER, 1, LOCK_KEY, raw, self.lock_value, self.ttl_ms
        ):
            logger.warning(
                "took over the beat lock of pid %s on this host, which is no longer running",
                holder.get("pid"),
            )
            self.held = True
            return
        if raw is None and self.client.set(LOCK_KEY, self.lock_value, nx=True, px=self.ttl_ms):
            self.held = True  # it expired between our two reads
            return
        raise BeatLockHeld(holder)

    def heartbeat(self) -> None:
        """Renew the lock and record the heartbeat; raise BeatLockHeld if another beat has it."""
        beat = json.dumps({**self.identity, "ts": time.time()}, sort_keys=True)
        if self.client.eval(_RENEW, 2, LOCK_KEY, HEARTBEAT_KEY, self.lock_value, self.ttl_ms, beat):
            self.last_beat = time.monotonic()
            return
        # The lock expired (Redis restarted, or we were paused past the TTL): take it
        # back if nobody else did meanwhile.
        if self.client.set(LOCK_KEY, self.lock_value, nx=True, px=self.ttl_ms):
            logger.warning("the beat lock had expired; taken again")
            self.client.set(HEARTBEAT_KEY, beat)
            self.last_beat = time.monotonic()
            return
        self.held = False
        raise BeatLockHeld(_decode(self.client.get(LOCK_KEY)))

    def maybe_heartbeat(self) -> None:
        if time.monotonic() - self.last_beat >= self.interval:
            self.heartbeat()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.client.eval(_RELEASE, 1, LOCK_KEY, self.lock_value)


def _refuse(exc: BeatLockHeld) -> SystemExit:
    logger.critical(
        "%s; refusing to run. Stop the other beat, or wait for its lock to expire.", exc
    )
    return SystemExit(EXIT_LOCK_HELD)


class LivenessScheduler(DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler with the lock and heartbeat above."""

    def __init__(self, app, *args, **kwargs):
        self.liveness = BeatLiveness.for_app(app)
        if kwargs.get("lazy"):
            # Beat builds a lazy instance only to print its start-up banner.
            super().__init__(app, *args, **kwargs)
            return
        try:
            self.liveness.acquire()
        except BeatLockHeld as exc:
            raise _refuse(exc) from None
        try:
            super().__init__(app, *args, **kwargs)
            self.liveness.heartbeat()
        except BaseException:
            self.liveness.release()
            raise
        logger.info(
            "beat lock taken (pid %s); heartbeat every %ss in %s",
            os.getpid(),
            self.liveness.interval,
            HEARTBEAT_KEY,
        )

    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        try:
            self.liveness.maybe_heartbeat()
        except BeatLockHeld as exc:
            raise _refuse(exc) from None
        except Exception as exc:  # Redis away: beat's own publishing will say more
            logger.warning("beat heartbeat not written: %s", exc)
        # Wake up often enough to keep the heartbeat fresh and the lock alive.
        return min(interval, self.liveness.interval) if interval else interval

    def close(self):
        try:
            super().close()
        finally:
            try:
                self.liveness.release()
            except Exception as exc:
                logger.warning("beat lock not released (it expires by itself): %s", exc)
