"""R10: Redis unreachable for 60 s (its packets dropped): callers return fast, nothing is lost.

Redis runs in a network namespace the test creates, behind a veth pair; iptables
inside the namespace drops every packet to and from it (a host gone silent: no
RST, no FIN, as when a network partitions). Root, ``ip`` and ``iptables`` are
needed (run_tests.sh installs iptables; CI requires it with TEST_NETNS=always).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from celery import Celery
from test_callers_never_hang import assert_callers_returned_and_recovered, run_caller
from test_chaos import record_figures

from taskcore.models import DeadLetter, EffectClaim
from taskcore.testing.redis_server import redis_server_binary, wait_until_answers

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def _can_partition() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}" if missing else None


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


class PartitionedRedis:
    """A redis-server in its own network namespace, reachable over a veth pair."""

    def __init__(self, work_dir):
        tag = uuid.uuid4().hex[:6]
        self.namespace, self.host_side, self.ns_side = f"r10-{tag}", f"r10h{tag}", f"r10n{tag}"
        subnet = int(tag[:2], 16) % 250 + 1
        self.host_ip, self.redis_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.url = f"redis://{self.redis_ip}:6379/0"
        self.work_dir = work_dir
        self.server = None

    def start(self) -> PartitionedRedis:
        ns = ["ip", "netns", "exec", self.namespace]
        run("ip", "netns", "add", self.namespace)
        run("ip", "link", "add", self.host_side, "type", "veth", "peer", "name", self.ns_side)
        run("ip", "link", "set", self.ns_side, "netns", self.namespace)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_side)
        run("ip", "link", "set", self.host_side, "up")
        run(*ns, "ip", "addr", "add", f"{self.redis_ip}/30", "dev", self.ns_side)
        run(*ns, "ip", "link", "set", self.ns_side, "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.server = subprocess.Popen(
            [
                *ns,
                redis_server_binary(),
                "--bind",
                self.redis_ip,
                "--port",
                "6379",
                "--dir",
                str(self.work_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_answers(self.url)
        return self

    def _drop_rules(self, action: str) -> None:
        ns = ["ip", "netns", "exec", self.namespace]
        run(*ns, "iptables", action, "INPUT", "-p", "tcp", "--dport", "6379", "-j", "DROP")
        run(*ns, "iptables", action, "OUTPUT", "-p", "tcp", "--sport", "6379", "-j", "DROP")

    def drop(self) -> None:
        self._drop_rules("-A")

    def restore(self) -> None:
        self._drop_rules("-D")

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
        subprocess.run(["ip", "link", "del", self.host_side], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


@pytest.fixture
def partitioned_redis(test_work_dir):
    reason = _can_partition()
    if reason:
        if os.environ.get("TEST_NETNS") == "always":
            pytest.fail(f"R10 {reason} (TEST_NETNS=always)")
        pytest.skip(reason)
    server = PartitionedRedis(test_work_dir / f"r10-{uuid.uuid4().hex[:6]}").start()
    yield server
    server.stop()


def test_r10_redis_unreachable_for_a_minute(
    partitioned_redis, start_worker, worker_database_url, monkeypatch
):
    url, total, outage = partitioned_redis.url, 1_000, 60
    env = {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "CACHE_URL": url,
        "REDIS_URL": url,
        "CELERY_TIME_LIMIT_CAP": "10",
        "CELERY_VISIBILITY_TIMEOUT": "15",
        "CELERY_UNACKED_RESTORE_INTERVAL": "1",
        "CELERY_LOG_LEVEL": "WARNING",
    }
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    client_app = Celery("r10-client", broker=url, backend=url, set_as_current=False)
    worker = start_worker(["default"], concurrency=2, env=env, client_app=client_app)
    with client_app.producer_or_acquire() as producer:
        for key in range(total):
            client_app.send_task(
                "taskcore.testing.record_effect",
                args=[str(key)],
                queue="default",
                producer=producer,
                ignore_result=True,
            )

    def effects() -> int:
        return EffectClaim.objects.filter(scope="chaos").count()

    started = time.monotonic()
    while effects() < total // 5 and time.monotonic() - started < 120:
        time.sleep(0.2)
    dropped_at = time.monotonic()
    restored = {}

    def end_outage() -> None:
        time.sleep(max(0.0, dropped_at + outage - time.monotonic()))
        partitioned_redis.restore()
        restored.update(at=time.monotonic(), effects=effects())

    # The caller calls while packets are dropped, then once more after the outage.
    out = run_caller(url, worker_database_url, during=partitioned_redis.drop, after=end_outage)
    back, at_restore = restored["at"], restored["effects"]
    resumed_after = None
    deadline = back + 180
    while effects() < total and time.monotonic() < deadline:
        if resumed_after is None and effects() > at_restore:
            resumed_after = time.monotonic() - back
        time.sleep(0.2)
    done = effects()
    figures = {
        "sent": total,
        "effects": done,
        "lost": total - done,
        "dead_letters": DeadLetter.objects.count(),
        "outage_s": outage,
        "caller_delay_s": [out["delay_0_s"], out["delay_1_s"]],
        "caller_after_commit_s": out["after_commit_s"],
        "worker_resumed_after_s": round(resumed_after, 1) if resumed_after else resumed_after,
    }
    record_figures("R10 packets dropped", figures)
    assert done == total, figures
    assert worker.process.poll() is None, worker.output()[-3000:]
    assert resumed_after is None or resumed_after < 30, figures  # None: all done at once
    redis.Redis.from_url(url).ping()
    assert_callers_returned_and_recovered(out)
