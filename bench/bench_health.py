"""B5: how fast celery_health answers, and reading queue depth with 1,000,000 messages queued.

    .venv/bin/python bench/bench_health.py                 # full: 4 workers, 1M messages
    .venv/bin/python bench/bench_health.py --messages 100000 --runs 5   # a quick look

Part 1, ``celery_health`` with 4 workers up (one per worker group of the queue
table, as ``start_celery.sh --groups`` runs them), against its peers:

- ``celery_health`` (default checks), ``--check-redis``, ``--test-tasks``: wall
  time of the whole command (interpreter and Django start included), and the
  checks alone (the report's ``duration_ms``);
- peer: what the spec's Docker healthcheck runs, ``celery -A admin_backend
  inspect ping``, and ``inspect active_queues`` (the per-queue consumer view);
- in process: our worker census (one broadcast, stops when every subscriber has
  answered) against Celery's ``inspect().active_queues()`` (waits its timeout).

Part 2, queue depth and oldest-message age with N messages in one queue
(``media``; a share in priority sub-queues):

- ours: one pipelined round trip of LLEN + LINDEX -1 over every list of every
  queue (5 queues x 4 priority lists), with the age from the sent_at header;
- kombu: ``queue_declare(passive=True).message_count`` per queue (depth only,
  no age; what Flower's broker view and most scripts use);
- naive: LRANGE over the lists in pages of 10,000 and parse every message to
  find the oldest (what one writes without knowing the list order).

Everything runs against a private redis-server (AOF on, noeviction) and a
temporary SQLite database.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def median_ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    value = statistics.median(samples) * 1000
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def timed(command: list[str], env: dict, runs: int) -> tuple[list[float], list[dict]]:
    walls, reports = [], []
    for _ in range(runs):
        started = time.perf_counter()
        completed = subprocess.run(
            command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        walls.append(time.perf_counter() - started)
        try:
            reports.append(json.loads(completed.stdout))
        except ValueError:
            reports.append({})
    return walls, reports


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="messages queued for part 2 (0: skip part 2)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    from taskcore.testing.redis_server import start_redis

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    server = start_redis(work / "redis", extra_args=["--appendonly", "yes"])
    env = {
        **os.environ,
        "CELERY_BROKER_URL": server.url,
        "CELERY_RESULT_BACKEND": server.url,
        "CACHE_URL": server.url.replace("/0", "/1"),
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "LOG_DIR": str(work / "logs"),
        "SECRET_KEY": "bench",
        "FLOWER_URL": "off",
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT_DIR, env=env,
                   check=True)  # fmt: skip

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "admin_backend.settings")
    django.setup()
    from admin_backend.celery import app
    from admin_backend.queues import worker_groups
    from taskcore.health.workers import worker_census
    from taskcore.testing.workers import WorkerProcess

    workers = [
        WorkerProcess(app, [spec.name for spec in specs], log_path=work / f"{group}.out",
                      concurrency=1, env=env, name=group)
        for group, specs in worker_groups().items()
    ]  # fmt: skip
    rows: list[tuple[str, str, str]] = []
    try:
        for worker in workers:
            worker.start()
        print(f"{len(workers)} workers up: {', '.join(w.hostname for w in workers)}")
        health = [sys.executable, "manage.py", "celery_health", "--format", "json"]
        walls, _ = timed([*health, "--help"], env, args.runs)
        rows.append(("baseline: celery_health --help", median_ms(walls),
                     "interpreter + Django start, no check"))  # fmt: skip
        for label, extra in (
            ("celery_health", []),
            ("celery_health --check-redis", ["--check-redis"]),
            ("celery_health --test-tasks --check-redis", ["--test-tasks", "--check-redis"]),
        ):
            walls, reports = timed(health + extra, env, args.runs)
            inner = [r["duration_ms"] / 1000 for r in reports if "duration_ms" in r]
            statuses = sorted({r.get("status", "?") for r in reports})
            rows.append((label, median_ms(walls), f"checks {median_ms(inner)}; {statuses}"))
        celery = [sys.executable, "-m", "celery", "-A", "admin_backend", "inspect"]
        for command in ("ping", "active_queues"):
            walls, _ = timed([*celery, command], env, args.runs)
            rows.append((f"peer: celery inspect {command}", median_ms(walls), "timeout 1 s"))

        census, inspected = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            found = worker_census(app, 1.5)
            census.append(time.perf_counter() - started)
            started = time.perf_counter()
            replies = app.control.inspect(timeout=1.0).active_queues() or {}
            inspected.append(time.perf_counter() - started)
        rows.append(("in process: our worker census", median_ms(census),
                     f"{len(found.workers)} workers, {found.listeners} listeners"))  # fmt: skip
        rows.append(("in process: inspect().active_queues()", median_ms(inspected),
                     f"{len(replies)} workers"))  # fmt: skip
    finally:
        for worker in workers:
            worker.stop()

    # --- part 2: depth with N messages --------------------------------------------------
    client = server.client()
    server_version = client.info("server")["redis_version"]
    if args.messages:
        rows += depth_rows(app, client, args)
    server.stop()

    print(f"\nB5 on {machine()}, Redis {server_version} (private redis-server, AOF on), "
          f"{args.runs} runs each, medians; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (the machine is shared)\n")  # fmt: skip
    print("| what | time | notes |\n|---|---|---|")
    for label, value, notes in rows:
        print(f"| {label} | {value} | {notes} |")


def depth_rows(app, client, args) -> list[tuple[str, str, str]]:
    from admin_backend.queues import QUEUE_NAMES
    from taskcore.health.redis_queues import RedisLayout, message_sent_at, read_queues

    rows = []
    layout = RedisLayout()
    app.send_task("media.tasks.inspect_image", args=[0])  # a real message, with sent_at
    template = json.loads(client.rpop("media"))
    oldest_at = time.time() - 3600
    fill_started = time.perf_counter()
    batch, per_priority = 10_000, {0: 0.9, 3: 0.05, 6: 0.05}
    for step, share in per_priority.items():
        key = dict(layout.keys("media"))[step]
        count = int(args.messages * share)
        for offset in range(0, count, batch):
            values = []
            for index in range(offset, min(offset + batch, count)):
                template["headers"]["sent_at"] = oldest_at + index * 0.001
                values.append(json.dumps(template))
            client.lpush(key, *values)
    fill_s = time.perf_counter() - fill_started
    depth = sum(client.llen(key) for _, key in layout.keys("media"))
    used = client.info("memory")["used_memory_human"]
    print(f"queued {depth} messages in {fill_s:.1f}s (Redis uses {used})")

    ours = []
    for _ in range(args.runs * 5):
        started = time.perf_counter()
        snapshot = read_queues(client, QUEUE_NAMES, layout)
        ours.append(time.perf_counter() - started)
    assert snapshot.queues["media"].depth == depth
    rows.append((f"depth+age, ours (LLEN+LINDEX pipeline), {depth:,} msgs", median_ms(ours),
                 f"oldest {snapshot.queues['media'].oldest_age:.0f}s"))  # fmt: skip

    from kombu.exceptions import ChannelError

    def passive_count(channel, name: str) -> int:
        try:
            return channel.queue_declare(name, passive=True).message_count
        except ChannelError:  # kombu's Redis channel: an empty queue "does not exist"
            return 0

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        kombu = []
        for _ in range(args.runs * 5):
            started = time.perf_counter()
            counts = {name: passive_count(channel, name) for name in QUEUE_NAMES}
            kombu.append(time.perf_counter() - started)
    rows.append(("depth only, kombu queue_declare(passive) per queue", median_ms(kombu),
                 f"media {counts['media']:,}; no age"))  # fmt: skip

    started = time.perf_counter()
    oldest, seen = None, 0
    for name in QUEUE_NAMES:
        for _, key in layout.keys(name):
            for start in range(0, client.llen(key), 10_000):
                for raw in client.lrange(key, start, start + 9_999):
                    seen += 1
                    sent_at = message_sent_at(raw)
                    if sent_at is not None and (oldest is None or sent_at < oldest):
                        oldest = sent_at
    naive_s = time.perf_counter() - started
    rows.append(("depth+age, naive LRANGE scan + parse", f"{naive_s * 1000:.0f} ms",
                 f"{seen:,} messages read, 1 run"))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
