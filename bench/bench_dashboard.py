"""B6: the operations dashboard's JSON endpoint with 1,000,000 messages queued.

    .venv/bin/python bench/bench_dashboard.py                       # 1M messages, 20 runs
    .venv/bin/python bench/bench_dashboard.py --messages 100000 --runs 5

A private redis-server (AOF on, noeviction), a temporary SQLite database, one
worker consuming every queue but media (so media is critical: "no consumer"),
1,000,000 real task messages in ``media`` (copies of one ``media.tasks.inspect_image``
message, each with its own ``sent_at``), a full hour and day of collector
samples, 200 dead letters in 4 groups. Timed: ``GET /admin/operations/data.json``
through Django's test client (URL routing, middleware, session, admin_view,
permission, the view: health checks, two worker broadcasts, throughput counters,
the chart series, dead letters, beat, work in progress, JSON encoding), and for
comparison the same with no message queued, and the health checks alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms"


def p95_ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"{ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000:.1f} ms"


def fill(app, client, messages: int) -> float:
    from taskcore.health.redis_queues import RedisLayout

    app.send_task("media.tasks.inspect_image", args=[0], queue="media")
    template = json.loads(client.rpop("media"))
    key = dict(RedisLayout().keys("media"))[0]
    oldest_at = time.time() - 3600
    started = time.perf_counter()
    for offset in range(0, messages, 10_000):
        values = []
        for index in range(offset, min(offset + 10_000, messages)):
            template["headers"]["sent_at"] = oldest_at + index * 0.001
            values.append(json.dumps(template))
        client.lpush(key, *values)
    return time.perf_counter() - started


def fill_samples(client) -> None:
    from admin_backend.queues import QUEUE_NAMES
    from dashboard import samples

    now = time.time()
    for offset in range(86400, 0, -10):  # one sample every 10 s for a day
        queues = {name: {"depth": offset, "age": 1.0, "ok": 60.0, "failed": 0.0, "p95": 0.1}
                  for name in QUEUE_NAMES}  # fmt: skip
        samples.store(client, {"t": now - offset, "q": queues})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    from taskcore.testing.redis_server import start_redis

    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    server = start_redis(work / "redis", extra_args=["--appendonly", "yes"])
    env = {
        **os.environ,
        "CELERY_BROKER_URL": server.url,
        "CELERY_RESULT_BACKEND": server.url,
        "REDIS_URL": server.url,
        "CACHE_URL": server.url.replace("/0", "/1"),
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "LOG_DIR": str(work / "logs"),
        "SECRET_KEY": "bench",
        "FLOWER_URL": "off",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "testserver",
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT_DIR, env=env,
                   check=True)  # fmt: skip
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")
    django.setup()
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    from admin_backend.celery import app
    from taskcore.health import run_health
    from taskcore.models import DeadLetter
    from taskcore.testing.workers import WorkerProcess

    user = User.objects.create_user("bench", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_operations_dashboard"))
    DeadLetter.objects.bulk_create(
        DeadLetter(task_id=f"t{n}", task_name=f"media.tasks.task{n % 4}", queue="media",
                   reason="permanent_error", exception_type="PermanentError",
                   exception_message="bad input")
        for n in range(200)
    )  # fmt: skip
    http = Client()
    http.force_login(user)
    client = server.client()
    worker = WorkerProcess(app, ["default", "email", "reports", "maintenance"],
                           log_path=work / "worker.out", env=env, name="bench")  # fmt: skip
    rows = []
    try:
        worker.start()
        fill_samples(client)

        def timed(label: str, url: str, note: str):
            http.get(url)  # warm
            walls, inner = [], []
            for _ in range(args.runs):
                started = time.perf_counter()
                response = http.get(url)
                walls.append(time.perf_counter() - started)
                assert response.status_code == 200, response.status_code
                inner.append(response.json()["duration_ms"] / 1000)
            data = response.json()
            media = next(q for q in data["queues"] if q["name"] == "media")
            rows.append((label, median_ms(walls), p95_ms(walls),
                         f"{note}; media depth {media['depth']:,} ({media['status']}), "
                         f"{len(response.content) // 1024} KiB"))  # fmt: skip

        url = "/admin/operations/data.json"
        timed("JSON, empty queues, hour series", url, "baseline")
        fill_s = fill(app, client, args.messages)
        used = client.info("memory")["used_memory_human"]
        print(f"queued {args.messages:,} messages in {fill_s:.1f}s (Redis uses {used})")
        timed(f"JSON, {args.messages:,} queued, hour series", url, "what the page polls")
        timed(f"JSON, {args.messages:,} queued, day series", url + "?range=day", "day chart")
        timed(f"JSON, {args.messages:,} queued, no series", url + "?series=0", "")
        checks = []
        for _ in range(args.runs):
            started = time.perf_counter()
            run_health(app)
            checks.append(time.perf_counter() - started)
        rows.append(("run_health() alone (the checks celery_health runs)", median_ms(checks),
                     p95_ms(checks), "part of every JSON answer"))  # fmt: skip
    finally:
        worker.stop()
        server.stop()
    print(f"\nB6: {args.runs} runs each, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| what | median | p95 | notes |\n|---|---|---|---|")
    for label, median, p95, note in rows:
        print(f"| {label} | {median} | {p95} | {note} |")


if __name__ == "__main__":
    main()
