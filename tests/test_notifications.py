"""The email queue: notifications and campaigns through a real worker and a real SMTP server.

What a user would see is asserted: the messages an SMTP server received (their
headers and bodies, how many per recipient), the delivery records and the admin.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.db import transaction
from django.utils import timezone

from admin_backend import queues
from notifications import delivery, services
from notifications.addresses import EmailInputError
from notifications.models import Campaign, Delivery, Notification, Suppression
from notifications.tasks import send_email_message
from taskcore.testing import waiting
from taskcore.testing.redis_server import free_port

Status = Delivery.Status


# Generous upper bounds, never timings: the machines are shared and slow at times.
WAIT = 90


def wait_for(predicate, timeout: float = WAIT, interval: float = 0.1, what: str = "condition"):
    return waiting.wait_for(predicate, timeout, interval, what)


class ScriptedSmtpHandler:
    """An aiosmtpd handler that keeps what it accepts and can refuse on a script.

    ``refuse_rcpt[address]`` is a list of answers given to that recipient's
    RCPT commands in turn (then it is accepted), e.g. ``["451 4.7.1 later"]``.
    """

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.refuse_rcpt: dict[str, list[str]] = {}
        self.rcpt_log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            script = self.refuse_rcpt.get(address.lower())
            answer = script.pop(0) if script else "250 OK"
            self.rcpt_log.append((address.lower(), answer[:3]))
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def count_by_recipient(self) -> Counter:
        with self.lock:
            return Counter(str(m["To"].addresses[0].addr_spec) for m in self.messages)


@pytest.fixture
def mail_server(settings):
    handler = ScriptedSmtpHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.worker_env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(port)}
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    yield handler
    controller.stop()


def make_campaign(audience: list[str], **fields) -> Campaign:
    values = {
        "name": "Volunteer news",
        "subject": "News for {{ name|default:email }}",
        "text_template": "Hello {{ name }} & friends,\nthe news.",
        "html_template": "<p>Hello <b>{{ name }}</b></p>",
        "audience": "\n".join(audience),
    }
    values.update(fields)
    return Campaign.objects.create(**values)


def send_and_wait(campaign: Campaign, timeout: float = WAIT) -> Campaign:
    with transaction.atomic():
        assert services.request_campaign_send(campaign.pk)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.DONE,
        timeout,
        what=f"campaign {campaign.pk} done",
    )
    return Campaign.objects.get(pk=campaign.pk)


# --- notifications -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_notification_arrives_with_its_headers_and_both_bodies(start_worker, mail_server):
    start_worker(["email"], env=mail_server.worker_env)

    with transaction.atomic():
        notification = services.send_notification(
            "welcome",
            ["Ada Lovelace <Ada@Example.org>"],
            {
                "name": "Ada Lovelace",
                "programme": "<b>Health</b> & Education",
                "login_url": "https://admin.example.org/login/",
            },
        )
        # Published after commit only: nothing can be sent from a rolled-back request.
        time.sleep(0.5)
        assert not mail_server.messages

    wait_for(lambda: mail_server.messages, what="notification received")
    message = mail_server.messages[0]
    record = Delivery.objects.get(notification=notification)
    assert message["From"] == "AU-VLP <no-reply@localhost>"
    assert message["To"] == "Ada Lovelace <ada@example.org>"
    assert message["Subject"] == "Welcome to AU-VLP, Ada Lovelace"
    assert message["Message-ID"] == record.message_id
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    assert "List-Unsubscribe" not in message  # transactional mail, not a mailing

    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    # Text is not escaped; HTML is, so a value cannot inject markup.
    assert "Programme: <b>Health</b> & Education" in text
    assert "<strong>&lt;b&gt;Health&lt;/b&gt; &amp; Education</strong>" in html
    assert '<a href="https://admin.example.org/login/">' in html

    record = wait_for(lambda: Delivery.objects.filter(pk=record.pk, status=Status.SENT).first())
    assert record.smtp_code == 250 and record.attempts == 1 and record.sent_at


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("recipients", "subject_name", "error"),
    [
        (["not-an-address"], "Ada", "invalid email address: 'not-an-address'"),
        (
            ["ada@example.org", "bob@@example.org"],
            "Ada",
            "invalid email address: 'bob@@example.org'",
        ),
        (["ada@example.org\nBcc: all@example.org"], "Ada", "recipient contains a line break"),
        (["Ada\r\nBcc: all@example.org <ada@example.org>"], "Ada", "line break"),
        (["ada@example.org"], "Ada\nBcc: all@example.org", "subject contains a line break"),
        ([], "Ada", "no recipient given"),
    ],
)
def test_bad_addresses_and_header_injection_are_refused_and_nothing_is_stored(
    recipients, subject_name, error
):
    with pytest.raises(EmailInputError, match=re.escape(error)):
        services.send_notification(
            "welcome", recipients, {"name": subject_name, "login_url": "https://x.example"}
        )
    assert not Notification.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        ["ada@example.org"],
        "",
        "   ",
        "ada@example.org\u2028Bcc: all@example.org",  # Unicode line separator
        "ada@example.org\x0bBcc: all@example.org",
        "ada@example.org\x00",
        "a" * 250 + "@example.org",
        '"A" <ada@example.org>, bob@example.org',  # two addresses in one
        "ada@example..org",
        "ada@-example.org",
        "Ada <>",
        "Ada <ada@example.org",
        "x" * 201 + " <ada@example.org>",  # name too long
    ],
)
def test_every_malformed_recipient_is_refused_with_an_email_input_error(value):
    from notifications.addresses import parse_recipient

    with pytest.raises(EmailInputError):
        parse_recipient(value)


def test_an_audience_reports_every_bad_line_at_once():
    from notifications.addresses import parse_audience

    lines = ["ok@example.org"] + [f"bad{i}@" for i in range(25)] + ["  ", "# note"]
    with pytest.raises(EmailInputError) as refused:
        parse_audience("\n".join(lines))
    message = str(refused.value)
    assert message.startswith("line 2: invalid email address: 'bad0@'; line 3:")
    assert message.endswith("(and 5 more)")
    assert [r.email for r in parse_audience("A@X.org\nB <a@x.org>\n\nb@x.org")] == [
        "a@x.org",
        "b@x.org",
    ]


def test_template_names_cannot_leave_the_email_templates():
    with pytest.raises(EmailInputError, match="template name must be"):
        services.send_notification("../../admin/base", ["ada@example.org"])
    with pytest.raises(EmailInputError, match="no email template 'no-such-template'"):
        services.send_notification("no-such-template", ["ada@example.org"])


@pytest.mark.django_db(transaction=True)
def test_a_task_given_bad_input_fails_at_once_with_a_clear_error(start_worker, mail_server):
    start_worker(["email"], env=mail_server.worker_env)

    bad_address = send_email_message.delay(["bob@@example.org"], "Hello", "body")
    injected = send_email_message.delay(["ada@example.org"], "Hi\r\nBcc: all@example.org", "body")
    good = send_email_message.delay(["ada@example.org"], "Still working", "body")

    with pytest.raises(
        EmailInputError, match=re.escape("invalid email address: 'bob@@example.org'")
    ):
        bad_address.get(timeout=WAIT, propagate=True)
    with pytest.raises(EmailInputError, match="subject contains a line break"):
        injected.get(timeout=WAIT, propagate=True)
    good.get(timeout=WAIT)
    assert [m["Subject"] for m in mail_server.messages] == ["Still working"]
    # Failed at once: retrying a permanent error would only repeat it.
    assert (bad_address.state, bad_address.retries) == ("FAILURE", 0)


# --- campaigns -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["prefork", "queue table"])
def test_451_recipients_are_retried_and_delivered_550_fail_with_the_servers_reason(
    start_worker, mail_server, pool
):
    audience = [f"user{i}@example.org" for i in range(12)]
    deferred_twice = {"user3@example.org", "user7@example.org"}
    deferred_once = {"user9@example.org"}
    rejected = {"user5@example.org", "user11@example.org"}
    for address in deferred_twice:
        mail_server.refuse_rcpt[address] = ["451 4.7.1 Greylisted, try again later"] * 2
    for address in deferred_once:
        mail_server.refuse_rcpt[address] = ["452 4.2.2 Mailbox full, try later"]
    for address in rejected:
        mail_server.refuse_rcpt[address] = [f"550 5.1.1 <{address}>: Recipient unknown"] * 9
    shape = {}
    if pool == "queue table":  # how the email queue is deployed
        spec = queues.spec_for_task("notifications.tasks.send_delivery_batch")
        shape = {"pool": spec.pool, "concurrency": spec.concurrency}
        if spec.autoscale:  # as deployed: the pool grows from min to max
            shape["extra_args"] = [f"--autoscale={spec.autoscale[0]},{spec.autoscale[1]}"]
    start_worker(["email"], env={**mail_server.worker_env, "EMAIL_BATCH_SIZE": "5"}, **shape)

    campaign = send_and_wait(make_campaign(audience))

    received = mail_server.count_by_recipient()
    assert received == Counter({address: 1 for address in set(audience) - rejected})
    failed = {d.email: d for d in campaign.deliveries.filter(status=Status.FAILED)}
    assert set(failed) == rejected
    for address, record in failed.items():
        assert record.smtp_code == 550
        assert record.error == f"550 5.1.1 <{address}>: Recipient unknown"
    retried = {d.email: d for d in campaign.deliveries.filter(email__in=deferred_twice)}
    assert all(d.status == Status.SENT and d.attempts == 3 for d in retried.values())
    assert services.campaign_counts(campaign.pk) == {
        "total": 12,
        "queued": 0,
        "sending": 0,
        "deferred": 0,
        "sent": 10,
        "failed": 2,
        "skipped": 0,
    }


@pytest.mark.django_db(transaction=True)
def test_campaign_mail_has_list_unsubscribe_and_the_link_unsubscribes(
    start_worker, mail_server, client
):
    Suppression.objects.create(email="gone@example.org")
    start_worker(["email"], env=mail_server.worker_env)

    campaign = send_and_wait(
        make_campaign(
            [
                "Ann <ann@example.org>",
                "gone@example.org",
                "<i>Evil</i> <eve@example.org>",
                '"Núñez, Zoë" <Zoe@Example.org>',
                "Ünal <unal@bücher.example>",  # an international domain: sent as IDNA
            ]
        )
    )

    assert mail_server.count_by_recipient() == Counter(
        {
            "ann@example.org": 1,
            "eve@example.org": 1,
            "zoe@example.org": 1,
            "unal@xn--bcher-kva.example": 1,
        }
    )
    skipped = campaign.deliveries.get(email="gone@example.org")
    assert (skipped.status, skipped.error) == (Status.SKIPPED, "suppressed: unsubscribed")
    by_recipient = {m["To"].addresses[0].addr_spec: m for m in mail_server.messages}
    eve = by_recipient["eve@example.org"]
    zoe = by_recipient["zoe@example.org"]
    assert zoe["To"].addresses[0].display_name == "Núñez, Zoë"
    assert zoe["Subject"] == "News for Núñez, Zoë"
    unal = by_recipient["unal@xn--bcher-kva.example"]
    assert unal["To"].addresses[0].display_name == "Ünal"
    assert eve["Subject"] == "News for <i>Evil</i>"
    assert "<p>Hello <b>&lt;i&gt;Evil&lt;/i&gt;</b></p>" in eve.get_body(("html",)).get_content()
    assert "Hello <i>Evil</i> & friends," in eve.get_body(("plain",)).get_content()

    ann = by_recipient["ann@example.org"]
    assert ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = ann["List-Unsubscribe"].strip().strip("<>")
    assert link.startswith("http://127.0.0.1:8000/notifications/unsubscribe/")
    assert link in ann.get_body(("plain",)).get_content()
    path = link.removeprefix("http://127.0.0.1:8000")

    page = client.get(path)  # a link checker opening it unsubscribes no one
    assert page.status_code == 200 and b"Unsubscribe ann@example.org?" in page.content
    assert not Suppression.objects.filter(email="ann@example.org").exists()
    # RFC 8058 one-click: a POST without a browser session or CSRF token.
    done = client.post(path, {"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and b"You are unsubscribed" in done.content
    assert Suppression.objects.get(email="ann@example.org").campaign == campaign
    forged = client.post(path[:-3] + "xx/")
    assert forged.status_code == 400 and b"not valid" in forged.content


# --- claims: what makes a redelivered batch harmless ---------------------------


@pytest.mark.django_db
def test_a_claim_is_taken_once_and_a_dead_tasks_claim_can_be_taken_over():
    campaign = make_campaign(["a@example.org"], status=Campaign.Status.SENDING)
    record = Delivery.objects.create(campaign=campaign, email="a@example.org", message_id="<1@x>")

    assert [d.pk for d in delivery.claim([record.pk], "task-a")] == [record.pk]
    assert delivery.claim([record.pk], "task-b") == []  # a live claim is respected
    assert [d.pk for d in delivery.claim([record.pk], "task-a")] == [record.pk]  # its own rerun

    long_ago = timezone.now() - timedelta(hours=1)
    Delivery.objects.filter(pk=record.pk).update(claimed_at=long_ago)
    assert [d.pk for d in delivery.claim([record.pk], "task-b")] == [record.pk]

    Delivery.objects.filter(pk=record.pk).update(status=Status.SENT)
    assert delivery.claim([record.pk], "task-a") == []
    assert delivery.claim([record.pk], "task-b") == []  # sent is final
    assert Delivery.objects.get(pk=record.pk).attempts == 3


@pytest.mark.django_db
def test_a_batch_that_lost_its_lapsed_claims_does_not_send_them():
    from collections import deque

    campaign = make_campaign(["a@example.org", "b@example.org"], status=Campaign.Status.SENDING)
    records = [
        Delivery.objects.create(campaign=campaign, email=e, message_id=e)
        for e in ("a@example.org", "b@example.org")
    ]
    mine = deque(delivery.claim([r.pk for r in records], "slow-task"))
    # slow-task was stuck past its lease; another task took b over.
    lapsed = timezone.now() - timedelta(hours=1)
    Delivery.objects.filter(pk=records[1].pk).update(claimed_at=lapsed)
    assert [d.pk for d in delivery.claim([records[1].pk], "other-task")] == [records[1].pk]

    still_mine = delivery._renew([d.pk for d in mine], "slow-task")

    assert still_mine == {records[0].pk}
    assert Delivery.objects.get(pk=records[0].pk).claimed_at > lapsed


@pytest.mark.django_db
def test_a_recipient_is_one_delivery_per_campaign():
    from django.db import IntegrityError

    campaign = make_campaign(["a@example.org"])
    Delivery.objects.create(campaign=campaign, email="a@example.org", message_id="<1@x>")
    with pytest.raises(IntegrityError), transaction.atomic():
        Delivery.objects.create(campaign=campaign, email="a@example.org", message_id="<2@x>")


# --- the admin -----------------------------------------------------------------

ADD_URL = "/admin/notifications/campaign/add/"
LIST_URL = "/admin/notifications/campaign/"


def campaign_form(**overrides) -> dict:
    data = {
        "name": "Spring call",
        "subject": "Spring call for {{ name|default:'volunteers' }}",
        "text_template": "Dear {{ name }}, apply now.",
        "html_template": "<p>Dear {{ name }}, apply now.</p>",
        "audience": "Ann <ann@example.org>\nbob@example.org\n# a comment\n\ncy@example.org",
    }
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_the_admin_refuses_a_campaign_with_bad_addresses_or_templates(admin_client):
    page = admin_client.post(
        ADD_URL,
        campaign_form(
            subject="Hi {{ name|no_such_filter }}",
            html_template="{% if %}",
            audience="ann@example.org\nbob@@example.org\nfine@example.org\nnot an address",
        ),
    )
    assert page.status_code == 200  # the form again, with the errors
    errors = page.context["adminform"].form.errors
    assert errors["audience"] == [
        "line 2: invalid email address: 'bob@@example.org'; "
        "line 4: invalid email address: 'not an address'"
    ]
    assert errors["subject"][0].startswith("subject: template error:")
    assert errors["html_template"][0].startswith("HTML body: template error:")
    assert not Campaign.objects.exists()


@pytest.mark.django_db
def test_sending_needs_the_send_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    editor = django_user_model.objects.create_user("editor", password="x", is_staff=True)
    editor.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="notifications", codename__endswith="_campaign"
        ).exclude(codename="send_campaign")
    )
    client.force_login(editor)
    assert client.post(ADD_URL, campaign_form()).status_code == 302
    campaign = Campaign.objects.get()

    page = client.get(LIST_URL)
    assert b"send_campaigns" not in page.content
    client.post(LIST_URL, {"action": "send_campaigns", "_selected_action": [campaign.pk]})
    assert Campaign.objects.get().status == Campaign.Status.DRAFT


@pytest.mark.django_db(transaction=True)
def test_admin_creates_sends_shows_progress_and_resends_the_failed(
    admin_client, admin_user, start_worker, mail_server
):
    # cy is refused once for good (550), then accepted when resent.
    mail_server.refuse_rcpt["cy@example.org"] = ["550 5.7.1 Policy rejection"]
    start_worker(["email"], env=mail_server.worker_env)

    assert admin_client.post(ADD_URL, campaign_form()).status_code == 302
    campaign = Campaign.objects.get()
    assert (campaign.status, campaign.created_by) == (Campaign.Status.DRAFT, admin_user)

    sent = admin_client.post(
        LIST_URL, {"action": "send_campaigns", "_selected_action": [campaign.pk]}, follow=True
    )
    assert "Sending: Spring call." in sent.content.decode()
    wait_for(lambda: Campaign.objects.get().status == Campaign.Status.DONE, what="campaign done")

    listing = admin_client.get(LIST_URL).content.decode()
    assert '<progress value="3" max="3"></progress> 100%' in listing
    assert f"?campaign__id__exact={campaign.pk}&amp;status__exact=failed" in listing
    failed = admin_client.get(
        f"/admin/notifications/delivery/?campaign__id__exact={campaign.pk}&status__exact=failed"
    ).content.decode()
    assert "cy@example.org" in failed and "550 5.7.1 Policy rejection" in failed
    detail = admin_client.get(f"{LIST_URL}{campaign.pk}/change/").content.decode()
    assert "2 sent, 1 failed of 3" in detail
    assert 'name="audience"' not in detail  # read-only once sent

    # The 550 to RCPT was a hard bounce: cy is suppressed until someone removes it.
    bounce = Suppression.objects.get(email="cy@example.org")
    assert (bounce.reason, bounce.detail) == ("hard_bounce", "550 5.7.1 Policy rejection")
    admin_client.post(
        "/admin/notifications/suppression/",
        {"action": "delete_selected", "_selected_action": [bounce.pk], "post": "yes"},
    )
    assert not Suppression.objects.exists()

    resent = admin_client.post(
        LIST_URL,
        {"action": "resend_failed_recipients", "_selected_action": [campaign.pk]},
        follow=True,
    )
    assert "Resending to 1 failed recipient(s)." in resent.content.decode()
    wait_for(
        lambda: (
            Campaign.objects.get().status == Campaign.Status.DONE
            and not Delivery.objects.filter(status=Status.FAILED).exists()
        ),
        WAIT,
        what="resend done",
    )
    assert mail_server.count_by_recipient() == Counter(
        {"ann@example.org": 1, "bob@example.org": 1, "cy@example.org": 1}
    )
    assert (
        '<progress value="3" max="3"></progress> 100%'
        in admin_client.get(LIST_URL).content.decode()
    )


# --- failures of the whole batch, and repairs ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refused_login_fails_the_batch_visibly_and_never_logs_the_password(start_worker, log_dir):
    from aiosmtpd.smtp import AuthResult

    password = "s3cret-smtp-Pa55"
    handler = ScriptedSmtpHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=lambda *args: AuthResult(success=False, handled=False),
    )
    controller.start()
    try:
        worker = start_worker(
            ["email"],
            env={
                "EMAIL_HOST": "127.0.0.1",
                "EMAIL_PORT": str(port),
                "EMAIL_HOST_USER": "mailer",
                "EMAIL_HOST_PASSWORD": password,
            },
        )
        with transaction.atomic():
            notification = services.send_notification(
                "welcome", ["ada@example.org", "bob@example.org"], {"name": "Ada"}
            )
        wait_for(
            lambda: not Delivery.objects.filter(status__in=Delivery.PENDING).exists(),
            WAIT,
            what="deliveries finished",
        )
    finally:
        controller.stop()

    failed = list(Delivery.objects.filter(notification=notification, status=Status.FAILED))
    assert len(failed) == 2 and not handler.messages
    assert failed[0].error.startswith("batch task failed: SMTPAuthenticationError: (535")
    logged = worker.output() + "".join(p.read_text() for p in log_dir.glob("*.log"))
    assert "SMTPAuthenticationError" in logged
    assert password not in logged


@pytest.mark.django_db(transaction=True)
def test_stalled_deliveries_of_a_dead_worker_are_resumed(start_worker, mail_server):
    campaign = make_campaign(["a@example.org", "b@example.org", "c@example.org"])
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    long_ago = timezone.now() - timedelta(hours=1)
    for address, status, token in [
        ("a@example.org", Status.SENDING, "dead-task"),  # claimed by a task that died
        ("b@example.org", Status.QUEUED, ""),  # its batch message went with the worker
        ("c@example.org", Status.SENT, "done-task"),
    ]:
        Delivery.objects.create(
            campaign=campaign, email=address, status=status, claimed_by=token, message_id=address
        )
    Delivery.objects.update(updated_at=long_ago, claimed_at=long_ago)
    start_worker(["email"], env=mail_server.worker_env)

    assert services.resume_stalled_deliveries() == 2

    wait_for(lambda: Campaign.objects.get().status == Campaign.Status.DONE, what="done")
    assert mail_server.count_by_recipient() == Counter({"a@example.org": 1, "b@example.org": 1})


@pytest.mark.django_db
def test_a_campaign_that_cannot_start_goes_back_to_draft_with_the_reason():
    campaign = make_campaign(["ok@example.org", "broken@"], status=Campaign.Status.QUEUED)

    with pytest.raises(EmailInputError, match="line 2: invalid email address: 'broken@'"):
        services.start_campaign(campaign.pk)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert "line 2: invalid email address: 'broken@'" in campaign.error
    assert not campaign.deliveries.exists()


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("a" * 65 + "@example.org", "local part (before the @) is 65 octets; at most 64"),
        ("\u00e4" * 33 + "@example.org", "local part (before the @) is 66 octets; at most 64"),
        ("a" * 64 + "@" + ".".join(["d" * 62] * 3) + ".org", "is 257 octets; at most 254"),
    ],
)
def test_addresses_over_rfc_5321_length_limits_in_octets_are_refused(address, problem):
    """RFC 5321 4.5.3.1: local part 64 octets, domain 255, the whole address 254."""
    from notifications.addresses import clean_address

    with pytest.raises(EmailInputError, match=re.escape(problem)):
        clean_address(address)


def test_addresses_at_the_rfc_5321_limits_are_accepted():
    from notifications.addresses import clean_address

    longest = "a" * 64 + "@" + ".".join(["d" * 61] * 3) + ".org"  # 64 + 1 + 189 = 254
    assert len(longest) == 254
    assert clean_address(longest) == longest
