"""The collector's time series: a sample of every queue every 10-15 s, kept with a limit.

``collect_sample()`` (the ``dashboard.tasks.collect_sample`` task, sent by beat
to the maintenance queue) reads the queue depths and oldest-message ages with
the health checks' own pipelined read (``HealthContext.queues``: LLEN/LINDEX,
constant time whatever the depth) and the throughput counters of
``dashboard.stats``, and stores one small JSON sample in two Redis sorted sets
scored by time:

- ``admin_backend:dashboard:samples:hour``: every sample, trimmed to the last hour;
- ``admin_backend:dashboard:samples:day``: at most one a minute, trimmed to 24 h.

So the charts cost one ZRANGEBYSCORE of at most ~360 / 1,440 members, and
nothing ever scans a queue.
"""

from __future__ import annotations

import json
import time

from taskcore.queues import queue_table

from . import stats

RANGES = {"hour": 3600, "day": 86400}
DAY_STEP = 60  # seconds between samples kept for the day chart


def key(range_name: str) -> str:
    return f"{stats.PREFIX}samples:{range_name}"


def take_sample(app=None, now: float | None = None) -> dict:
    queue_names = queue_table().names
    from taskcore.health.context import HealthContext

    if app is None:
        from celery import current_app as app
    now = time.time() if now is None else now
    snapshot = HealthContext(app, 5.0).queues()
    throughput = stats.read(stats.stats_redis(), queue_names, now=now)
    queues = {}
    for name in queue_names:
        depth = snapshot.queues[name]
        rates = throughput[name]
        queues[name] = {
            "depth": depth.depth,
            "age": None if depth.oldest_age is None else round(depth.oldest_age, 1),
            "ok": rates["succeeded_per_min"],
            "failed": rates["failed_per_min"],
            "retried": rates["retried_per_min"],
            "p95": rates["runtime_p95_s"],
        }
    return {"t": round(now, 3), "q": queues}


def store(client, sample: dict) -> None:
    now = sample["t"]
    payload = json.dumps(sample, separators=(",", ":"))
    last_day = client.zrevrangebyscore(key("day"), "+inf", "-inf", start=0, num=1, withscores=True)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key("hour"), {payload: now})
        pipe.zremrangebyscore(key("hour"), "-inf", now - RANGES["hour"])
        if not last_day or now - last_day[0][1] >= DAY_STEP - 1:
            pipe.zadd(key("day"), {payload: now})
        pipe.zremrangebyscore(key("day"), "-inf", now - RANGES["day"])
        pipe.execute()


def collect_sample(app=None) -> dict:
    sample = take_sample(app)
    store(stats.stats_redis(), sample)
    return sample


def series(client, range_name: str = "hour", now: float | None = None) -> dict:
    """Samples of the range as columns: times, and per queue depth/age/throughput lists."""
    queue_names = queue_table().names
    now = time.time() if now is None else now
    seconds = RANGES.get(range_name, RANGES["hour"])
    raw = client.zrangebyscore(key(range_name), now - seconds, "+inf")
    times: list[float] = []
    queues = {
        name: {"depth": [], "age": [], "throughput": [], "failed": []} for name in queue_names
    }
    for member in raw:
        try:
            sample = json.loads(member)
        except ValueError:
            continue
        times.append(sample["t"])
        for name, columns in queues.items():
            values = sample.get("q", {}).get(name) or {}
            columns["depth"].append(values.get("depth"))
            columns["age"].append(values.get("age"))
            columns["throughput"].append(values.get("ok"))
            columns["failed"].append(values.get("failed"))
    return {"range": range_name, "seconds": seconds, "now": now, "t": times, "queues": queues}
