"""The apps' real work on each broker setup docs/scaling.md offers.

Setups: Redis (a private redis-server configured as deploy/redis.conf has it:
AOF on, noeviction, so ``celery_health`` has nothing to warn about); Redis
behind Sentinel (a primary, a replica and three Sentinels, passwords on all);
RabbitMQ (a virtual host of the run's own) with the apps' Redis state and the
results on ``REDIS_URL`` (the run's Redis).

Per setup: one worker consuming the five queues, beat (its heartbeat is what
``celery_health`` reads), a real SMTP server. The web side runs as a separate
process configured for the setup the way operators configure one, through the
environment: this file run as a script (``drive``) sends a campaign, uploads an
image and requests a CSV export through the apps' services (each enqueued after
its commit), waits for them and fetches the operations dashboard's JSON. The
test asserts what a user sees: the mails the SMTP server received, the
renditions' pixel sizes, the export's rows, the dashboard's JSON, and
``manage.py celery_health`` exiting 0.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rabbitmq_vhost import RabbitVhost, fail_unless_reachable
from sentinel_cluster import SentinelCluster

from taskcore.testing.workers import BeatProcess

PROJECT_DIR = Path(__file__).resolve().parent.parent
QUEUES = ("default", "email", "media", "reports", "maintenance")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQ_MANAGEMENT_URL = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
AUDIENCE = ["ada@example.org", "Grace Hopper <grace@example.org>", "linus@example.org"]
WAIT = 90  # generous upper bounds, never timings: the machines are shared
# As `python tests/test_broker_setups.py` would: the tests' folder importable too.
RUN_AS_SCRIPT = (
    "import os, runpy, sys; sys.argv = sys.argv[1:]; "
    "sys.path.insert(1, os.path.dirname(sys.argv[0])); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


# --- setups -------------------------------------------------------------------
@pytest.fixture
def redis_setup(private_redis):
    server = private_redis("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    url = server.url
    return {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "REDIS_URL": url}


@pytest.fixture
def sentinel_setup(test_work_dir, request):
    cluster = SentinelCluster(test_work_dir / f"sentinel-{request.node.name}")
    yield cluster.settings_env()
    cluster.stop()


@pytest.fixture
def rabbitmq_setup(test_redis):
    if os.environ.get("RUN_RABBITMQ_TESTS") == "0":
        pytest.skip("RUN_RABBITMQ_TESTS=0: RabbitMQ tests skipped on purpose")
    fail_unless_reachable(RABBITMQ_URL)
    vhost = RabbitVhost(RABBITMQ_URL, RABBITMQ_MANAGEMENT_URL)
    # Results and the apps' state on REDIS_URL (settings' default beside RabbitMQ).
    # The machines' RabbitMQ keeps its default consumer_timeout (1800 s), which is
    # not above the queue table's longest time limit: celery_health rightly warns
    # (config). Time limits capped below it, as the other RabbitMQ tests do.
    yield {
        "CELERY_BROKER_URL": vhost.url,
        "CELERY_RESULT_BACKEND": test_redis.url,
        "REDIS_URL": test_redis.url,
        "CELERY_TIME_LIMIT_CAP": "900",
    }
    vhost.drop()


SETUPS = [
    pytest.param("redis_setup", id="redis"),
    pytest.param("sentinel_setup", id="sentinel"),
    pytest.param("rabbitmq_setup", id="rabbitmq"),
]


# --- the test -----------------------------------------------------------------
@pytest.mark.parametrize("setup_name", SETUPS)
@pytest.mark.django_db(transaction=True)
def test_the_apps_work_on_the_broker_setup(
    setup_name, request, start_worker, smtp_server, worker_database_url, test_work_dir, settings
):
    from notifications.models import Campaign, Delivery
    from reports.models import SampleRecord

    started = time.monotonic()
    env = {
        **request.getfixturevalue(setup_name),
        **smtp_server.worker_env,
        "DATABASE_URL": worker_database_url,
        "FLOWER_URL": "off",
        "HEALTH_BROADCAST_TIMEOUT": "5",
        "BEAT_HEARTBEAT_INTERVAL": "1",
    }
    user = _operator()
    SampleRecord.objects.bulk_create(
        SampleRecord(name=f"record {n}", quantity=n, created_at=_created()) for n in range(25)
    )
    campaign = Campaign.objects.create(
        name="Volunteer news",
        subject="News for {{ name|default:email }}",
        text_template="Hello {{ name }},\nthe news.",
        html_template="<p>Hello <b>{{ name }}</b></p>",
        audience="\n".join(AUDIENCE),
    )

    worker = start_worker(list(QUEUES), env=env, wait=False, concurrency=2, name="setup")
    beat = BeatProcess(
        log_path=test_work_dir / "workers" / f"{request.node.name}-beat.out",
        run_dir=test_work_dir / f"beat-{request.node.name}",
        env=env,
    ).start()
    try:
        _wait_for_output(worker, " ready.")
        driven = _drive(env, campaign=campaign.pk, user=user.pk)
        health = _celery_health(env)
    finally:
        beat.stop()
    logs = f"worker log:\n{worker.output()[-6000:]}\nbeat log:\n{beat.output()[-3000:]}"
    assert driven.returncode == 0, f"{driven.stdout[-3000:]}{driven.stderr[-4000:]}\n{logs}"
    outcome = json.loads(driven.stdout.strip().splitlines()[-1])

    # A campaign batch delivered over SMTP: one message per recipient, its headers.
    assert outcome["campaign"] == Campaign.Status.DONE, (outcome, logs)
    received = {message["To"].addresses[0].addr_spec: message for message in smtp_server.messages}
    assert set(received) >= {"ada@example.org", "grace@example.org", "linus@example.org"}, logs
    assert str(received["grace@example.org"]["Subject"]) == "News for Grace Hopper"
    assert received["grace@example.org"]["List-Unsubscribe"]
    statuses = set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    assert statuses == {Delivery.Status.SENT}, logs

    # An image upload processed: renditions with the configured pixel sizes.
    _assert_renditions(outcome["upload"], settings, logs)

    # A CSV export finished: a header and one row per record.
    _assert_export(outcome["export"], logs)

    # The dashboard's JSON, served to an operator by the web process of this setup.
    assert outcome["dashboard_status"] == 200, outcome
    dashboard = outcome["dashboard"]
    assert [queue["name"] for queue in dashboard["queues"]] == list(QUEUES)
    assert dashboard["errors"] == {}, dashboard["errors"]
    assert worker.hostname in json.dumps(dashboard["workers"]), dashboard["workers"]

    # celery_health, as an operator runs it on this setup: everything ok.
    code, report, output = health
    failing = [c for c in report.get("checks", []) if c["status"] != "ok"]
    assert code == 0, f"{failing}\n{output[-3000:]}\n{logs}"
    print(f"\n{request.node.name}: {time.monotonic() - started:.1f}s", file=sys.__stdout__)


def test_the_state_redis_follows_the_broker_setup():
    """The state Redis: the broker's (REDIS_PASSWORD added behind Sentinel), else REDIS_URL."""
    setups = {
        "redis://10.0.0.5:6379/0": "redis://10.0.0.5:6379/0",
        "sentinel://10.0.0.1:26379/0;sentinel://10.0.0.2:26379/0": (
            "sentinel://:p%40ss@10.0.0.1:26379/0;sentinel://:p%40ss@10.0.0.2:26379/0"
        ),
        "amqp://guest:guest@10.0.0.9:5672//": "redis://10.0.0.7:6379/3",
    }
    script = (
        "import django; django.setup(); from taskcore.redis_clients import state_url; "
        "print(state_url())"
    )
    for broker, expected in setups.items():
        env = {
            **os.environ,
            "CELERY_BROKER_URL": broker,
            "REDIS_URL": "redis://10.0.0.7:6379/3",
            "REDIS_PASSWORD": "p@ss",
            "DJANGO_SETTINGS_MODULE": "admin_backend.settings",
        }
        env.pop("CELERY_RESULT_BACKEND", None)
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected, broker


def test_a_forked_child_builds_its_own_state_client():
    """Prefork children never share the sockets of the parent they were forked from."""
    import multiprocessing

    from taskcore.redis_clients import state_redis

    parent = state_redis()
    assert parent.ping() and state_redis() is parent  # one client per process
    parent_id = id(parent)

    def child(answers):
        client = state_redis()
        answers.put((id(client) != parent_id, client is state_redis(), client.ping()))

    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    process = context.Process(target=child, args=(answers,))
    process.start()
    process.join(30)
    assert answers.get(timeout=5) == (True, True, True)
    assert parent.ping()


# --- helpers of the test --------------------------------------------------------
def _created():
    import datetime as dt

    return dt.datetime(2024, 2, 29, 13, 45, tzinfo=dt.UTC)


def _operator():
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(
        "operator", email="operator@example.org", password="pw-operator", is_staff=True
    )
    user.user_permissions.add(
        Permission.objects.get(codename="view_operations_dashboard"),
        Permission.objects.get(codename="view_samplerecord", content_type__app_label="reports"),
    )
    return user


def _wait_for_output(worker, text: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.output():
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.output()}")
        assert time.monotonic() < deadline, f"{text!r} not in worker output:\n{worker.output()}"
        time.sleep(0.1)


def _drive(env: dict, **spec) -> subprocess.CompletedProcess:
    """Run this file as the setup's web process; it reports on its last line of output."""
    return subprocess.run(
        # -c: the project directory (the working directory) is importable, as for manage.py.
        [sys.executable, "-c", RUN_AS_SCRIPT, __file__, "drive", json.dumps(spec)],
        cwd=PROJECT_DIR,
        env={**os.environ, **env, "ALLOWED_HOSTS": "testserver,localhost"},
        capture_output=True,
        text=True,
        timeout=3 * WAIT,
    )


def _celery_health(env: dict) -> tuple[int, dict, str]:
    done = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--format", "json"],
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    return done.returncode, report, done.stdout + done.stderr


def _assert_renditions(upload_id: int, settings, logs: str) -> None:
    from PIL import Image

    from media.models import Upload

    upload = Upload.objects.get(pk=upload_id)
    assert upload.status == Upload.Status.READY, (upload.status, upload.reason, logs)
    assert (upload.width, upload.height) == (1600, 800)
    sizes = {}
    for rendition in upload.renditions.all():
        data = (Path(settings.MEDIA_ROOT) / rendition.file.name).read_bytes()
        sizes[rendition.name] = Image.open(io.BytesIO(data)).size
    assert sizes == {"thumbnail": (150, 75), "medium": (800, 400), "webp": (800, 400)}


def _assert_export(export_id: int, logs: str) -> None:
    import csv

    from reports import services
    from reports.models import ExportRequest

    export = ExportRequest.objects.get(pk=export_id)
    assert export.status == ExportRequest.Status.READY, (export.status, logs)
    with open(services.export_path(export), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["id", "name"]
    assert sorted(row[1] for row in rows[1:]) == sorted(f"record {n}" for n in range(25))


# --- the setup's web process (this file run as a script) -------------------------
def drive(spec: dict) -> dict:
    """Send the campaign, upload an image, request an export; wait; fetch the dashboard."""
    from django.contrib.auth.models import User
    from django.core.files.base import ContentFile
    from django.test import Client

    from media import services as media
    from media import testing as media_testing
    from media.models import Upload
    from notifications import services as notifications
    from notifications.models import Campaign
    from reports import services as reports
    from reports.models import ExportRequest
    from taskcore.testing.waiting import wait_for

    user = User.objects.get(pk=spec["user"])
    assert notifications.request_campaign_send(spec["campaign"])
    image = media_testing.encode(media_testing.halves((1600, 800)), "JPEG")
    upload = media.create_upload(ContentFile(image, name="photo.jpg"))
    export = reports.create_export(user=user, model_label="reports.SampleRecord")

    wait_for(
        lambda: Campaign.objects.get(pk=spec["campaign"]).status == Campaign.Status.DONE,
        WAIT,
        what="the campaign done",
    )
    done = (Upload.Status.READY, Upload.Status.FAILED)
    wait_for(lambda: Upload.objects.get(pk=upload.pk).status in done, WAIT, what="the upload")
    finished = (ExportRequest.Status.READY, ExportRequest.Status.FAILED)
    wait_for(
        lambda: ExportRequest.objects.get(pk=export.pk).status in finished,
        WAIT,
        what="the export",
    )

    client = Client()
    client.force_login(user)
    response = client.get("/admin/operations/data.json")
    return {
        "campaign": Campaign.objects.get(pk=spec["campaign"]).status,
        "upload": upload.pk,
        "export": export.pk,
        "dashboard_status": response.status_code,
        "dashboard": response.json() if response.status_code == 200 else None,
    }


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")
    import django

    django.setup()
    print(json.dumps(drive(json.loads(sys.argv[2]))))
