"""HTTP health endpoints and /metrics through Django's test client, against the run's Redis.

/metrics as Prometheus reads it: through ``promtool check metrics`` (Debian's
prometheus package; TEST_PROMTOOL=always in CI makes a missing one a failure).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import jsonschema
import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from admin_backend.queues import QUEUE_NAMES
from taskcore import views
from taskcore.health import metrics as task_metrics
from taskcore.health.redis_queues import RedisLayout
from taskcore.health.schema import REPORT_SCHEMA
from taskcore.testing.redis_server import free_port
from taskcore.testing.tasks import fails_permanently, fails_transiently

TOKEN = "metrics-test-token"
BEARER = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def fresh_reports(settings, test_redis):
    settings.FLOWER_URL = "off"
    settings.HEALTH_METRICS_TOKEN = TOKEN
    settings.HEALTH_HTTP_CACHE_SECONDS = 0
    settings.HEALTH_BROADCAST_TIMEOUT = 5  # a loaded machine answers slowly
    views.clear_cache()
    client = test_redis.client()
    keys = [key for name in QUEUE_NAMES for _, key in RedisLayout().keys(name)]
    client.delete(*keys)
    yield
    client.delete(*keys)
    views.clear_cache()


@pytest.fixture
def broker_down(monkeypatch):
    """Point this process's Celery app at a Redis that is not there (with a password).

    Celery reads CELERY_BROKER_URL from the environment before its configuration.
    """
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://:http-s3cret@127.0.0.1:{free_port()}/0")


def metrics_of(body: str) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_liveness_answers_without_touching_any_dependency(client, broker_down):
    response = client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True)
def test_readiness_checks_database_cache_and_broker(client):
    response = client.get("/health/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"broker", "database", "cache"}
    for check in body["checks"].values():
        assert set(check) == {"status", "latency_ms"}  # nothing else for anonymous callers


@pytest.mark.django_db(transaction=True)
def test_readiness_is_503_when_the_broker_is_down_and_shows_no_secret(client, broker_down):
    response = client.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "critical"
    assert b"http-s3cret" not in response.content
    assert b"127.0.0.1" not in response.content  # no hosts for anonymous callers


@pytest.mark.django_db(transaction=True)
def test_full_health_is_503_on_critical_and_details_need_the_permission(
    client, app, django_user_model
):
    app.send_task("media.tasks.inspect_image", args=[0])  # waits: no worker in this test

    assert client.get("/health/?detail=1").status_code == 403
    anonymous = client.get("/health/")

    assert anonymous.status_code == 503
    body = anonymous.json()
    assert body["status"] == "critical"
    assert body["checks"]["queue.media"] == {
        "status": "critical",
        "latency_ms": body["checks"]["queue.media"]["latency_ms"],
    }
    assert "detail" not in json.dumps(body)

    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(staff)
    refused = client.get("/health/?detail=1")
    assert refused.status_code == 403  # staff, but not allowed to see the dashboard
    assert b"no worker consumes media" not in refused.content
    assert client.get("/health/").status_code == 503  # the terse report stays open

    staff.user_permissions.add(Permission.objects.get(codename="view_operations_dashboard"))
    staff = django_user_model.objects.get(pk=staff.pk)  # permissions are cached per object
    client.force_login(staff)
    detailed = client.get("/health/?detail=1")

    assert detailed.status_code == 503
    jsonschema.validate(detailed.json(), REPORT_SCHEMA)
    media = next(c for c in detailed.json()["checks"] if c["name"] == "queue.media")
    assert "no worker consumes media" in media["detail"]

    with_token = Client().get("/health/?detail=1", **BEARER)
    assert with_token.status_code == 503
    assert "no worker consumes media" in with_token.content.decode()


@pytest.mark.django_db(transaction=True)
def test_metrics_expose_queue_depth_age_and_consumers(client, app, start_worker):
    worker = start_worker(["default"])
    app.send_task("media.tasks.inspect_image", args=[0])
    app.send_task("media.tasks.inspect_image", args=[1], priority=9)

    response = client.get("/metrics", **BEARER)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = metrics_of(response.content.decode())
    assert samples[("admin_backend_queue_depth", (("queue", "media"),))] == 2
    assert samples[("admin_backend_queue_oldest_message_age_seconds", (("queue", "media"),))] > 0
    assert samples[("admin_backend_queue_consumers", (("queue", "media"),))] == 0
    assert samples[("admin_backend_queue_consumers", (("queue", "default"),))] == 1
    assert samples[("admin_backend_queue_depth", (("queue", "default"),))] == 0
    assert samples[("admin_backend_workers", ())] == 1
    assert samples[("admin_backend_dead_letters_backlog", ())] == 0
    assert samples[("admin_backend_outbox_backlog", ())] == 0
    assert samples[("admin_backend_health_status", (("check", "queue.media"),))] == 2
    assert ("admin_backend_redis_used_memory_bytes", ()) in samples
    assert worker.hostname.encode() not in response.content  # names of hosts stay out


@pytest.mark.django_db(transaction=True)
def test_metrics_need_the_token(client, settings, django_user_model):
    assert not settings.DEBUG
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wröng").status_code == 403
    # A browser session is not a token (the probe middleware serves /metrics before sessions).
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", **BEARER).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_metrics_are_closed_without_a_token_unless_debug(client, settings):
    settings.HEALTH_METRICS_TOKEN = ""

    settings.DEBUG = False
    refused = client.get("/metrics")
    assert refused.status_code == 403
    assert b"HEALTH_METRICS_TOKEN" in refused.content  # says what to set
    settings.DEBUG = True
    assert client.get("/metrics").status_code == 200  # development: open


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("TEST_PROMTOOL") == "always":
        pytest.fail("promtool missing: apt-get install -y --no-install-recommends prometheus")
    return found


@pytest.mark.django_db(transaction=True)
def test_task_counters_and_runtimes_per_task_and_queue(client, app, start_worker, test_redis):
    """Real workers run, retry and fail tasks; /metrics counts them per task and queue."""
    state = task_metrics.task_metrics_redis()
    state.delete(task_metrics.TASKS_KEY)
    start_worker(["default"], concurrency=2)
    fails_transiently.delay("metrics-retried", 1).get(timeout=30)  # one retry, then success
    fails_permanently.delay("metrics-dead")
    fails_permanently.delay("metrics-dead-2")
    expected = {
        ("admin_backend_tasks_succeeded_total", "taskcore.testing.fails_transiently"): 1,
        ("admin_backend_tasks_retried_total", "taskcore.testing.fails_transiently"): 1,
        ("admin_backend_tasks_failed_total", "taskcore.testing.fails_permanently"): 2,
        ("admin_backend_tasks_dead_lettered_total", "taskcore.testing.fails_permanently"): 2,
    }

    def counted():
        body = client.get("/metrics", **BEARER).content.decode()
        found = metrics_of(body)
        seen = {
            (name, dict(labels).get("task")): value
            for (name, labels), value in found.items()
            if dict(labels).get("queue") == "default"
        }
        return (body, found) if all(seen.get(k) == v for k, v in expected.items()) else None

    from taskcore.testing.waiting import wait_for

    body, found = wait_for(counted, timeout=30, interval=0.5)
    families = {family.name: family.type for family in text_string_to_metric_families(body)}
    assert families["admin_backend_tasks_succeeded"] == "counter"
    assert families["admin_backend_tasks_dead_lettered"] == "counter"
    assert families["admin_backend_task_runtime_seconds"] == "histogram"
    assert families["admin_backend_dead_letters_backlog"] == "gauge"
    labels = (("queue", "default"), ("task", "taskcore.testing.fails_transiently"))
    # Two runs (the retried one and the success) in the histogram.
    assert found[("admin_backend_task_runtime_seconds_count", labels)] == 2
    assert found[("admin_backend_task_runtime_seconds_bucket", (("le", "+Inf"), *labels))] == 2
    assert found[("admin_backend_task_metrics_up", ())] == 1
    # The pool processes' peak memory beside nothing: default has no recycling limit.
    assert found[("admin_backend_worker_pool_memory_max_bytes", (("queue", "default"),))] > 0
    assert ("admin_backend_worker_pool_memory_limit_bytes", (("queue", "reports"),)) in found

    checker = promtool()
    if checker is None:
        pytest.skip("promtool missing: apt-get install -y --no-install-recommends prometheus")
    checked = subprocess.run(
        [checker, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint complaint either


@pytest.mark.django_db(transaction=True)
def test_probe_middleware_answers_probes_addressed_by_ip(settings):
    """An orchestrator probes http://<pod ip>:8000/health/ready: not in ALLOWED_HOSTS."""
    probe = {"HTTP_HOST": "10.1.2.3:8000"}
    middleware = "taskcore.health.middleware.HealthProbeMiddleware"
    assert middleware in settings.MIDDLEWARE  # installed by the project's settings

    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != middleware]
    assert Client().get("/health/live", **probe).status_code == 400  # DisallowedHost without it

    settings.MIDDLEWARE = [middleware, *settings.MIDDLEWARE]
    client = Client()  # a client builds its middleware chain once

    assert client.get("/health/live", **probe).status_code == 200
    assert client.get("/health/ready", **probe).status_code == 200
    assert client.get("/health/", **probe).status_code == 400  # the full report is not a probe
