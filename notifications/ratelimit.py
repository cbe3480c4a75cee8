"""``EMAIL_RATE_LIMIT``: one sending rate for the whole installation, kept in Redis.

Celery's ``rate_limit`` counts per worker process, so three workers would send
three times a relay's limit. Every message instead takes a token from one
limit shared by every process and host, through the ``limits`` library's Redis
storage on the state Redis (``taskcore.redis_clients.state_redis``).

The strategy is ``limits``' sliding window counter: a window's allowance is
what the previous window left weighted by how much of it is still inside the
last second (or minute), so under steady demand tokens come evenly (50/s is
about one every 20 ms) rather than in a burst at the start of each window, and
a relay that counts per second never sees more than the limit. Time is Redis's
own (TTLs), so hosts with skewed clocks share one window.

A sender that finds no token sleeps a fraction of the mean gap between tokens
and asks again, for at most ``MAX_WAIT_SECONDS``; longer, and its batch hands
the rest back to be sent later (``RateLimited``), so a worker slot is never
held for long by a send that cannot go.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time

from django.core.exceptions import ImproperlyConfigured
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from taskcore.redis_clients import state_redis

from . import conf

KEY_PREFIX = "notifications:ratelimit"
IDENTIFIER = "smtp"
# The longest one send waits for a token before its batch is postponed.
MAX_WAIT_SECONDS = 2.0
# Celery's spelling (``14/s``, ``600/m``, ``10/h``) besides the library's.
_CELERY_STYLE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
_UNITS = {"s": "second", "m": "minute", "h": "hour"}


class RateLimited(Exception):
    """No token came within MAX_WAIT_SECONDS; try the rest again in ``retry_in`` seconds."""

    def __init__(self, retry_in: float):
        super().__init__(f"EMAIL_RATE_LIMIT reached; the rest goes again in {retry_in:.1f} s")
        self.retry_in = retry_in


def parse_limit(text: str) -> RateLimitItem:
    """``14/s`` or ``50 per second`` -> a limit; ImproperlyConfigured names a bad value."""
    match = _CELERY_STYLE.match(text)
    spelled = f"{match[1]}/{_UNITS[match[2]]}" if match else text
    try:
        item = parse(spelled)
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise ImproperlyConfigured(
            f"EMAIL_RATE_LIMIT must be like '14/s', '600/m' or '50 per second', got {text!r}"
        )
    return item


class EmailRateLimit:
    def __init__(self, item: RateLimitItem):
        self.item = item
        self.limiter = SlidingWindowCounterRateLimiter(
            # The URL only names the scheme: connections come from the seam's client
            # (plain, TLS or behind Sentinel as configured).
            RedisStorage(
                "redis://", connection_pool=state_redis().connection_pool, key_prefix=KEY_PREFIX
            )
        )
        self.mean_gap = item.get_expiry() / item.amount
        self._turn = threading.Lock()

    def try_take(self) -> bool:
        """Take a token if one is free now, without waiting."""
        if not self._turn.acquire(blocking=False):
            return False
        try:
            return self.limiter.hit(self.item, IDENTIFIER)
        finally:
            self._turn.release()

    def take(self) -> None:
        """Take one token, waiting briefly; ``RateLimited`` if none comes in time."""
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        # One sending thread per process asks Redis at a time: a batch's threads
        # polling together would cost Redis and CPU, and the CPU they take delays
        # the messages already granted (which a relay would see as a burst).
        if not self._turn.acquire(timeout=MAX_WAIT_SECONDS):
            raise self._postponed()
        try:
            while not self.limiter.hit(self.item, IDENTIFIER):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._postponed()
                # A fraction of the mean gap: the next token is caught soon after it frees.
                time.sleep(min(left, self.mean_gap * random.uniform(0.25, 0.75)))
        finally:
            self._turn.release()

    def _postponed(self) -> RateLimited:
        # Spread the postponed batches so they do not come back together.
        return RateLimited(max(MAX_WAIT_SECONDS, self.mean_gap) * random.uniform(1, 2))

    def clear(self) -> None:
        self.limiter.clear(self.item, IDENTIFIER)


_cached: tuple[int, str, EmailRateLimit] | None = None


def current() -> EmailRateLimit | None:
    """This process's limit per EMAIL_RATE_LIMIT, or None when there is none."""
    global _cached
    text = conf.rate_limit()
    if not text:
        return None
    if _cached is None or _cached[:2] != (os.getpid(), text):
        _cached = (os.getpid(), text, EmailRateLimit(parse_limit(text)))
    return _cached[2]
