"""Retry policy, dead letters, replay, outbox and idempotency, through real workers."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import transaction

from taskcore import deadletters, outbox
from taskcore.base import PermanentError, TransientError, is_transient
from taskcore.idempotency import claim_effect, effect_done, effect_once
from taskcore.models import DeadLetter, OutboxMessage
from taskcore.redis_clients import state_redis
from taskcore.tasks import debug_task
from taskcore.testing.tasks import fails_permanently, fails_transiently
from taskcore.testing.waiting import wait_for

PROJECT_DIR = Path(__file__).resolve().parent.parent


# --- pure functions ------------------------------------------------------------


# The backoff itself is Celery's (tests/test_pipeline.py checks the options reach it).


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientError("x"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (smtplib.SMTPResponseException(451, b"try later"), True),
        (smtplib.SMTPResponseException(550, b"no such user"), False),
        (smtplib.SMTPRecipientsRefused({"a@x": (452, b"full")}), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (452, b"full"), "b@x": (550, b"no")}), False),
        (PermanentError("x"), False),
        (ValueError("bad input"), False),
        (KeyError("x"), False),
    ],
)
def test_errors_are_classified_transient_or_permanent(error, transient):
    assert is_transient(error) is transient


def test_arguments_are_masked_before_they_are_stored():
    masked, changed = deadletters.mask_arguments(
        [{"password": "hunter2", "url": "redis://:pw@h/0", "n": 1}, "plain"]
    )
    assert changed
    assert masked == [{"password": "****", "url": "redis://:****@h/0", "n": 1}, "plain"]


@pytest.mark.django_db
def test_model_instances_are_refused_as_task_arguments(django_user_model):
    user = django_user_model.objects.create_user("ada")
    with pytest.raises(TypeError, match=r"pass User.pk \(\d+\) instead"):
        debug_task.delay(user)
    with pytest.raises(TypeError, match="not model instances"):
        outbox.send_after_commit(debug_task, kwargs={"message": user})


# --- dead letters through a real worker ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_permanent_error_fails_at_once_into_a_dead_letter(start_worker):
    start_worker(["default"])
    result = fails_permanently.delay("bad input")
    with pytest.raises(PermanentError):
        result.get(timeout=20, propagate=True)
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first())
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert letter.attempts == 1
    assert letter.queue == "default"
    assert letter.args == ["bad input"]
    assert letter.exception_type == "PermanentError"
    assert "refused: bad input" in letter.exception_message
    assert "Traceback" in letter.traceback


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_waits_in_redis_while_the_database_is_away(start_worker, capsys):
    # The worker's database does not answer: the failure cannot be written there.
    start_worker(["default"], env={"DATABASE_URL": "postgres://nobody@127.0.0.1:9/absent"})
    result = fails_permanently.delay("while the database is away")
    with pytest.raises(PermanentError):
        result.get(timeout=20, propagate=True)
    wait_for(lambda: state_redis().llen(deadletters.PARKED_KEY))
    assert not DeadLetter.objects.filter(task_id=result.id).exists()

    # Any relay (worker start-up, beat, the command) moves it into the database.
    call_command("dead_letters", "list")
    assert "stored 1 dead letter(s) parked in Redis" in capsys.readouterr().out
    letter = DeadLetter.objects.get(task_id=result.id)
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert letter.args == ["while the database is away"]
    assert state_redis().llen(deadletters.PARKED_KEY) == 0


@pytest.mark.django_db(transaction=True)
def test_transient_errors_retry_with_backoff_then_dead_letter(start_worker, app):
    start_worker(["default"])
    # 3 retries allowed: 10 failures exhaust them (4 calls).
    result = fails_transiently.delay("exhaust", 10)
    with pytest.raises(TransientError):
        result.get(timeout=30)
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first())
    assert letter.reason == DeadLetter.Reason.RETRIES_EXHAUSTED
    assert letter.attempts == 4  # the first call and 3 retries

    # Two failures fit in the retry budget: the task succeeds on its third call.
    assert fails_transiently.delay("recover", 2).get(timeout=30) == 3
    assert not DeadLetter.objects.filter(task_name=fails_transiently.name, args__0="recover")


@pytest.mark.django_db(transaction=True)
def test_replay_sends_the_task_again_with_its_routing(start_worker):
    start_worker(["default"])
    # 5 failures: the first run (4 calls) dead-letters, the replay succeeds on call 6.
    first = fails_transiently.delay("replay-me", 5)
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=first.id).first())

    new_task_id = deadletters.replay(letter)

    assert fails_transiently.AsyncResult(new_task_id).get(timeout=30) == 6
    letter.refresh_from_db()
    assert letter.replayed_task_id == new_task_id
    assert letter.replay_count == 1 and letter.replayed_at is not None


@pytest.mark.django_db
def test_replay_refuses_bad_records_clearly_and_changes_nothing(monkeypatch):
    unknown = DeadLetter.objects.create(
        task_id="t1",
        task_name="no.such.task",
        queue="default",
        reason="permanent_error",
        exception_type="X",
    )
    malformed = DeadLetter.objects.create(
        task_id="t2",
        task_name=debug_task.name,
        queue="default",
        args={"not": "a list"},
        reason="permanent_error",
        exception_type="X",
    )
    masked = DeadLetter.objects.create(
        task_id="t3",
        task_name=debug_task.name,
        queue="default",
        arguments_masked=True,
        reason="permanent_error",
        exception_type="X",
    )
    with pytest.raises(deadletters.ReplayError, match=r"unknown task 'no\.such\.task'"):
        deadletters.replay(unknown)
    with pytest.raises(deadletters.ReplayError, match="stored arguments are malformed"):
        deadletters.replay(malformed)
    with pytest.raises(deadletters.ReplayError, match="secrets that were masked"):
        deadletters.replay(masked)

    # The broker is down: a clear error, the record stays unreplayed.
    down = "redis://127.0.0.1:1/0"
    monkeypatch.setenv("CELERY_BROKER_URL", down)
    offline = Celery("offline", broker=down, set_as_current=False)
    offline.conf.broker_connection_timeout = 0.5
    offline.tasks.register(debug_task)  # the name must be known to this app
    good = DeadLetter.objects.create(
        task_id="t4",
        task_name=debug_task.name,
        queue="default",
        args=["x"],
        reason="permanent_error",
        exception_type="X",
    )
    with pytest.raises(deadletters.ReplayError, match="broker did not accept the message"):
        deadletters.replay(good, app=offline)
    good.refresh_from_db()
    assert good.replayed_at is None and good.replay_count == 0
    assert DeadLetter.objects.filter(replayed_at__isnull=False).count() == 0


@pytest.mark.django_db(transaction=True)
def test_dead_letter_admin_lists_filters_replays_and_deletes(
    client, django_user_model, start_worker
):
    start_worker(["default"])
    failed = [fails_permanently.delay(f"case-{n}") for n in range(3)]
    wait_for(lambda: DeadLetter.objects.count() == 3)
    DeadLetter.objects.filter(task_id=failed[2].id).update(queue="email")

    staff = django_user_model.objects.create_user(
        "operator", password="pw-12345-long", is_staff=True
    )
    client.force_login(staff)
    url = "/admin/taskcore/deadletter/"
    assert client.get(url).status_code == 403  # no permission yet

    staff.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    page = client.get(url)
    assert page.status_code == 200
    assert page.content.count(b"taskcore.testing.fails_permanently") >= 3
    assert b"Replay selected" not in page.content  # replay needs its own permission
    filtered = client.get(url, {"queue": "email"})
    assert filtered.context["cl"].result_count == 1

    letter = DeadLetter.objects.get(task_id=failed[0].id)
    post = {"action": "replay_selected", "_selected_action": [letter.pk]}
    client.post(url, post)
    letter.refresh_from_db()
    assert letter.replayed_at is None  # refused without the permission

    staff.user_permissions.add(Permission.objects.get(codename="replay_deadletter"))
    response = client.post(url, post, follow=True)
    assert b"Replayed 1 task(s)." in response.content
    letter.refresh_from_db()
    assert letter.replayed_task_id
    # The replayed task fails again (a permanent error): a new dead letter, same args.
    wait_for(lambda: DeadLetter.objects.filter(task_id=letter.replayed_task_id).exists())

    staff.user_permissions.add(Permission.objects.get(codename="delete_deadletter"))
    client.post(url, {"action": "delete_selected", "_selected_action": [letter.pk], "post": "yes"})
    assert not DeadLetter.objects.filter(pk=letter.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_dead_letters_command_lists_replays_and_purges(start_worker, capsys):
    from django.core.management.base import CommandError

    start_worker(["default"])
    result = fails_permanently.delay("from the terminal")
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first())

    call_command("dead_letters", "list")
    assert "from the terminal" in capsys.readouterr().out
    with pytest.raises(CommandError, match="needs --id N"):
        call_command("dead_letters", "replay")
    with pytest.raises(CommandError, match=r"no dead letter with id \[999999\]"):
        call_command("dead_letters", "replay", "--id", "999999")
    call_command("dead_letters", "replay", "--id", str(letter.pk))
    assert "1 replayed, 0 failed" in capsys.readouterr().out
    call_command("dead_letters", "purge", "--all", "--task", fails_permanently.name)
    assert "purged" in capsys.readouterr().out
    wait_for(lambda: True)


# --- outbox -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_outbox_sends_only_after_commit(start_worker):
    start_worker(["default"])
    try:
        with transaction.atomic():
            rolled_back = outbox.send_after_commit(debug_task, ["never"])
            raise RuntimeError("the caller's transaction fails")
    except RuntimeError:
        pass
    assert not OutboxMessage.objects.filter(pk=rolled_back.pk).exists()

    with transaction.atomic():
        message = outbox.send_after_commit(debug_task, ["after commit"])
        assert debug_task.AsyncResult(str(message.pk)).state == "PENDING"
    assert debug_task.AsyncResult(str(message.pk)).get(timeout=20)["message"] == "after commit"
    assert outbox.backlog() == 0  # published, held by its publisher until the relay marks it
    # The publish marked it in Redis with the message; the relay copies the mark into
    # the row instead of publishing the row again.
    assert outbox.relay()["published"] == 0
    message.refresh_from_db()
    assert message.published_at is not None and message.attempts == 1
    assert outbox.relay()["published"] == 0 and outbox.backlog() == 0


@pytest.mark.django_db(transaction=True)
def test_outbox_row_marked_published_by_redis_is_never_sent_twice_unless_redis_lost_it():
    """No worker runs: the messages stay in Redis where the test can count them."""
    from taskcore.redis_clients import broker_redis
    from taskcore.reliable_redis import PUBLISHED_MARKS_KEY

    client = broker_redis()
    with transaction.atomic():
        kept = outbox.send_after_commit(debug_task, ["kept"])
    assert client.zscore(PUBLISHED_MARKS_KEY, str(kept.pk)) is not None
    queued = client.llen("default")
    assert queued == 1
    # Its publisher's lease ran out (say it died) before any relay ran: the relay
    # finds the mark and records the row as published instead of sending it again.
    OutboxMessage.objects.filter(pk=kept.pk).update(claimed_until=None)
    assert outbox.relay() == {"published": 0, "failed": 0, "skipped": 0}
    kept.refresh_from_db()
    assert kept.published_at is not None and kept.attempts == 1
    assert client.llen("default") == 1 and client.zcard(PUBLISHED_MARKS_KEY) == 0
    client.zadd(PUBLISHED_MARKS_KEY, {"not-a-row-id": 1.0})  # dropped, nothing fails
    assert outbox.relay()["published"] == 0 and client.zcard(PUBLISHED_MARKS_KEY) == 0

    # Redis lost the message and its mark together (a restart without persistence):
    # the row waits for the relay once its lease is over, and is sent again.
    with transaction.atomic():
        lost = outbox.send_after_commit(debug_task, ["lost"])
    client.delete("default", PUBLISHED_MARKS_KEY)
    assert outbox.backlog() == 0  # still its publisher's for the lease
    OutboxMessage.objects.filter(pk=lost.pk).update(claimed_until=None)
    assert outbox.backlog() == 1
    assert outbox.relay()["published"] == 1
    lost.refresh_from_db()
    assert lost.published_at is not None and lost.attempts == 1
    assert client.llen("default") == 1 and outbox.backlog() == 0


def run_application_code(code: str, env: dict[str, str]) -> str:
    """Run code as the application would: a separate process with its own settings."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_outbox_keeps_messages_while_the_broker_is_down_and_relays_them_once(
    start_worker, private_redis, worker_database_url, monkeypatch
):
    server = private_redis("--appendonly", "yes")
    env = {
        "CELERY_BROKER_URL": server.url,
        "CELERY_RESULT_BACKEND": server.url,
        "DATABASE_URL": worker_database_url,
    }
    server.stop()

    output = run_application_code(
        "from django.db import transaction\n"
        "from taskcore import outbox\n"
        "from taskcore.tasks import debug_task\n"
        "with transaction.atomic():\n"
        "    for n in range(5): outbox.send_after_commit(debug_task, [f'n{n}'])\n",
        env,
    )
    # The first publish failed; the others were left to the relay at once.
    assert output.count("broker unreachable, the message waits for the relay") == 1, output
    assert outbox.backlog() == 5
    assert "Error" in OutboxMessage.objects.order_by("created_at").first().last_error, output

    server.restart()
    relayed = run_application_code("from taskcore import outbox; print(outbox.relay())", env)
    assert "'published': 5" in relayed
    assert outbox.backlog() == 0
    again = run_application_code("from taskcore import outbox; print(outbox.relay())", env)
    assert "'published': 0" in again  # exactly once per row

    monkeypatch.setenv("CELERY_BROKER_URL", server.url)  # Celery's variables win over arguments
    monkeypatch.setenv("CELERY_RESULT_BACKEND", server.url)
    client = Celery("outbox-check", broker=server.url, backend=server.url, set_as_current=False)
    start_worker(["default"], env=env, client_app=client)
    for message in OutboxMessage.objects.all():
        assert client.AsyncResult(str(message.pk)).get(timeout=20)["message"].startswith("n")


# --- idempotency ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_effect_is_claimed_once_and_a_failed_effect_releases_its_claim():
    assert claim_effect("invoice", 42) is True
    assert claim_effect("invoice", 42) is False
    assert claim_effect("invoice", 43) is True

    with pytest.raises(RuntimeError), effect_once("payout", "p1") as first:
        assert first
        raise RuntimeError("the effect failed")
    assert not effect_done("payout", "p1")  # rolled back with the effect
    with effect_once("payout", "p1") as first:
        assert first
    assert effect_done("payout", "p1")
