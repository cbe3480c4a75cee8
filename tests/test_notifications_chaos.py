"""A campaign survives kill -9 of its worker: every recipient gets the mail exactly once.

The SMTP server itself pulls the trigger, in the middle of an SMTP transaction
(after DATA, before its answer): the hardest moment for "exactly once", since
the recipient is claimed and the message is on the wire but not accepted. The
first kill takes the pool child (Celery requeues its batch at once); the second
takes the whole worker, main process included, which is then restarted.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from aiosmtpd.controller import Controller
from django.conf import settings
from django.db import transaction

from notifications import services
from notifications.models import Campaign, Delivery
from taskcore.testing.redis_server import free_port
from taskcore.testing.waiting import wait_for

RECIPIENTS = 500
KILL_CHILD_AT = 150  # the 150th DATA command
KILL_WORKER_AT = 350


def wait_until_dead(pid: int, timeout: float = 10) -> None:
    """Until ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive after SIGKILL")


class KillingSmtpHandler:
    """Keeps what it accepts; at the chosen DATA commands it kills the sender instead."""

    def __init__(self, kills: dict[int, object]):
        self.kills = kills
        self.data_commands = 0
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_commands += 1
            kill = self.kills.get(self.data_commands)
        if kill:
            kill()
            return "421 4.3.2 No one is listening any more"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"


def pretend_the_visibility_timeout_passed(broker_url: str) -> int:
    """Age the dead worker's unacknowledged messages past the visibility timeout.

    This is what an hour of waiting does (CELERY_VISIBILITY_TIMEOUT): the next
    worker's periodic restore puts them back on their queue. Nothing else is
    touched, so the redelivery path is the production one.
    """
    client = redis.Redis.from_url(broker_url)
    visibility_timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    entries = client.zrange("unacked_index", 0, -1, withscores=True)
    for tag, score in entries:
        client.zadd("unacked_index", {tag: score - visibility_timeout - 60})
    client.delete("unacked_mutex")  # in case the worker died holding it
    return len(entries)


@pytest.mark.django_db(transaction=True)
def test_a_500_recipient_campaign_arrives_once_each_through_two_kill_9s(start_worker, app):
    current = {}
    worker_killed = threading.Event()

    def kill_pool_children():
        children = current["worker"].child_pids()
        assert children, "no pool child to kill"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            wait_until_dead(pid)

    def kill_whole_worker():
        current["worker"].kill()  # SIGKILL to the process group: main process and child
        worker_killed.set()

    handler = KillingSmtpHandler(
        {KILL_CHILD_AT: kill_pool_children, KILL_WORKER_AT: kill_whole_worker}
    )
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    # One connection in one child, so the SMTP transaction being killed is the only
    # one in flight. (With N connections a kill -9 catches up to N messages between
    # the relay's "250" and their sent-mark; docs/email.md says so.)
    env = {
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "EMAIL_BATCH_SIZE": "25",
        "EMAIL_SMTP_CONNECTIONS": "1",
    }
    try:
        current["worker"] = start_worker(["email"], env=env, concurrency=1)
        audience = [f"volunteer{i:03d}@example.org" for i in range(RECIPIENTS)]
        campaign = Campaign.objects.create(
            name="Chaos",
            subject="Hello {{ email }}",
            text_template="Hi {{ email }}",
            html_template="<p>Hi {{ email }}</p>",
            audience="\n".join(audience),
        )
        with transaction.atomic():
            services.request_campaign_send(campaign.pk)

        assert worker_killed.wait(120), "the SMTP server never got to the second kill"
        assert pretend_the_visibility_timeout_passed(app.conf.broker_url) >= 1
        current["worker"] = start_worker(["email"], env=env, concurrency=1)

        wait_for(
            lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.DONE,
            120,  # an upper bound on a shared machine, not a timing
            what="campaign done",
        )
    finally:
        controller.stop()

    received = Counter(m["To"].addresses[0].addr_spec for m in handler.messages)
    assert handler.data_commands == RECIPIENTS + 2  # the two killed transactions
    assert received == Counter({address: 1 for address in audience})
    deliveries = Delivery.objects.filter(campaign=campaign)
    assert set(deliveries.values_list("status", flat=True)) == {Delivery.Status.SENT}
    # What arrived is what was recorded: one Message-ID per delivery, each once.
    assert sorted(m["Message-ID"] for m in handler.messages) == sorted(
        deliveries.values_list("message_id", flat=True)
    )
    # Both killed batches ran again (a second claim) and skipped what they had sent.
    assert deliveries.filter(attempts=2).count() >= 2
