"""Sending to a relay: latency, a relay that says 421, connections kept across batches.

Real worker processes, a real SMTP server (aiosmtpd, offering PIPELINING as
relays do) and, for latency, bench/latency_proxy.py between them (25 ms each
way). What is asserted is what the relay saw: every recipient exactly once,
how many connections were opened, what it refused.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from notifications import services
from notifications.dev_smtp import AdvertisesPipelining
from notifications.models import Campaign, Delivery, Suppression
from notifications.ratelimit import parse_limit
from taskcore.testing.redis_server import free_port
from taskcore.testing.waiting import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from latency_proxy import LatencyProxy

Status = Delivery.Status
WAIT = 120


class Relay(AdvertisesPipelining):
    """Counts what it accepts per recipient; can refuse MAIL with 421 for a while."""

    def __init__(self):
        self.per_recipient: Counter = Counter()
        self.arrivals: list[float] = []  # time.time() of each message accepted
        self.lock = threading.Lock()
        self.busy_after: int | None = None  # accepted messages before the 421s start
        self.busy_seconds = 0.0
        self.busy_until: float | None = None
        self.refused_421 = 0
        self.unknown: set[str] = set()  # answered 550 to RCPT
        self.contents: list[bytes] = []

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            accepted = len(self.arrivals)
            if self.busy_after is not None and self.busy_until is None:
                if accepted >= self.busy_after:
                    self.busy_until = time.monotonic() + self.busy_seconds
            if self.busy_until is not None and time.monotonic() < self.busy_until:
                self.refused_421 += 1
                return "421 4.3.2 Too busy, closing transmission channel"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.unknown:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.per_recipient.update(a.lower() for a in envelope.rcpt_tos)
            self.arrivals.append(time.time())
            self.contents.append(envelope.content)
        return "250 Message accepted for delivery"


@pytest.fixture
def relay(settings):
    handler = Relay()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port
    handler.worker_env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(port)}
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    yield handler
    controller.stop()


def audience(count: int, tag: str) -> list[str]:
    return [f"volunteer{i:04d}.{tag}@example.org" for i in range(count)]


def send_campaign(recipients: list[str], name: str = "News") -> Campaign:
    campaign = Campaign.objects.create(
        name=name,
        subject="News for {{ email }}",
        text_template="Hello {{ email }},\nthe news.",
        html_template="<p>Hello {{ email }}</p>",
        audience="\n".join(recipients),
    )
    with transaction.atomic():
        assert services.request_campaign_send(campaign.pk)
    return campaign


def wait_done(campaign: Campaign, timeout: float = WAIT) -> Campaign:
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.DONE,
        timeout,
        0.2,
        f"campaign {campaign.pk} done",
    )
    return Campaign.objects.get(pk=campaign.pk)


@pytest.mark.django_db(transaction=True)
def test_a_campaign_through_a_relay_50ms_away_reaches_everyone_once_on_kept_connections(
    start_worker, relay
):
    proxy = LatencyProxy(("127.0.0.1", relay.port), delay=0.025).start()
    try:
        env = {
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(proxy.listen_port),
            "EMAIL_BATCH_SIZE": "25",
            "EMAIL_SMTP_CONNECTIONS": "4",
        }
        start_worker(["email"], concurrency=2, env=env)
        recipients = audience(300, "latency")

        campaign = wait_done(send_campaign(recipients))
    finally:
        proxy.stop()

    assert relay.per_recipient == Counter({address: 1 for address in recipients})
    assert campaign.deliveries.filter(status=Status.SENT).count() == 300
    # 12 batches on 2 processes: with a connection per batch and thread there
    # would be up to 48; kept in each process's pool, at most 2 x 4.
    assert 1 <= proxy.connections <= 8


@pytest.mark.django_db(transaction=True)
def test_a_relay_answering_421_for_10_seconds_backs_connections_off_and_the_campaign_completes(
    start_worker, relay
):
    relay.busy_after, relay.busy_seconds = 60, 10.0
    env = {**relay.worker_env, "EMAIL_BATCH_SIZE": "50", "EMAIL_SMTP_CONNECTIONS": "3"}
    start_worker(["email"], concurrency=2, env=env)
    recipients = audience(400, "busy")

    campaign = wait_done(send_campaign(recipients), timeout=WAIT + 60)

    assert relay.refused_421 > 0 and relay.busy_until is not None
    assert relay.per_recipient == Counter({address: 1 for address in recipients})
    deliveries = campaign.deliveries.all()
    assert {d.status for d in deliveries} == {Status.SENT}
    # The connections waited the relay out; no batch had to be handed back and retried.
    assert {d.attempts for d in deliveries} == {1}


@pytest.mark.django_db(transaction=True)
def test_a_hard_bounce_suppresses_the_address_and_later_campaigns_skip_every_suppressed_one(
    start_worker, relay, client
):
    relay.unknown = {"gone.1@example.org"}
    Suppression.objects.create(email="left.2@example.org", reason="unsubscribed")
    Suppression.objects.create(email="bounced.3@example.org", reason="imported", detail="ses")
    start_worker(["email"], env=relay.worker_env)
    everyone = ["ann@example.org", "gone.1@example.org", "left.2@example.org"]
    everyone.append("bounced.3@example.org")

    first = wait_done(send_campaign(everyone, "first"))
    bounce = Suppression.objects.get(email="gone.1@example.org")
    assert bounce.reason == Suppression.Reason.HARD_BOUNCE
    assert bounce.detail.startswith("550 5.1.1 <gone.1@example.org>: Recipient address rejected")
    assert bounce.campaign == first
    assert relay.per_recipient == Counter({"ann@example.org": 1})

    second = wait_done(send_campaign(everyone, "second"))

    assert relay.per_recipient == Counter({"ann@example.org": 2})  # one from each campaign
    skipped = dict(second.deliveries.filter(status=Status.SKIPPED).values_list("email", "error"))
    assert skipped == {
        "gone.1@example.org": "suppressed: hard_bounce",
        "left.2@example.org": "suppressed: unsubscribed",
        "bounced.3@example.org": "suppressed: imported",
    }


def test_a_bad_rate_limit_is_refused_with_a_clear_error():
    assert parse_limit("14/s").amount == 14
    assert parse_limit("600/m").get_expiry() == 60
    assert parse_limit("50 per second").amount == 50
    for bad in ("fast", "14", "0/s", "-3/s", "14/fortnight"):
        with pytest.raises(ImproperlyConfigured, match="EMAIL_RATE_LIMIT must be like"):
            parse_limit(bad)


# --- one rate limit for every worker ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_batch_without_a_token_in_time_hands_the_rest_to_a_later_task(start_worker, relay):
    from notifications import ratelimit

    limit = ratelimit.EmailRateLimit(parse_limit("3/20 seconds"))
    limit.clear()
    start_worker(["email"], env={**relay.worker_env, "EMAIL_RATE_LIMIT": "3/20 seconds"})
    recipients = audience(5, "postponed")
    campaign = send_campaign(recipients)

    wait_for(lambda: sum(relay.per_recipient.values()) == 3, WAIT, 0.1, "3 mails sent")
    # The other two were handed back (queued) and taken again by a new batch task:
    # their claims count twice. The first task did not hold its worker until the
    # window ended (a task may send them as soon as a token frees, hence any status).
    wait_for(
        lambda: campaign.deliveries.filter(attempts__gte=2).count() == 2,
        WAIT,
        0.1,
        "the rest postponed to a new task",
    )
    assert campaign.deliveries.filter(status=Status.SENT, attempts=1).count() == 3

    limit.clear()  # as if the 20 seconds had passed
    wait_done(campaign)
    assert relay.per_recipient == Counter({address: 1 for address in recipients})


@pytest.mark.chaos  # about a minute: 3,000 mails at 50 a second
@pytest.mark.django_db(transaction=True)
def test_email_rate_limit_holds_across_two_workers_at_the_relay(app, start_worker, relay):
    from notifications import ratelimit

    ratelimit.EmailRateLimit(parse_limit("50/s")).clear()  # this run's Redis, but be sure
    env = {**relay.worker_env, "EMAIL_RATE_LIMIT": "50/s"}
    workers = [start_worker(["email"], env=env), start_worker(["email"], env=env)]
    recipients = audience(3_000, "limited")

    campaign = wait_done(send_campaign(recipients), timeout=240)

    assert relay.per_recipient == Counter({address: 1 for address in recipients})
    assert campaign.deliveries.filter(status=Status.SENT).count() == 3_000
    for worker in workers:  # both sent: the limit was shared, not per process
        stats = app.control.inspect(destination=[worker.hostname], timeout=5).stats()
        assert stats[worker.hostname]["total"].get("notifications.tasks.send_delivery_batch")
    per_second = Counter(int(arrival) for arrival in relay.arrivals)
    first, last = min(per_second), max(per_second)
    # Whole seconds only: the first and the last are partial.
    counts = [per_second[second] for second in range(first + 1, last)]
    print("mails per second at the relay:", [per_second[s] for s in range(first, last + 1)])
    assert len(counts) >= 55
    # No second above 55 (the limit plus 10%), anywhere in the run.
    assert max(per_second.values()) <= 55, counts
    # The limiter starts with a full allowance (50 at once, in the first second),
    # then waits for those to age out of the window (the second after). From
    # then on the rate is 50 +/- 5%, and no second falls far below it either: a
    # message granted just before a second ends may arrive just after it, so
    # neighbouring seconds can read 48 and 52 (or 47 and 53) at an even 50/s.
    steady = counts[1:]
    assert 47.5 <= sum(steady) / len(steady) <= 52.5, counts
    assert min(steady) >= 45, counts


# --- one pipelined connection, message by message ------------------------------------


def test_one_pipelined_connection_keeps_each_messages_outcome_apart(relay):
    import smtplib

    from notifications import smtp

    relay.unknown = {"gone@example.org"}
    connection = smtp.Connection(smtp._Backend(fail_silently=False))
    body = b"Subject: s\r\n\r\n.a line starting with a dot\r\nend\r\n"
    addresses = ["a@example.org", "gone@example.org", "b@example.org", "c@example.org"]
    outcomes = {}
    for address in addresses:
        envelope = smtp.Envelope(address, "no-reply@example.org", address, body)
        outcomes.update((e.key, o) for e, o in connection.push(envelope))
        if address == "gone@example.org":
            # Its RCPT was refused before the content: known at once, nothing in flight.
            assert connection.in_flight is None
    outcomes.update((e.key, o) for e, o in connection.finish())
    connection.close()

    assert set(outcomes) == set(addresses)
    assert isinstance(outcomes.pop("gone@example.org"), smtplib.SMTPRecipientsRefused)
    assert all(outcome is None for outcome in outcomes.values())
    # The RSET after the refusal let the next transactions through, once each.
    assert relay.per_recipient == Counter(
        {"a@example.org": 1, "b@example.org": 1, "c@example.org": 1}
    )
    # Dot-stuffed on the way (RFC 5321 4.5.2), as the server un-stuffs it.
    assert relay.contents == [body] * 3


def test_a_relay_refusing_at_the_greeting_backs_the_connection_off_then_gives_up(
    settings, monkeypatch
):
    import socket

    from notifications import smtp

    listener = socket.create_server(("127.0.0.1", 0))
    greeted = []

    def refuse_everyone():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            greeted.append(1)
            client.sendall(b"421 4.3.2 Too many connections, try later\r\n")
            client.close()

    threading.Thread(target=refuse_everyone, daemon=True).start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", listener.getsockname()[1]
    monkeypatch.setattr(smtp, "BACKOFF_FIRST", 0.01)  # the schedule's shape, not its length
    monkeypatch.setattr(smtp, "BACKOFF_CAP", 0.05)
    connection = smtp.Connection(smtp._Backend(fail_silently=False))
    envelope = smtp.Envelope(
        "ann", "no-reply@example.org", "ann@example.org", b"Subject: s\r\n\r\n"
    )
    try:
        for refusals in range(1, smtp.MAX_REFUSALS + 1):
            connection.pause()
            with pytest.raises(smtp.Interrupted) as interrupted:
                connection.push(envelope)
            assert interrupted.value.envelopes == [envelope]  # handed back, not lost
            assert connection.refusals == refusals
        with pytest.raises(smtp.RelayRefusing, match="refused 8 times in a row"):
            connection.pause()
    finally:
        listener.close()
    assert len(greeted) == smtp.MAX_REFUSALS


def test_a_session_lost_after_a_messages_answer_keeps_it_sent_and_resends_only_the_next(
    settings,
):
    import socket

    from notifications import smtp

    listener = socket.create_server(("127.0.0.1", 0))

    def accept_one_message_then_hang_up():
        client, _ = listener.accept()
        stream = client.makefile("rb")
        client.sendall(b"220 relay ready\r\n")
        stream.readline()  # EHLO
        client.sendall(b"250-relay\r\n250 PIPELINING\r\n")
        for _ in range(3):  # MAIL, RCPT, DATA
            stream.readline()
        client.sendall(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        while stream.readline() != b".\r\n":
            pass
        client.sendall(b"250 queued as 1\r\n")
        for _ in range(3):  # read (a close with unread data would be a reset) ...
            stream.readline()
        client.close()  # ... but never answer the next message's MAIL, RCPT and DATA

    server = threading.Thread(target=accept_one_message_then_hang_up, daemon=True)
    server.start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", listener.getsockname()[1]
    connection = smtp.Connection(smtp._Backend(fail_silently=False))
    first, second = (
        smtp.Envelope(name, "no-reply@example.org", f"{name}@example.org", b"Subject: s\r\n\r\n")
        for name in ("first", "second")
    )
    try:
        assert connection.push(first) == []  # in flight: its content goes with the next
        with pytest.raises(smtp.Interrupted) as interrupted:
            connection.push(second)
    finally:
        listener.close()
    assert interrupted.value.completed == [(first, None)]  # taken: not sent again
    assert interrupted.value.envelopes == [second]
    assert connection.disconnects == 1
