"""Flower with deploy/flowerconfig.py: authentication required, state persisted, health-checked,
queue lengths equal to celery_health's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from taskcore.testing.redis_server import free_port
from taskcore.testing.waiting import wait_for

BASE_DIR = Path(__file__).resolve().parent.parent


def authorized(url: str, auth: str | None) -> urllib.request.Request:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    return request


def http_status(url: str, auth: str | None = None) -> int | None:
    request = authorized(url, auth)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def flower_config(tmp_path) -> Path:
    """The config outside the checkout, so a developer's .env does not feed it."""
    (tmp_path / "deploy").mkdir()
    return Path(shutil.copy(BASE_DIR / "deploy" / "flowerconfig.py", tmp_path / "deploy"))


def flower(config: Path, port: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "admin_backend", "flower",
         f"--conf={config}", f"--port={port}"],
        cwd=BASE_DIR,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def health_of_flower(url: str) -> tuple[int, str]:
    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--only", "flower", "--format", "summary"],
        cwd=BASE_DIR, env={**os.environ, "FLOWER_URL": url}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return completed.returncode, completed.stdout


def test_flower_refuses_to_start_without_authentication(flower_config):
    process = flower(flower_config, free_port(), {})
    output, _ = process.communicate(timeout=60)

    assert process.returncode == 78
    assert "set FLOWER_BASIC_AUTH=user:password" in output


def test_flower_requires_auth_persists_state_and_is_health_checked(flower_config, tmp_path):
    port = free_port()
    health_url = f"http://127.0.0.1:{port}/healthcheck"
    db = tmp_path / "flower-state" / "flower.db"
    process = flower(
        flower_config, port, {"FLOWER_BASIC_AUTH": "ops:fl0wer-pw", "FLOWER_DB": str(db)}
    )
    try:
        deadline = time.monotonic() + 60
        while http_status(health_url) != 200:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "Flower did not come up"
            time.sleep(0.2)

        assert http_status(f"http://127.0.0.1:{port}/") == 401
        assert http_status(f"http://127.0.0.1:{port}/", auth="ops:wrong") == 401
        assert http_status(f"http://127.0.0.1:{port}/", auth="ops:fl0wer-pw") == 200
        code, summary = health_of_flower(health_url)
        assert code == 0, summary
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)

    assert list(db.parent.glob("flower.db*")), "state is written at shutdown"
    assert "fl0wer-pw" not in output
    code, summary = health_of_flower(health_url)
    assert code == 1
    assert summary.startswith("WARNING") and "Flower does not answer" in summary


QUEUE_DEPTHS = {"default": 1, "email": 2, "media": 3, "reports": 4, "maintenance": 5}

SEND_TASKS = f"""
import django
django.setup()
from admin_backend.celery import app
for queue, depth in {QUEUE_DEPTHS!r}.items():
    for i in range(depth):
        # One message in a priority sub-queue of each deeper queue: both must count it.
        app.send_task("flower_test.nothing", queue=queue, priority=6 if i == 2 else None)
"""


@pytest.fixture(params=["redis", "sentinel"])
def broker_env(request, test_work_dir) -> dict[str, str]:
    """The environment of the project's processes on each Redis setup (no worker runs)."""
    if request.param == "redis":
        yield {}
        return
    from sentinel_cluster import SentinelCluster

    cluster = SentinelCluster(test_work_dir / f"sentinel-{request.node.name}")
    try:
        yield cluster.settings_env()
    finally:
        cluster.stop()


def project_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=BASE_DIR, env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_flower_shows_each_queue_with_the_depth_celery_health_reports(broker_env, flower_config):
    """Flower's /api/queues/length answers for the project's broker URL (redis:// or
    sentinel://, not a transport class path: Flower answered 404 "'redis' broker is not
    supported"), with the depths celery_health reports."""
    sent = project_process(["-c", SEND_TASKS], broker_env)
    assert sent.returncode == 0, sent.stderr
    health = project_process(
        ["manage.py", "celery_health", "--only", "queues", "--format", "json"], broker_env
    )
    report = json.loads(health.stdout)
    scheme = "sentinel://" if broker_env else "redis://"
    assert report["broker"].startswith(scheme), report["broker"]
    health_depths = {
        check["name"].removeprefix("queue."): check["data"]["depth"]
        for check in report["checks"]
        if check["name"].startswith("queue.")
    }
    assert health_depths == QUEUE_DEPTHS

    port = free_port()
    process = flower(flower_config, port, {**broker_env, "FLOWER_BASIC_AUTH": "ops:fl0wer-pw"})
    try:
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{port}/healthcheck") == 200 or process.poll(),
            timeout=60,
            what="Flower answering /healthcheck",
        )
        assert process.poll() is None, process.stdout.read()
        request = authorized(f"http://127.0.0.1:{port}/api/queues/length", "ops:fl0wer-pw")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)

    flower_depths = {queue["name"]: queue["messages"] for queue in answer["active_queues"]}
    assert flower_depths == health_depths, output[-3000:]
    assert f"Broker: {scheme}" in output
