"""Bulk fan-out: every task published by publish_many runs, exactly as delay() would send it."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from django.contrib.auth import get_user_model

from taskcore.fanout import publish_many
from taskcore.tasks import debug_task


@pytest.mark.django_db(transaction=True)
def test_every_fanned_out_task_runs_on_a_real_worker(start_worker):
    start_worker(["default"], concurrency=2)
    messages = [f"batch-{i}" for i in range(200)]

    results = publish_many(debug_task, [(message,) for message in messages])

    assert len(results) == len(messages)
    assert len({result.id for result in results}) == len(messages)
    done = [result.get(timeout=60) for result in results]
    assert [item["message"] for item in done] == messages
    assert {item["queue"] for item in done} == {"default"}
    assert [item["task_id"] for item in done] == [result.id for result in results]


@pytest.mark.django_db(transaction=True)
def test_shared_kwargs_and_options_reach_every_task(start_worker):
    start_worker(["maintenance"], concurrency=1)

    results = publish_many(
        debug_task, [("a",), ("b",), ("c",)], kwargs={"sleep": 0}, queue="maintenance"
    )

    done = [result.get(timeout=30) for result in results]
    assert [item["message"] for item in done] == ["a", "b", "c"]
    assert {item["queue"] for item in done} == {"maintenance"}


def test_nothing_to_publish_sends_nothing():
    assert publish_many(debug_task, []) == []


@pytest.mark.django_db
def test_model_instances_are_still_refused():
    user = get_user_model()(pk=7, username="ada")
    with pytest.raises(TypeError, match="not model instances"):
        publish_many(debug_task, [(user,)])


def test_options_publish_many_cannot_honour_are_refused():
    with pytest.raises(TypeError, match=r"does not take \['link'\]"):
        publish_many(debug_task, [("a",)], link=debug_task.s("b"))


@pytest.mark.django_db
def test_messages_carry_sent_at_and_task_sent_events_arrive_grouped():
    from admin_backend.celery import app

    received = []
    ready = threading.Event()

    def listen():
        with app.connection_for_read() as connection:

            def on_sent(event):
                received.append(event)
                if len(received) >= 30:
                    receiver.should_stop = True

            receiver = app.events.Receiver(connection, handlers={"task-sent": on_sent})
            ready.set()
            try:
                receiver.capture(timeout=20, wakeup=False)
            except TimeoutError:
                pass  # asserted below: what arrived

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's subscription is in place
    results = publish_many(debug_task, [(f"m{i}",) for i in range(30)])
    listener.join(25)

    assert sorted(event["uuid"] for event in received) == sorted(r.id for r in results)
    assert {event["queue"] for event in received} == {"default"}
    queued = redis.Redis.from_url(app.conf.broker_url).lrange("default", 0, -1)
    headers = [json.loads(raw)["headers"] for raw in queued]
    assert {h["id"] for h in headers} == {r.id for r in results}
    assert all(isinstance(h["sent_at"], float) for h in headers)
