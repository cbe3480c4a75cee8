"""Every kombu internal taskcore.reliable_redis relies on, named: a kombu upgrade fails here first.

Three kinds of reliance, each a table below:

- private (or undocumented) members it calls, reads or sets: they must exist;
- kombu methods it replaces or mirrors instead of calling: their upstream source
  must be the one it was written against (a hash of ``inspect.getsource``);
- kombu methods it overrides and calls through ``super()``: same signature.

A failure names the member, what the transport does with it, and what to do. After
reviewing a change, record the new value here and the release in pyproject.toml.
The last test keeps the tables complete: a private name used in the module and
listed nowhere fails it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import tomllib
from pathlib import Path

import kombu
import kombu.transport
import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from taskcore import reliable_redis

# Runs in the SQLite pass only: nothing here touches the test database.
pytestmark = pytest.mark.database_independent

PROJECT_DIR = Path(__file__).resolve().parent.parent
VERIFIED_KOMBU = "5.7.0"

Channel, QoS, PublishBatch = kombu_redis.Channel, kombu_redis.QoS, kombu_redis.PublishBatch

# (owner, member): what the transport does with it. Checked on live objects of
# kombu's own transport, since many are set in __init__.
MEMBERS = {
    ("kombu.transport", "TRANSPORT_ALIASES"): "use_for_redis_urls maps redis/sentinel here",
    ("kombu.transport", "_transport_cache"): "use_for_redis_urls drops a stale resolved alias",
    ("Channel", "_pool"): "conn_or_acquire: None once the connection closed",
    ("Channel", "_create_client"): "conn_or_acquire: one client per channel and pool",
    ("Channel", "_q_for_pri"): "the priority lists a reservation pops from",
    ("Channel", "_fanout_queues"): "fanout queues are never reserved",
    ("Channel", "_basic_cancel"): "flush acks and forget no_ack queues on cancel",
    ("Channel", "_tag_to_queue"): "the queue a cancelled consumer consumed",
    ("Channel", "_active_queues"): "whether a cancelled queue is still consumed",
    ("Channel", "_get"): "basic_get's pop: replaced by a reservation",
    ("Channel", "_maybe_update_queues_expire"): "x-expires refreshed after a reservation",
    ("Channel", "_brpop_start"): "replaced: send a reservation or a bell wait",
    ("Channel", "_brpop_read"): "replaced: read a reservation or a bell",
    ("Channel", "_queue_cycle"): "fair order of the consumed queues (consume, rotate)",
    ("Channel", "_in_poll"): "kombu's poller: the connection a command is in flight on",
    ("Channel", "_brpop_sent_at"): "kombu's poller: when that command was sent",
    ("Channel", "_flush_brpop_reauth"): "re-authentication once the reply is read",
    ("Channel", "_put"): "replaced: publish plus bell (kwarg _publish_batch)",
    ("Channel", "_get_message_priority"): "the priority list a publish goes to",
    ("Channel", "_expires"): "x-expires of a queue applied to its bell",
    ("Channel", "_do_restore_message"): "a restored message rings its queue's bell",
    ("Channel", "_lookup"): "the queues of a restored message's exchange",
    ("Channel", "from_transport_options"): "extended with replica_acks, replica_ack_timeout",
    ("SentinelChannel", "from_transport_options"): "extended likewise",
    ("Channel", "_queue_bind"): "a binding Redis refuses at maxmemory may exist already",
    ("Channel", "_size"): "replaced: the queue count without MULTI (refused at maxmemory)",
    ("Transport", "_deliver"): "hands a reserved message to its consumer",
    ("Transport", "channels"): "the channels whose acks the timer flushes",
    ("QoS", "can_consume_max_estimate"): "the prefetch credit a reservation takes",
    ("QoS", "restore_by_tag"): "puts back a reserved message not handed over",
    ("PublishBatch", "pipeline"): "ReplicatedPublishBatch wraps its execute with a WAIT",
    ("kombu_redis", "BatchPublishError"): "the error a failed or unreplicated batch raises",
    ("kombu_redis", "Empty"): "raised when a reservation or bell wait brings nothing",
}

# Methods the transport replaces or mirrors: sha256(inspect.getsource)[:16] of kombu
# 5.7.0, and why their text matters. The copy of PublishBatch.flush (one line
# added) was replaced by a wrapper of the pipeline's execute; its hash stays since
# the wrapper relies on flush executing the pipeline once and wrapping errors.
UPSTREAM_SOURCES = {
    "Channel.conn_or_acquire": (
        "25883caca6c4121e",
        "replaced: one cached client per channel, connection error when closed",
    ),
    "Channel._brpop_start": ("06723d707ddf2240", "mirrored: the bookkeeping of a sent BRPOP"),
    "Channel._brpop_read": ("c42518699709f2df", "mirrored: disconnect on error, re-auth flush"),
    "Channel._get": ("be26a9f1eb4cf8da", "replaced: a reservation of one message"),
    "Channel._put": ("1c0cf9749576614c", "replaced: the keys and x-expires kombu writes"),
    "Channel._do_restore_message": ("8b430df94e45b5b0", "extended: its pipe gets the bell"),
    "QoS.append": ("35c655f6ecc62fe6", "bypassed: reserve.lua writes its unacked entry"),
    "QoS.ack": ("1bc15a4ddf541af6", "bypassed: acks ride along with the next reservation"),
    "QoS.restore_by_tag": ("58e161d81b6fe18d", "reads the unacked entry reserve.lua writes"),
    "Channel._size": ("7cc839b42fdc5e3b", "replaced: the same count in a plain pipeline"),
    "virtual.Channel.basic_get": ("ba4884c15b6bed6d", "relied on: _get, then qos.append"),
    "PublishBatch.__init__": ("128f03103e40f076", "relied on: self.pipeline, created once"),
    "PublishBatch.flush": ("9c47ee10979b4b04", "relied on: one pipeline.execute per flush"),
}

# Overridden and called through super(): the arguments passed must still fit.
SIGNATURES = {
    "Channel.basic_consume": "(self, queue, *args, **kwargs)",
    "Channel._basic_cancel": "(self, consumer_tag)",
    "Channel.close": "(self)",
    "Channel.create_publish_batch": "(self, max_size)",
    "Channel._create_client": "(self, asynchronous=False)",
    "Channel._queue_bind": "(self, exchange, routing_key, pattern, queue)",
    "Channel.maybe_refresh_binding_expiry": "(self)",
    "QoS.restore_visible": "(self, start=0, num=10, interval=10)",
    "QoS.reject": "(self, delivery_tag, requeue=False)",
    "Channel._maybe_update_queues_expire": "(self, client, queue)",
    "Transport.register_with_event_loop": "(self, connection, loop)",
    "Transport._deliver": "(self, message, queue)",
    "virtual.QoS.append": "(self, message, delivery_tag)",
    "virtual.QoS.ack": "(self, delivery_tag)",
}

OWNERS = {
    "kombu.transport": kombu.transport,
    "kombu_redis": kombu_redis,
    "Channel": Channel,
    "SentinelChannel": kombu_redis.SentinelChannel,
    "Transport": kombu_redis.Transport,
    "QoS": QoS,
    "PublishBatch": PublishBatch,
    "virtual.Channel": virtual.Channel,
    "virtual.QoS": virtual.QoS,
}


def upstream(qualified: str):
    owner, name = qualified.rsplit(".", 1)
    return getattr(OWNERS[owner], name)


@pytest.fixture(scope="module")
def live():
    """Objects of kombu's own Redis transport (instance attributes are set in __init__)."""
    with Connection(os.environ["CELERY_BROKER_URL"], transport=kombu_redis.Transport) as conn:
        channel = conn.channel()
        batch = channel.create_publish_batch(10)
        try:
            yield {
                "Channel": channel,
                "Transport": conn.transport,
                "QoS": channel.qos,
                "PublishBatch": batch,
            }
        finally:
            batch.close()


def test_kombu_is_the_release_the_transport_was_verified_on():
    pinned = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    assert f"kombu=={VERIFIED_KOMBU}" in pinned["dependencies"], "pyproject pins another kombu"
    assert kombu.__version__ == VERIFIED_KOMBU, (
        f"kombu {kombu.__version__} is installed; taskcore.reliable_redis was verified on "
        f"{VERIFIED_KOMBU}: the tests below name what changed"
    )


@pytest.mark.parametrize(("owner", "name"), list(MEMBERS), ids=[".".join(k) for k in MEMBERS])
def test_the_kombu_member_exists(live, owner, name):
    holder = live.get(owner, OWNERS[owner])
    assert hasattr(holder, name), (
        f"kombu {kombu.__version__}: {owner}.{name} is gone; taskcore.reliable_redis uses it "
        f"({MEMBERS[owner, name]})"
    )


@pytest.mark.parametrize("qualified", list(UPSTREAM_SOURCES))
def test_the_replaced_kombu_method_is_the_one_it_was_written_against(qualified):
    recorded, why = UPSTREAM_SOURCES[qualified]
    source = inspect.getsource(upstream(qualified))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == recorded, (
        f"kombu {kombu.__version__} changed {qualified} (source hash {digest}, was {recorded} "
        f"in {VERIFIED_KOMBU}); taskcore.reliable_redis {why}. Compare the two versions, "
        "carry the change over, then record the new hash."
    )


@pytest.mark.parametrize("qualified", list(SIGNATURES))
def test_the_overridden_kombu_method_keeps_its_signature(qualified):
    signature = str(inspect.signature(upstream(qualified)))
    assert signature == SIGNATURES[qualified], (
        f"kombu {kombu.__version__} changed the signature of {qualified}: {signature}, "
        f"was {SIGNATURES[qualified]}; taskcore.reliable_redis overrides or calls it"
    )


def test_every_kombu_private_name_the_transport_uses_is_listed(live):
    """A private name in the module that kombu also has is a reliance: it must be in a table."""
    source = inspect.getsource(reliable_redis)
    used = set(re.findall(r"\.(_[a-z]\w*)", source)) | set(re.findall(r"def (_[a-z]\w*)", source))
    kombus = {
        name
        for holder in [*OWNERS.values(), *live.values()]
        for name in dir(holder)
        if name.startswith("_") and not name.startswith("__")
    }
    listed = {name for _owner, name in MEMBERS}
    listed |= {q.rsplit(".", 1)[1] for q in [*UPSTREAM_SOURCES, *SIGNATURES]}
    unlisted = sorted((used & kombus) - listed)
    assert not unlisted, f"kombu internals used by taskcore.reliable_redis, not listed: {unlisted}"
