"""kombu's Redis transport with atomic reservation: a message is never only in a worker's memory.

Why: kombu's Redis transport takes a message with ``BRPOP`` and records it as
unacknowledged (the ``unacked`` hash that brings it back after the visibility
timeout) in a second round trip. A worker killed, or a Redis restarted, between
the two loses the message: it is neither in its queue nor in ``unacked``. The
chaos suite hit that window (R1: one message lost in 10,000 with two worker
kills; R2: one lost with a Redis SIGKILL).

What changes, and nothing else:

- **Reserve** is one Lua script: it pops up to N messages (N = the free prefetch
  credit) from the consumer's queues in their fair order and writes each into
  ``unacked`` and its index, atomically. Redis runs a script whole or not at all,
  and persists and replicates its effects as one transaction.
- **Waiting** cannot be done inside a script (no blocking commands). Publishers
  push a "bell" per message onto ``_kombu.bell.<queue>`` in the same round trip
  as the message; an idle consumer blocks on ``BRPOP`` of its queues' bells, then
  reserves. A bell lost or missing only delays: the bell wait times out after
  ``brpop_timeout`` (1 s) and the consumer reserves anyway. The script trims the
  bells so at most :data:`MAX_BELLS` spurious wake-ups follow a burst.
- While reservations return messages the consumer reserves again at once (no
  bell round trip): under load it costs one round trip per batch of messages,
  where kombu's costs two per message.
- **Delayed messages** (a countdown, an ETA, a retry's backoff) more than
  :data:`PARK_AFTER_SECONDS` away are not queued but parked in a sorted set per
  queue list (``taskcore.delayed.<list>``, scored by due time); the reservation
  script moves those due to their list, atomically, so each is handed out once
  and only when due. kombu's Redis transport queues them at once: each worker
  holds them in memory, and one unacknowledged past the visibility timeout is
  restored and held again by another worker, so it runs several times
  (celery/kombu#337, celery/celery#2599: seen 3 runs of a 45 s countdown with a
  15 s visibility timeout).
- An entry that is not a kombu message (not JSON, no delivery tag) is moved to
  ``taskcore.refused.<queue>`` by the script and logged, never dropped; so is a
  message whose delivery raises (kombu cannot build it, or the consumer fails
  on it): nothing a queue holds is raised into the worker. The dead letters
  store these lists' records (``taskcore.deadletters``, reason ``refused``).

Consumers with ``no_ack`` (they accept loss by definition) keep kombu's plain
pops; everything else (publishing, fanout, acks, restoring from ``unacked``,
Sentinel) is kombu's own.

Selected by :func:`use_for_redis_urls` (called by the project's settings while
``CELERY_BROKER_ATOMIC_RESERVE`` is on) under kombu's ``redis`` and ``sentinel``
aliases, so the broker URL stays ``redis://`` / ``sentinel://`` for Celery,
``celery inspect`` and Flower, and through a failover to the next URL.

Upstream issues worked around (docs/reliability.md): celery/celery#7950 and
celery/celery#4354 (a message popped and not yet in ``unacked`` is lost when
the worker stops or dies); celery/kombu#582 (``conn_or_acquire`` raising
``AttributeError`` on a closed channel); celery/kombu#337 and
celery/celery#2599 (an ETA beyond ``visibility_timeout`` runs more than once: the
delayed sets above). The kombu internals relied on are named
in tests/test_transport_internals.py; pyproject pins the kombu release verified.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from time import monotonic, time

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

logger = logging.getLogger("taskcore.reliable_redis")

# Bells left after a reservation: after a burst, at most this many idle
# consumers wake up to find nothing.
MAX_BELLS = 8
# Acknowledgements wait at most this long for a reservation to carry them.
ACK_FLUSH_SECONDS = 0.2
# Messages reserved at once when the consumer sets no prefetch limit.
UNLIMITED_PREFETCH_BATCH = 16

# Pops up to N messages and records them in ``unacked`` in one step; the file
# documents its KEYS and ARGV.
RESERVE_SCRIPT = (resources.files(__package__) / "lua" / "reserve.lua").read_text("utf-8")
# Called by its SHA1 (EVALSHA): a reservation then sends ~100 bytes, not the 4 KB script
# that Redis would hash on every call. A Redis that does not know it (restarted, SCRIPT
# FLUSH) answers NOSCRIPT without running anything: the script is loaded and the
# reservation sent again.
RESERVE_SCRIPT_SHA = hashlib.sha1(RESERVE_SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()


# Written once; the reservation script's first command (see reserve.lua).
RESERVE_GUARD_KEY = "taskcore.reserve.guard"


def refused_for_memory(exc: Exception) -> bool:
    """Whether Redis refused a command for lack of memory (maxmemory, noeviction).

    Redis 7 answers ``OOM ...`` (redis-py's OutOfMemoryError); Redis 6 wraps it for
    a script: ``ERR Error running script ... -OOM command not allowed ...``.
    """
    return isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc)


def bell_key(queue: str) -> str:
    return f"_kombu.bell.{queue}"


def delayed_key(list_key: str) -> str:
    """Delayed messages of one queue list (a queue at one priority), scored by due time."""
    return f"taskcore.delayed.{list_key}"


# A message due later than this is parked; a nearer one is queued and held by the
# worker that takes it (well within any visibility timeout).
PARK_AFTER_SECONDS = 1.0


def due_at(message: dict) -> float | None:
    """When a message to park is due (epoch seconds), None to queue it now."""
    headers = message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not eta:
        return None
    try:
        due = datetime.fromisoformat(eta).timestamp()
    except (TypeError, ValueError):
        return None  # queued: the worker refuses it with the reason
    return due if due - time() > PARK_AFTER_SECONDS else None


def refused_key(queue: str) -> str:
    """Entries of ``queue`` refused by the transport, as JSON records (see reserve.lua)."""
    return f"taskcore.refused.{queue}"


# Bytes of a refused entry kept for inspection (as reserve.lua keeps).
REFUSED_KEPT_BYTES = 65536

# A message published with this property (a string: the outbox row's id) is
# recorded as published in PUBLISHED_MARKS_KEY (id -> time), after the message in
# the same round trip, so the outbox's caller writes no second transaction
# (taskcore.outbox). A mark never exists without its message; a mark refused
# alone (memory ran out between the two) makes the relay publish the row again
# after its lease: at least once, as before.
PUBLISHED_MARK_PROPERTY = "taskcore_published_mark"
PUBLISHED_MARKS_KEY = "taskcore.outbox.published"


class AtomicReserveQoS(kombu_redis.QoS):
    """kombu's Redis QoS, minus a round trip per message.

    - no unacked write for messages the reservation script already recorded;
    - acks are coalesced: an acknowledged tag frees its prefetch credit at once
      and is removed from ``unacked`` by the next reservation (same round trip),
      or by a flush before the consumer waits, closes or cancels; an ack that
      arrives while the consumer waits on its bells is sent at once, and any
      other at the latest :data:`ACK_FLUSH_SECONDS` later. A worker that dies in
      between has its acknowledged messages delivered again: at least once.
    """

    def append(self, message, delivery_tag):
        reserved = self.channel._atomically_reserved
        if delivery_tag in reserved:
            reserved.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def restore_visible(self, *args, **kwargs):
        """kombu's restore of overdue ``unacked`` messages, skipped while Redis is full.

        Its lock is a write: at maxmemory Redis refuses it, and kombu's poller raises
        that out of ``drain_events``. The restore runs again on the next cycle.
        """
        try:
            return super().restore_visible(*args, **kwargs)
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            return None

    def reject(self, delivery_tag, requeue=False):
        """kombu's reject; a requeue Redis refuses is kept and sent again later.

        Celery requeues a message when its worker process was lost and when the
        task rejects it (``taskcore.base``: its STARTED state or its retry could
        not be written), typically because Redis is out of memory or away, when
        the requeue is refused too. The message then stays in ``unacked`` and the
        channel requeues it before its next reservation, once Redis takes writes
        again (at the latest, the visibility timeout restores it).
        """
        if not requeue:
            return super().reject(delivery_tag, requeue=False)
        channel = self.channel
        channel._pending_requeues.append(delivery_tag)
        refusal = channel._requeue_pending()
        if refusal is not None:
            logger.warning(
                "message %s not requeued yet (%s): requeued when Redis takes writes",
                delivery_tag,
                refusal,
            )
        virtual.QoS.ack(self, delivery_tag)

    def ack(self, delivery_tag):
        channel = self.channel
        if not channel.active_queues:
            return super().ack(delivery_tag)
        if not channel._pending_acks:
            channel._pending_acks_since = monotonic()
        channel._pending_acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        # Waiting on the bells (the queues were drained), no reservation will carry
        # the ack soon: send it now, as kombu would. Until it is in Redis, a worker
        # killed -9 has the finished task delivered and run again (R7 saw it).
        if (
            channel._pending_reply == "BELL"
            or monotonic() - channel._pending_acks_since > ACK_FLUSH_SECONDS
        ):
            channel._flush_acks_quietly()


class AtomicReserveMixin:
    """Channel behaviour shared by the plain and the Sentinel-managed Redis channel."""

    QoS = AtomicReserveQoS
    # Transport options: a publish returns once this many replicas have it
    # (Redis WAIT), else raises NotReplicated. Asynchronous replication loses
    # acknowledged writes when a primary dies; with Sentinel, set it to 1.
    replica_acks = 0
    replica_ack_timeout = 1000  # ms

    def __init__(self, *args, **kwargs):
        # Tags recorded in ``unacked`` by the script and not yet handed to QoS.append.
        self._atomically_reserved: set[str] = set()
        # Reserve straight away while the queues probably hold messages; wait on
        # the bells once a reservation came back empty.
        self._expect_messages = True
        self._pending_reply: str | None = None
        # The most messages the reservation in flight may take.
        self._pending_limit = 1
        # Queues consumed without acknowledgement (see basic_consume).
        self._no_ack_queues: set[str] = set()
        # How the BRPOP in flight was sent: kombu's plain pop, or ours.
        self._pending_plain = False
        # Acknowledged tags not yet removed from ``unacked`` (see AtomicReserveQoS.ack).
        self._pending_acks: list[str] = []
        self._pending_acks_since = 0.0
        self._sync_client = None
        # Acks sent with the reservation in flight; given back if Redis refuses it.
        self._acks_in_flight: list[str] = []
        self._memory_warned_at = float("-inf")
        # When Redis last refused a reservation for memory (the stall watchdog's cue
        # that the consumer waits for Redis, and a restart would not help).
        self.refused_for_memory_at = float("-inf")
        # When the earliest delayed message of the consumed queues is due (epoch
        # seconds), as the last reservation saw: an idle consumer wakes up for it.
        self._next_due: float | None = None
        # Tags whose requeue Redis refused (see AtomicReserveQoS.reject).
        self._pending_requeues: list[str] = []
        super().__init__(*args, **kwargs)

    # -- one client per channel for the synchronous commands ----------------------

    @contextmanager
    def conn_or_acquire(self, client=None):
        # kombu builds a new redis-py client (on the shared pool) for every
        # publish, ack and fanout event: ~0.3 ms of Python each with redis-py 8,
        # more than the round trip. One per channel and pool does the same work.
        if client:
            yield client
            return
        if self._pool is None and getattr(self.connection, "client", None) is None:
            # The connection is closed (its transport forgot its parameters): a
            # connection error, which kombu and Celery handle by reconnecting. kombu
            # raises AttributeError here, which Celery treats as unrecoverable: the
            # worker exits (seen in R2 when Redis was killed with a message unacked).
            raise RedisConnectionError("the broker connection is closed")
        pool = self.pool
        cached = self._sync_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._sync_client = self._create_client()
        yield cached

    # -- keys -------------------------------------------------------------------

    def _prefixed(self, key: str) -> str:
        return (self.global_keyprefix or "") + key

    def _reserve_args(self, queues, limit: int) -> list:
        queue_keys = [
            self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues
        ]
        bells = [bell_key(queue) for queue in queues]
        refused = [refused_key(queue) for _pri in self.priority_steps for queue in queues]
        delayed = [delayed_key(key) for key in queue_keys]
        keys = [
            *queue_keys,
            *bells,
            self.unacked_key,
            self.unacked_index_key,
            *refused,
            *delayed,
            RESERVE_GUARD_KEY,
        ]
        return [
            "EVALSHA",
            RESERVE_SCRIPT_SHA,
            len(keys),
            *[self._prefixed(key) for key in keys],
            len(queue_keys),
            len(bells),
            limit,
            time(),
            MAX_BELLS,
            *self._take_pending_acks(),
        ]

    def _take_pending_acks(self) -> list[str]:
        acks, self._pending_acks = self._pending_acks, []
        self._acks_in_flight = acks  # given back if the reservation is refused
        return acks

    def _refused_for_memory(self, exc: Exception) -> None:
        """Redis refused the reservation (out of memory): nothing was taken.

        The acknowledgements it carried are sent on their own (deletions are allowed
        at maxmemory) and the consumer waits on its bells, trying again within
        ``brpop_timeout``: it resumes by itself once Redis accepts writes.
        """
        self._pending_acks[:0] = self._acks_in_flight
        self._acks_in_flight = []
        self._expect_messages = False
        now = self.refused_for_memory_at = monotonic()
        if now - self._memory_warned_at > 60:
            self._memory_warned_at = now
            logger.warning(
                "Redis refuses writes (%s): reserving nothing until it accepts them again", exc
            )
        self._flush_acks_quietly()

    def _requeue_pending(self) -> Exception | None:
        """Send the pending requeues; those Redis refuses stay pending (the refusal returned)."""
        pending, self._pending_requeues = self._pending_requeues, []
        for index, tag in enumerate(pending):
            try:
                self.qos.restore_by_tag(tag, leftmost=True)
            except (*self.connection_errors, ResponseError) as exc:
                self._pending_requeues[:0] = pending[index + 1 :]
                if isinstance(exc, ResponseError) and not refused_for_memory(exc):
                    raise  # not a refusal to wait out: this one is not kept
                self._pending_requeues.insert(0, tag)
                return exc
        return None

    def _script_unknown(self) -> None:
        """Redis answered NOSCRIPT: nothing ran. Load the script; its acks go with the next."""
        self._pending_acks[:0] = self._acks_in_flight
        self._acks_in_flight = []
        with self.conn_or_acquire() as client:
            client.script_load(RESERVE_SCRIPT)

    def flush_acks(self) -> None:
        """Remove the acknowledged tags from ``unacked`` now (one pipelined round trip)."""
        acks = self._take_pending_acks()
        if not acks:
            return
        try:
            with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.unacked_index_key, *acks)
                pipe.hdel(self.unacked_key, *acks)
                pipe.execute()
        except self.connection_errors:
            # Delivered again after the visibility timeout: at least once.
            logger.warning("%d acknowledgements not sent: Redis is unreachable", len(acks))
            raise

    def _reserve_limit(self) -> int:
        credit = self.qos.can_consume_max_estimate()
        if credit is None:
            return UNLIMITED_PREFETCH_BATCH
        return max(credit, 1)

    # -- declaring ----------------------------------------------------------------

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        """kombu's binding write, which a full Redis may refuse when it adds nothing.

        A worker declares its queues (and its control queue) at every start; a
        worker restarted while Redis is at maxmemory would exit on that refused
        write although the binding is already there from its previous start. A
        fanout queue (Celery's control and event broadcasts) is consumed by
        pub/sub, which does not read the binding: it is written on the next start.
        """
        try:
            return super()._queue_bind(exchange, routing_key, pattern, queue)
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            if self.typeof(exchange).type != "fanout":
                key = self.keyprefix_queue % (exchange,)
                member = self.sep.join([routing_key or "", pattern or "", queue or ""])
                with self.conn_or_acquire() as client:
                    if not client.sismember(key, member):
                        raise
            logger.warning("Redis refuses writes (%s): queue %s not bound again", exc, queue)
            return None

    def maybe_refresh_binding_expiry(self):
        # Refused each second while Redis is full, and kombu logs a traceback each
        # time; the reservation already warns once a minute. Refreshed when it takes writes.
        try:
            return super().maybe_refresh_binding_expiry()
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            return None

    def _size(self, queue):
        # kombu counts in MULTI/EXEC, which Redis refuses whole at maxmemory (any
        # command queued in MULTI may grow memory); the count needs no transaction.
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    # -- consuming ----------------------------------------------------------------

    def basic_consume(self, queue, no_ack, *args, **kwargs):
        if no_ack and queue not in self._fanout_queues:
            # Nobody acknowledges: a reservation would come back after the
            # visibility timeout as a duplicate. While such a consumer is active
            # (e.g. a reply queue of `celery inspect`, for a second), the channel
            # pops as kombu does. (Fanout queues, e.g. Celery's gossip and
            # broadcast, are pub/sub: never popped, reserved or acknowledged.)
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag):
        # kombu runs this after the read in progress, if any (see its basic_cancel).
        queue = self._tag_to_queue.get(consumer_tag)
        self._flush_acks_quietly()
        result = super()._basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
        return result

    @property
    def _plain_pops(self) -> bool:
        return bool(self._no_ack_queues) and not self._no_ack_queues.isdisjoint(self.active_queues)

    def basic_get(self, queue, no_ack=False, **kwargs):
        if not no_ack:
            return super().basic_get(queue, no_ack, **kwargs)  # reserves through _get
        try:  # nobody acknowledges: kombu's plain pop (see basic_consume)
            return self.Message(super()._get(queue), channel=self)
        except kombu_redis.Empty:
            return None

    def _get(self, queue):
        if self._pending_requeues:
            self._requeue_pending()
        with self.conn_or_acquire() as client:
            try:
                try:
                    reply = client.execute_command(*self._reserve_args([queue], 1))
                except NoScriptError:
                    self._script_unknown()
                    reply = client.execute_command(*self._reserve_args([queue], 1))
            except ResponseError as exc:
                if not refused_for_memory(exc):
                    raise
                self._refused_for_memory(exc)
                raise kombu_redis.Empty() from None
            self._maybe_update_queues_expire(client, queue)
        messages = self._accept_reserved(reply)
        if not messages:
            raise kombu_redis.Empty()
        return messages[0][1]

    def _brpop_start(self, timeout=None):
        self._pending_plain = self._plain_pops
        if self._pending_plain:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self._pending_requeues:
            self._requeue_pending()
        if self._expect_messages:
            self._pending_reply = "RESERVE"
            self._pending_limit = self._reserve_limit()
            command = self._reserve_args(queues, self._pending_limit)
        else:
            # About to wait: nothing may stay pending meanwhile. Left to the flush
            # timer, an ack waits up to 2 x ACK_FLUSH_SECONDS, and a worker killed
            # -9 meanwhile has the finished task run again (R7 saw it). kombu sends
            # every ack at once; here at most one round trip per wait.
            self.flush_acks()
            self._pending_reply = "BELL"
            if self._next_due is not None:  # wake up when a delayed message is due
                timeout = max(0.01, min(timeout or 1, round(self._next_due - time(), 3)))
            command = ["BRPOP", *[self._prefixed(bell_key(q)) for q in queues], timeout or 0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        if self._pending_plain:
            return super()._brpop_read(**options)
        pending, self._pending_reply = self._pending_reply, None
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVAL" if pending == "RESERVE" else "BRPOP", **options
                )
            except self.connection_errors:
                # Disconnect so the next iteration reconnects (as kombu does).
                self.client.connection.disconnect()
                raise
            except NoScriptError:
                self._script_unknown()
                self._expect_messages = True
                raise kombu_redis.Empty() from None
            except ResponseError as exc:
                if not refused_for_memory(exc):
                    raise
                self._refused_for_memory(exc)
                raise kombu_redis.Empty() from None
            if pending != "RESERVE":
                # A bell, or the wait timed out: reserve next either way (a
                # restored or bell-less message is picked up within brpop_timeout).
                self._expect_messages = True
                raise kombu_redis.Empty()
            messages = self._accept_reserved(reply)
            # Fewer than asked for: the queues are empty (the script took all there
            # was and dropped their bells), so wait on the bells next rather than
            # send a reservation that would come back empty (one round trip and
            # script run per message at a shallow queue).
            self._expect_messages = len(messages) >= self._pending_limit
            if not messages:
                raise kombu_redis.Empty()
            self._deliver_reserved(messages)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _accept_reserved(self, reply) -> list[tuple[str, dict]]:
        """(queue, payload) pairs of a reservation; their tags are marked as recorded."""
        self._acks_in_flight = []  # the script removed them
        refused, next_due, flat = int(reply[0]), reply[1], reply[2:]
        self._next_due = float(next_due) if next_due else None
        prefix_length = len(self.global_keyprefix or "")
        messages = []
        for key, item in zip(flat[::2], flat[1::2], strict=True):
            queue = bytes_to_str(key)[prefix_length:].rsplit(self.sep, 1)[0]
            payload = loads(bytes_to_str(item))
            self._atomically_reserved.add(payload["properties"]["delivery_tag"])
            messages.append((queue, payload))
        if refused:
            logger.error(
                "%d entries in the consumed queues were not kombu messages; moved to %s* "
                "(stored as dead letters, reason refused)",
                refused,
                self._prefixed("taskcore.refused."),
            )
        return messages

    def _deliver_reserved(self, messages) -> None:
        delivered = 0
        try:
            for queue, payload in messages:
                try:
                    self.connection._deliver(payload, queue)
                except self.connection_errors:
                    raise
                except Exception as exc:
                    # kombu could not build the message, or the consumer raised on it:
                    # move it aside rather than let it stop this worker (and the next).
                    self._refuse(queue, payload, exc)
                delivered += 1
        finally:
            # Reserved but not handed over (a callback raised): put them back now
            # rather than after the visibility timeout.
            for _queue, payload in messages[delivered + 1 :]:
                tag = payload["properties"]["delivery_tag"]
                self._atomically_reserved.discard(tag)
                try:
                    self.qos.restore_by_tag(tag, leftmost=True)
                except self.connection_errors:
                    logger.warning("message %s stays in unacked until its visibility timeout", tag)
            self._queue_cycle.rotate(messages[-1][0])

    def _refuse(self, queue: str, payload: dict, exc: Exception) -> None:
        """Move a reserved message from ``unacked`` to its queue's refused list, atomically."""
        tag = payload["properties"]["delivery_tag"]
        raw = dumps(payload)
        record = dumps(
            {
                "refused_reason": f"the worker could not take it: {type(exc).__name__}: {exc}",
                "size": len(raw),
                "message": raw[:REFUSED_KEPT_BYTES],
            }
        )
        logger.error(
            "message %s of queue %s refused: %s: %.500s", tag, queue, type(exc).__name__, exc
        )
        self._atomically_reserved.discard(tag)
        with self.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.lpush(refused_key(queue), record)  # the client adds global_keyprefix
            pipe.zrem(self.unacked_index_key, tag)
            pipe.hdel(self.unacked_key, tag)
            pipe.execute()
        virtual.QoS.ack(self.qos, tag)  # forgotten here too, if it was handed over

    # -- publishing and restoring ring the bells ----------------------------------

    def _put(self, queue, message, **kwargs):
        """kombu's publish plus a bell, in the same round trip (or publish batch)."""
        if queue.endswith(".pidbox"):
            # Control replies: their consumers do not ack, so do not wait on bells
            # (and a bell per reply queue would outlive it).
            return super()._put(queue, message, **kwargs)
        publish_batch = kwargs.pop("_publish_batch", None)
        commands = self._publish_commands(queue, message)
        if publish_batch is not None:
            for name, *args in commands:
                publish_batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, *args in commands:
                getattr(pipe, name)(*args)
            if self.replica_acks:
                pipe.execute_command("WAIT", self.replica_acks, self.replica_ack_timeout)
            results = pipe.execute()
        if self.replica_acks:
            self._check_replicated(results[-1])

    def _check_replicated(self, acknowledged) -> None:
        if int(acknowledged) < self.replica_acks:
            raise NotReplicated(
                f"published, but {acknowledged} of {self.replica_acks} replicas acknowledged "
                f"within {self.replica_ack_timeout} ms: the message could be lost in a failover"
            )

    def create_publish_batch(self, max_size):
        if not self.replica_acks:
            return super().create_publish_batch(max_size)
        return ReplicatedPublishBatch(self, max_size)

    def _publish_commands(self, queue, message) -> list[tuple]:
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        mark = (message.get("properties") or {}).get(PUBLISHED_MARK_PROPERTY)
        marks = [("zadd", PUBLISHED_MARKS_KEY, {mark: time()})] if mark else []
        due = due_at(message)
        if due is not None:  # parked until due (no bell: consumers move it when due)
            return [("zadd", delayed_key(key), {dumps(message): due}), *marks]
        commands = [("lpush", key, dumps(message)), ("lpush", bell_key(queue), 1), *marks]
        expires = self._expires.get(queue) if self._expires else None
        if expires:
            for pri in self.priority_steps:
                commands.append(("pexpire", self._q_for_pri(queue, pri), expires))
            commands.append(("pexpire", bell_key(queue), expires))
        return commands

    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        try:
            for queue in self._lookup(exchange, routing_key):
                pipe.lpush(bell_key(queue), 1)
        except self.connection_errors:
            raise
        except Exception:  # kombu logged the unroutable message already
            logger.debug("no bell for an unroutable restored message", exc_info=True)

    def close(self):
        self._flush_acks_quietly()
        self._atomically_reserved.clear()
        super().close()

    def _flush_acks_quietly(self) -> None:
        try:
            self.flush_acks()
        except self.connection_errors:
            pass  # logged by flush_acks; the messages come back after the visibility timeout


class NotReplicated(RedisConnectionError):
    """Redis accepted a publish that too few replicas acknowledged in time.

    A connection error, so kombu's publish retry and the outbox treat it like
    one: the message is sent again (a duplicate at worst, never a loss).
    """


class ReplicatedPublishBatch(kombu_redis.PublishBatch):
    """kombu's publish batch, and one WAIT for the replicas per flushed pipeline.

    kombu's ``flush`` runs ``pipeline.execute()`` once and turns any error into
    ``BatchPublishError``; :class:`NotReplicated` raised from the wrapped execute
    takes that path, as a failed write would.
    """

    def __init__(self, channel, max_size):
        super().__init__(channel, max_size)
        pipeline = self.pipeline
        execute = pipeline.execute

        def execute_and_wait(*args, **kwargs):
            pipeline.execute_command("WAIT", channel.replica_acks, channel.replica_ack_timeout)
            results = execute(*args, **kwargs)
            channel._check_replicated(results[-1])
            return results

        pipeline.execute = execute_and_wait


_REPLICA_OPTIONS = ("replica_acks", "replica_ack_timeout")


class Channel(AtomicReserveMixin, kombu_redis.Channel):
    from_transport_options = kombu_redis.Channel.from_transport_options + _REPLICA_OPTIONS


def _flush_acks_of(transport) -> None:
    for channel in list(transport.channels):
        if channel._pending_acks and (
            monotonic() - channel._pending_acks_since > ACK_FLUSH_SECONDS
        ):
            channel._flush_acks_quietly()


class AtomicReserveTransportMixin:
    _ack_flush_timer = None
    # Publishing honours PUBLISHED_MARK_PROPERTY (Channel._publish_commands); asked
    # of the transport, which a producer knows without opening a channel.
    records_published_marks = True

    def register_with_event_loop(self, connection, loop):
        super().register_with_event_loop(connection, loop)
        # An idle or paused consumer sends no reservation to carry its acks.
        if self._ack_flush_timer is not None:
            self._ack_flush_timer.cancel()
        self._ack_flush_timer = loop.call_repeatedly(ACK_FLUSH_SECONDS, _flush_acks_of, self)


class Transport(AtomicReserveTransportMixin, kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(AtomicReserveMixin, kombu_redis.SentinelChannel):
    from_transport_options = kombu_redis.SentinelChannel.from_transport_options + _REPLICA_OPTIONS


class SentinelTransport(AtomicReserveTransportMixin, kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def use_for_redis_urls() -> None:
    """Make ``redis://`` and ``sentinel://`` broker URLs select this transport, in this process.

    kombu resolves a URL's scheme through its alias table (``TRANSPORT_ALIASES``,
    documented for registering transports); Celery, Flower and ``celery inspect``
    then show the URL unchanged. ``rediss://`` keeps kombu's transport (kombu
    turns TLS on from that scheme only). Call it before the first broker
    connection: kombu caches a resolved alias, so a stale entry is dropped here.
    """
    aliases = {"redis": f"{__name__}:Transport", "sentinel": f"{__name__}:SentinelTransport"}
    kombu.transport.TRANSPORT_ALIASES.update(aliases)
    for alias in aliases:
        kombu.transport._transport_cache.pop(alias, None)
