"""Read queue depths and oldest-message ages straight from the Redis broker.

kombu's Redis transport keeps each queue as a list: producers ``LPUSH``,
consumers ``BRPOP``, so the oldest waiting message is the last element
(``LINDEX key -1``, O(1)). Each priority step other than 0 has its own list,
named ``<queue><sep><step>`` (``media\\x06\\x163``); messages a worker has taken
but not acknowledged sit in the ``unacked`` hash until acked or restored.

One pipelined round trip reads ``LLEN`` and ``LINDEX -1`` of every list of every
queue: constant time whatever the depth (see bench/bench_health.py), where
scanning the lists would be linear.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from kombu.transport.redis import PRIORITY_STEPS, Channel

from taskcore.publishing import SENT_AT_HEADER
from taskcore.reliable_redis import delayed_key


@dataclass
class QueueDepth:
    name: str
    depth: int = 0
    # Waiting messages per priority step (only steps holding messages).
    by_priority: dict[int, int] = field(default_factory=dict)
    # ``sent_at`` of the oldest waiting message, None when empty or unstamped.
    oldest_sent_at: float | None = None
    read_at: float = field(default_factory=time.time)
    # Delayed messages (countdown, ETA, retry backoff) parked until due, and the
    # earliest due time: one past due that stays is not being moved (no consumer).
    scheduled: int = 0
    earliest_due: float | None = None

    @property
    def most_overdue(self) -> float | None:
        if self.earliest_due is None or self.earliest_due > self.read_at:
            return None
        return self.read_at - self.earliest_due

    @property
    def oldest_age(self) -> float | None:
        if self.oldest_sent_at is None:
            return None
        return max(0.0, self.read_at - self.oldest_sent_at)

    def as_dict(self) -> dict:
        age, overdue = self.oldest_age, self.most_overdue
        return {
            "depth": self.depth,
            "by_priority": {str(step): count for step, count in self.by_priority.items()},
            "oldest_age_s": None if age is None else round(age, 3),
            "scheduled": self.scheduled,
            "most_overdue_s": None if overdue is None else round(overdue, 3),
        }


@dataclass
class BrokerQueues:
    queues: dict[str, QueueDepth]
    # Messages delivered to workers and not yet acknowledged (all queues); None: unknown.
    unacked: int | None
    # Consumers per queue when the broker counts them (RabbitMQ); None on Redis.
    consumers: dict[str, int | None] | None = None
    # Whether message ages can be read (Redis: yes; RabbitMQ: not without consuming).
    ages: bool = True


@dataclass(frozen=True)
class RedisLayout:
    """Key names as kombu's Redis channel computes them, from the transport options."""

    priority_steps: tuple[int, ...] = tuple(PRIORITY_STEPS)
    sep: str = Channel.sep
    global_keyprefix: str = ""
    unacked_key: str = Channel.unacked_key

    @classmethod
    def from_transport_options(cls, options: dict | None) -> RedisLayout:
        options = options or {}
        return cls(
            priority_steps=tuple(options.get("priority_steps") or PRIORITY_STEPS),
            sep=options.get("sep", Channel.sep),
            global_keyprefix=options.get("global_keyprefix", "") or "",
            unacked_key=options.get("unacked_key", Channel.unacked_key),
        )

    def keys(self, queue: str) -> list[tuple[int, str]]:
        """``(priority step, key)`` for every list of ``queue`` (kombu's ``_q_for_pri``)."""
        keys = []
        for step in self.priority_steps:
            name = f"{queue}{self.sep}{step}" if step else queue
            keys.append((step, self.global_keyprefix + name))
        return keys

    def delayed(self, key: str) -> str:
        """The delayed set of the list ``key`` (``taskcore.reliable_redis.delayed_key``)."""
        prefix = self.global_keyprefix
        return prefix + delayed_key(key[len(prefix) :])

    @property
    def unacked(self) -> str:
        return self.global_keyprefix + self.unacked_key


def message_sent_at(payload: bytes | str | None) -> float | None:
    """The ``sent_at`` header of a raw kombu message, None when absent or unreadable."""
    if not payload:
        return None
    try:
        headers = json.loads(payload).get("headers") or {}
        value = headers.get(SENT_AT_HEADER)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def read_queues(client, queue_names, layout: RedisLayout | None = None) -> BrokerQueues:
    """Depth per queue (all priority lists), the oldest message's age and the delayed
    messages, in one round trip."""
    layout = layout or RedisLayout()
    plan: list[tuple[str, int]] = []
    with client.pipeline(transaction=False) as pipe:
        for name in queue_names:
            for step, key in layout.keys(name):
                pipe.llen(key)
                pipe.lindex(key, -1)
                pipe.zcard(layout.delayed(key))
                pipe.zrange(layout.delayed(key), 0, 0, withscores=True)
                plan.append((name, step))
        pipe.hlen(layout.unacked)
        replies = pipe.execute()
    read_at = time.time()
    queues = {name: QueueDepth(name, read_at=read_at) for name in queue_names}
    for index, (name, step) in enumerate(plan):
        length, tail, scheduled, earliest = replies[4 * index : 4 * index + 4]
        queue = queues[name]
        if scheduled:
            queue.scheduled += scheduled
            due = earliest[0][1] if earliest else None
            if due is not None and (queue.earliest_due is None or due < queue.earliest_due):
                queue.earliest_due = due
        if not length:
            continue
        queue.depth += length
        queue.by_priority[step] = queue.by_priority.get(step, 0) + length
        sent_at = message_sent_at(tail)
        if sent_at is not None and (queue.oldest_sent_at is None or sent_at < queue.oldest_sent_at):
            queue.oldest_sent_at = sent_at
    return BrokerQueues(queues=queues, unacked=int(replies[-1] or 0))
