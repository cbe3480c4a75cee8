"""Poison cannot kill: bad arguments fail at send time, bad messages become one record each.

The send-time checks run without workers. R12 (marked ``chaos``) runs real workers
in the queue table's two pool shapes, pushes raw invalid messages onto every queue
and sends wrong arguments past ``.delay()`` (``send_task``, as another producer
would): every worker stays up and answers, nothing is retried, and each bad
message is exactly one dead letter.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kombu.utils.json import dumps

from taskcore import deadletters
from taskcore.arguments import InvalidTaskArguments, MessageTooLarge
from taskcore.models import DeadLetter
from taskcore.outbox import send_after_commit
from taskcore.queues import queue_table
from taskcore.redis_clients import broker_redis
from taskcore.reliable_redis import bell_key
from taskcore.tasks import debug_task
from taskcore.testing.waiting import wait_for

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT_APPS = ("taskcore.", "notifications.", "media.", "reports.", "maintenance.", "dashboard.")
FIVE_MB = "x" * (5 * 1024 * 1024)


def public_tasks(app) -> list:
    app.loader.import_default_modules()
    return [
        app.tasks[name]
        for name in sorted(app.tasks)
        if name.startswith(PROJECT_APPS) and not name.startswith("taskcore.testing")
    ]


def _valid_sample(hint):
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return None if type(None) in args else _valid_sample(args[0])
    if origin in (list, tuple):
        return [_valid_sample(args[0])] if args else []
    return {int: 1, str: "a", float: 1.0, bool: True, dict: {}}.get(origin or hint)


def wrong_value_arguments(task) -> tuple[str, dict] | None:
    """(argument, kwargs): valid arguments but one of the wrong type; None if all take any."""
    import inspect
    import typing

    hints = typing.get_type_hints(task.run)
    names = list(inspect.signature(task.run).parameters)
    for name in names:
        hint = hints.get(name, typing.Any)
        if hint is not typing.Any and dict not in (hint, typing.get_origin(hint)):
            kwargs = {other: _valid_sample(hints.get(other)) for other in names}
            kwargs[name] = {"not": "of this type"}
            return name, kwargs
    return None


# --- at send time: no worker needed ---------------------------------------------------


def test_public_tasks_refuse_unknown_arguments_at_send_time(app):
    client = broker_redis(app)
    for task in public_tasks(app):
        with pytest.raises(InvalidTaskArguments, match="unexpected keyword argument 'nope'"):
            task.delay(nope=1)
    assert all(client.llen(queue) == 0 for queue in queue_table().names)


def test_public_tasks_refuse_wrong_types_at_send_time_naming_the_argument(app):
    checked = 0
    for task in public_tasks(app):
        wrong = wrong_value_arguments(task)
        if wrong is None:
            continue
        name, kwargs = wrong
        with pytest.raises(InvalidTaskArguments, match=rf"{task.name}\(.*\): {name}: "):
            task.delay(**kwargs)
        checked += 1
    assert checked >= 8  # most tasks take typed arguments


def test_arguments_are_sent_as_validated(app):
    debug_task.delay("five", sleep="0.5")
    message = json.loads(broker_redis(app).rpop("default"))
    args, kwargs, _options = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == (["five", 0.5], {})  # "0.5" is a valid float: sent as one


def test_positional_arguments_of_their_exact_types_are_accepted_as_they_are(app):
    """The fast path (no pydantic instance) accepts only what pydantic would return unchanged."""
    from taskcore.arguments import checked

    # (Annotations are strings here: they must resolve in the module's globals.)
    @app.task(name="tests.poison.typed", bind=True)
    def typed(self, upload_id: int, name: str, ratio: float, extra, flag: bool = False):
        return None

    marker = object()
    args, kwargs = checked(typed, [7, "a", 0.5, marker, True], {})
    assert args == (7, "a", 0.5, marker, True) and args[3] is marker and kwargs == {}
    # Not of the exact type: pydantic converts ("5" -> 5, 1 -> 1.0) or refuses.
    assert checked(typed, ["5", "a", 1, None], {}) == ((5, "a", 1.0, None), {})
    assert type(checked(typed, [1, "a", 1, None], {})[0][2]) is float
    with pytest.raises(InvalidTaskArguments, match=r"upload_id: Input should be a valid integer"):
        checked(typed, ["five", "a", 0.5, None], {})
    # Counts and keywords are still checked against the signature.
    with pytest.raises(InvalidTaskArguments, match="missing a required argument: 'extra'"):
        checked(typed, [1, "a", 0.5], {})
    with pytest.raises(InvalidTaskArguments, match="too many positional arguments"):
        checked(typed, [1, "a", 0.5, None, True, "surplus"], {})
    assert checked(typed, [1, "a"], {"ratio": "0.25", "extra": 3}) == ((1, "a", 0.25, 3), {})


def test_a_five_megabyte_argument_fails_at_send_time_with_the_limit(app):
    with pytest.raises(MessageTooLarge, match=r"over queue 'default''s limit of 1,048,576"):
        debug_task.delay(FIVE_MB)
    for task in public_tasks(app):
        with pytest.raises((InvalidTaskArguments, MessageTooLarge)):
            task.delay(FIVE_MB)


@pytest.mark.django_db(transaction=True)
def test_send_after_commit_checks_the_arguments_before_writing_the_row():
    from taskcore.models import OutboxMessage

    with pytest.raises(InvalidTaskArguments, match="sleep: Input should be a valid number"):
        send_after_commit(debug_task, kwargs={"sleep": "long"})
    with pytest.raises(InvalidTaskArguments, match=r"unknown task 'no\.such\.task'"):
        send_after_commit("no.such.task")
    assert OutboxMessage.objects.count() == 0


# --- raw messages a producer could leave in a queue ----------------------------------


def template_message(app, queue: str) -> dict:
    """A real message of ``queue`` as the broker holds it (taken back before any worker runs)."""
    app.send_task("taskcore.tasks.debug_task", args=["template"], queue=queue)
    return json.loads(broker_redis(app).rpop(queue))


def _fresh(envelope: dict) -> dict:
    envelope = json.loads(json.dumps(envelope))
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    if isinstance(envelope.get("headers"), dict):
        envelope["headers"]["id"] = str(uuid.uuid4())
    return envelope


def _body(envelope: dict, raw: bytes) -> dict:
    envelope["body"] = base64.b64encode(raw).decode()
    return envelope


def bad_messages(template: dict, queue: str) -> dict[str, bytes]:
    """Every kind of invalid entry, as the bytes pushed onto the queue."""

    def variant(change) -> bytes:
        envelope = _fresh(template)
        change(envelope)
        return dumps(envelope).encode()

    return {
        "not JSON": f"not json at all ({queue})".encode(),
        "JSON, not an object": json.dumps([1, 2, queue]).encode(),
        "no headers": variant(lambda e: e.pop("headers")),
        "headers not an object": variant(lambda e: e.update(headers=[1, 2])),
        "task name not a string": variant(lambda e: e["headers"].update(task=5)),
        "unknown task": variant(lambda e: e["headers"].update(task="no.such.task")),
        "body not base64": variant(lambda e: e.update(body="%%% not base64 %%%")),
        "body not JSON": variant(lambda e: _body(e, b"{not json")),
        "body of the wrong shape": variant(lambda e: _body(e, b'{"x": 1}')),
        "args not a list": variant(lambda e: _body(e, b"[5, {}, {}]")),
        "bad ETA": variant(lambda e: e["headers"].update(eta="not a date")),
        "content type not allowed": variant(lambda e: e.update({"content-type": "text/x-nope"})),
        "over the size limit": variant(lambda e: _body(e, dumps([[FIVE_MB], {}, {}]).encode())),
    }


def push(client, queue: str, raw: bytes) -> None:
    client.lpush(queue, raw)
    client.lpush(bell_key(queue), 1)


def refused_letters() -> int:
    deadletters.store_parked_dead_letters()  # what the transport set aside
    return DeadLetter.objects.filter(reason=DeadLetter.Reason.REFUSED).count()


@pytest.mark.chaos
@pytest.mark.django_db(transaction=True)
def test_r12_poison_cannot_kill(app, start_worker):
    queues = queue_table().names
    templates = {queue: template_message(app, queue) for queue in queues}
    workers = [
        start_worker([q for q in queues if q != "email"], pool="prefork", concurrency=2),
        start_worker(["email"], pool="threads", concurrency=4),
    ]
    client = broker_redis(app)
    pushed = 0
    for queue in queues:
        for raw in bad_messages(templates[queue], queue).values():
            push(client, queue, raw)
            pushed += 1
    # Wrong arguments past .delay(): another producer's send_task.
    bypassed = [
        app.send_task("taskcore.tasks.debug_task", kwargs={"sleep": "long"}),
        app.send_task("media.tasks.process_upload", args=["not an id"]),
        app.send_task("notifications.tasks.send_delivery_batch", kwargs={"ids": [1]}),
        app.send_task("reports.tasks.run_export", args=[1, 2, 3]),
        app.send_task("maintenance.tasks.run_cleanup", kwargs={"name": ["a", "list"]}),
    ]

    wait_for(lambda: refused_letters() >= pushed, 90, 0.5, f"{pushed} refused dead letters")
    for result in bypassed:
        result.get(timeout=30, propagate=False)
        assert type(result.result).__name__ == "InvalidTaskArguments", result.result
    time.sleep(2)  # anything more (a retry, a duplicate) would show by now

    letters = DeadLetter.objects.all()
    refused = letters.filter(reason=DeadLetter.Reason.REFUSED)
    assert refused.count() == pushed
    for queue in queues:
        assert refused.filter(queue=queue).count() == len(bad_messages(templates[queue], queue))
        assert client.llen(queue) == 0  # nothing went back to kill the next worker
    assert set(refused.values_list("exception_type", flat=True)) == {"RefusedMessage"}
    over = refused.filter(exception_message__contains="over this queue's limit").count()
    assert over == len(queues)
    wrong = letters.filter(task_id__in=[r.id for r in bypassed])
    assert wrong.count() == len(bypassed)
    assert set(wrong.values_list("reason", "attempts")) == {("permanent_error", 1)}
    assert all(w.process.poll() is None for w in workers)
    answered = app.control.ping(destination=[w.hostname for w in workers], timeout=5)
    assert len(answered) == len(workers)
    assert debug_task.delay("still working").get(timeout=20)["message"] == "still working"
    for worker in workers:
        log = worker.output()
        assert "Unrecoverable error" not in log
        assert "Retry in" not in log
        assert max(len(line) for line in log.splitlines()) < 20_000  # no 5 MB log line


# --- replay from the command line: every queue's tasks ------------------------------


@pytest.mark.django_db(transaction=True)
def test_dead_letters_replay_from_the_command_line_replays_every_queues_tasks(
    app, worker_database_url
):
    letters = {
        "default": ("taskcore.tasks.debug_task", ["replayed"], {}),
        "email": ("notifications.tasks.resume_stalled_deliveries", [], {}),
        "media": ("media.tasks.fail_stale_uploads", [], {}),
        "reports": ("reports.tasks.export_model_csv", ["auth.user"], {}),
        "maintenance": ("maintenance.tasks.run_cleanup", ["expired_exports"], {}),
    }
    ids = [
        DeadLetter.objects.create(
            task_id=str(uuid.uuid4()),
            task_name=name,
            queue=queue,
            args=args,
            kwargs=kwargs,
            reason=DeadLetter.Reason.PERMANENT_ERROR,
            exception_type="RuntimeError",
        ).pk
        for queue, (name, args, kwargs) in letters.items()
    ]
    command = [sys.executable, "manage.py", "dead_letters", "replay", "--all", "--not-replayed"]
    env = {**os.environ, "DATABASE_URL": worker_database_url}
    done = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(ids)} replayed, 0 failed" in done.stdout
    client = broker_redis(app)
    for queue, (name, _args, _kwargs) in letters.items():
        (message,) = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        assert message["headers"]["task"] == name


@pytest.mark.django_db
def test_the_admin_and_the_dashboard_store_parked_and_refused_letters_before_listing(
    app, client, django_user_model
):
    from taskcore.reliable_redis import refused_key

    record = {"refused_reason": "not a kombu message: not JSON", "message": "garbage"}
    broker_redis(app).lpush(refused_key("media"), json.dumps(record))
    deadletters.park_dead_letter("parked-1", {**_parked_values(), "task_name": "media.tasks.x"})
    root = django_user_model.objects.create_superuser("root", password="pw-irrelevant-123")
    client.force_login(root)

    page = client.get("/admin/taskcore/deadletter/").content.decode()
    assert "media.tasks.x" in page and "not a kombu message: not JSON" in page
    assert DeadLetter.objects.count() == 2
    broker_redis(app).lpush(refused_key("email"), json.dumps(record))
    from dashboard.services import dead_letter_groups

    dead_letter_groups()
    assert DeadLetter.objects.filter(queue="email", reason="refused").count() == 1


def _parked_values() -> dict:
    return {
        "task_name": "",
        "queue": "media",
        "args": [],
        "kwargs": {},
        "arguments_masked": False,
        "reason": "permanent_error",
        "exception_type": "ValueError",
        "exception_message": "parked while the database was away",
        "traceback": "",
        "attempts": 1,
        "hostname": "",
    }
