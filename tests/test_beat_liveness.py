"""Beat liveness with real beat processes: heartbeat, one beat at a time, the health check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskcore.beat_liveness import (
    EXIT_LOCK_HELD,
    HEARTBEAT_KEY,
    LOCK_KEY,
    BeatLiveness,
    BeatLockHeld,
    read_heartbeat,
)
from taskcore.testing.waiting import wait_for

BASE_DIR = Path(__file__).resolve().parent.parent
FAST = {"BEAT_HEARTBEAT_INTERVAL": "0.3", "BEAT_LOCK_TTL": "5"}


class Beat:
    """``celery -A admin_backend beat`` with the liveness scheduler, in a subprocess."""

    def __init__(self, work_dir: Path, name: str, env: dict):
        self.pidfile = work_dir / f"{name}.pid"
        self.log = work_dir / f"{name}.out"
        self.env = {**os.environ, **FAST, **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> Beat:
        self.pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "admin_backend", "beat",
                    "--scheduler", "taskcore.beat_liveness:LivenessScheduler",
                    "--loglevel", "INFO", "--pidfile", str(self.pidfile),
                ],
                cwd=BASE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode if self.process else None


@pytest.fixture
def beats(test_work_dir, worker_database_url, test_redis, request):
    client = test_redis.client()
    client.delete(HEARTBEAT_KEY, LOCK_KEY)
    started: list[Beat] = []
    work_dir = test_work_dir / "beats"
    work_dir.mkdir(exist_ok=True)

    def start(name: str = "beat", **env) -> Beat:
        beat = Beat(work_dir, f"{request.node.name}-{name}", {
            "DATABASE_URL": worker_database_url, **env})  # fmt: skip
        started.append(beat)
        return beat.start()

    yield start
    for beat in started:
        beat.stop()
    client.delete(HEARTBEAT_KEY, LOCK_KEY)


def heartbeat_ts(client) -> float | None:
    heartbeat = read_heartbeat(client)
    return heartbeat["ts"] if heartbeat else None


def health_of_beat(env: dict) -> tuple[int, dict]:
    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--only", "beat", "--format", "json"],
        cwd=BASE_DIR, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return completed.returncode, json.loads(completed.stdout)["checks"][0]


@pytest.mark.django_db(transaction=True)
def test_heartbeat_advances_while_beat_runs_and_stops_when_beat_stops(beats, test_redis):
    client = test_redis.client()
    beat = beats()

    first = wait_for(lambda: heartbeat_ts(client))
    second = wait_for(lambda: (ts := heartbeat_ts(client)) and ts > first and ts)
    assert second > first
    heartbeat = read_heartbeat(client)
    assert heartbeat["pid"] == beat.process.pid
    assert int(beat.pidfile.read_text().strip()) == beat.process.pid
    assert client.pttl(LOCK_KEY) > 0

    assert beat.stop() == 0
    stopped_at = heartbeat_ts(client)
    assert client.get(LOCK_KEY) is None  # released at shutdown: a restart need not wait
    assert not beat.pidfile.exists()
    time.sleep(1.0)  # three heartbeat intervals
    assert heartbeat_ts(client) == stopped_at


@pytest.mark.django_db(transaction=True)
def test_a_second_beat_refuses_to_start_while_one_holds_the_lock(beats, test_redis):
    client = test_redis.client()
    first = beats("first")
    wait_for(lambda: heartbeat_ts(client))

    second = beats("second")
    assert second.process.wait(60) == EXIT_LOCK_HELD
    assert "another celery beat holds the beat lock" in second.output()
    assert f"pid {first.process.pid}" in second.output()
    # The first one is untouched and still beating.
    assert first.process.poll() is None
    before = heartbeat_ts(client)
    wait_for(lambda: heartbeat_ts(client) > before)
    assert read_heartbeat(client)["pid"] == first.process.pid


@pytest.mark.django_db(transaction=True)
def test_the_lock_of_a_beat_killed_on_this_host_is_taken_over_at_once(beats, test_redis):
    client = test_redis.client()
    crashed = beats("crashed")
    wait_for(lambda: heartbeat_ts(client))
    crashed.stop(signal.SIGKILL)
    assert client.get(LOCK_KEY) is not None  # left behind, TTL still running

    successor = beats("successor")

    wait_for(lambda: (hb := read_heartbeat(client)) and hb["pid"] == successor.process.pid)
    assert successor.process.poll() is None
    assert "took over the beat lock" in successor.output()


@pytest.mark.django_db(transaction=True)
def test_health_check_reports_a_stopped_beat_as_warning_then_critical(beats, test_redis):
    client = test_redis.client()
    env = {"BEAT_HEARTBEAT_WARNING": "1.5", "BEAT_HEARTBEAT_CRITICAL": "4"}
    beat = beats()
    wait_for(lambda: heartbeat_ts(client))

    code, check = health_of_beat(env)
    assert (code, check["status"]) == (0, "ok"), check
    assert check["data"]["pid"] == beat.process.pid

    beat.stop()
    seen = []

    def status_is(wanted):
        code, check = health_of_beat(env)
        seen.append(check["status"])
        return code == {"warning": 1, "critical": 2}[wanted] and check["status"] == wanted

    wait_for(lambda: status_is("warning"), interval=0.2)
    wait_for(lambda: status_is("critical"), interval=0.2)
    assert seen.index("warning") < seen.index("critical")
    assert "beat is stopped or stuck" in health_of_beat(env)[1]["detail"]


def test_liveness_lock_semantics_on_real_redis(test_redis):
    client = test_redis.client()
    client.delete(HEARTBEAT_KEY, LOCK_KEY)
    try:
        one = BeatLiveness(client, interval=1, ttl=10)
        two = BeatLiveness(client, interval=1, ttl=10)
        one.acquire()
        with pytest.raises(BeatLockHeld):
            two.acquire()  # same host, but pid alive (this process): not stale
        one.heartbeat()
        assert read_heartbeat(client)["instance"] == one.identity["instance"]

        # The lock is lost (say Redis restarted) and another beat takes it.
        client.delete(LOCK_KEY)
        two.acquire()
        with pytest.raises(BeatLockHeld):
            one.heartbeat()  # the first must stop, not fight for it
        assert read_heartbeat(client)["instance"] == one.identity["instance"]

        one.release()  # not ours any more: leaves the other's lock alone
        assert json.loads(client.get(LOCK_KEY))["instance"] == two.identity["instance"]
        two.release()
        assert client.get(LOCK_KEY) is None
    finally:
        client.delete(HEARTBEAT_KEY, LOCK_KEY)


def test_a_lock_left_by_an_earlier_process_with_our_pid_is_stale(test_redis):
    """A restarted container gives beat the PID its previous incarnation had."""
    client = test_redis.client()
    client.delete(HEARTBEAT_KEY, LOCK_KEY)
    try:
        successor = BeatLiveness(client, interval=1, ttl=10)
        # Its incarnation started before this process did (a day ago: before any test run).
        left_behind = {**successor.identity, "instance": "old", "started_at": time.time() - 86400}
        client.set(LOCK_KEY, json.dumps(left_behind), px=10_000)

        successor.acquire()

        assert json.loads(client.get(LOCK_KEY))["instance"] == successor.identity["instance"]
    finally:
        client.delete(HEARTBEAT_KEY, LOCK_KEY)
