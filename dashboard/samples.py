"""The collector's time series: a sample of every queue every 10-15 s, kept with a limit.

``collect_sample()`` (the ``dashboard.tasks.collect_sample`` task, sent by beat
to the maintenance queue) reads the queue depths and oldest-message ages with
the health checks' own pipelined read (``HealthContext.queues``: LLEN/LINDEX,
constant time whatever the depth) and the workers' running totals of finished
tasks (``taskcore.health.metrics.outcome_totals``: the counters ``/metrics``
serves), and stores one small JSON sample in two Redis sorted sets scored by time:

- ``admin_backend:dashboard:samples:hour``: every sample, trimmed to the last hour
  (the hour chart is full resolution);
- ``admin_backend:dashboard:samples:day``: one bucket a minute, trimmed to 24 h.
  Each sample is merged into its minute's bucket as :data:`COMBINE` says: depth
  and age keep the maximum and throughput the sum, so a burst shorter than the
  bucket still shows at its height (keeping one sample a minute lost it).

Throughput is the number of tasks finished between two samples (the difference
of the totals), so it is exact whatever the collector's interval, and sums
correctly into wider buckets. The charts cost one ZRANGEBYSCORE of at most
~360 / 1,440 members, and nothing ever scans a queue.
"""

from __future__ import annotations

import json
import time

from taskcore.health import metrics
from taskcore.queues import queue_table

from . import stats

RANGES = {"hour": 3600, "day": 86400}
DAY_BUCKET = 60  # seconds per bucket of the day chart
# Per value of a queue: how samples combine into a bucket.
COMBINE = {"depth": max, "age": max, "ok": sum, "failed": sum}
# Chart column names for the stored short names.
COLUMNS = {"depth": "depth", "age": "age", "ok": "throughput", "failed": "failed"}


def key(range_name: str) -> str:
    return f"{stats.PREFIX}samples:{range_name}"


def take_sample(app=None, now: float | None = None) -> dict:
    queue_names = queue_table().names
    from taskcore.health.context import HealthContext

    if app is None:
        from celery import current_app as app
    now = time.time() if now is None else now
    snapshot = HealthContext(app, 5.0).queues()
    totals = metrics.outcome_totals(stats.stats_redis())
    queues = {}
    for name in queue_names:
        depth = snapshot.queues[name]
        done = totals.get(name) or {}
        queues[name] = {
            "depth": depth.depth,
            # An empty queue waits 0 s: a line at 0, not a gap (None: unstamped messages).
            "age": 0.0 if not depth.depth else _rounded(depth.oldest_age),
            # Running totals; store() turns them into counts since the previous sample.
            "done": done.get("succeeded", 0),
            "fails": done.get("failed", 0),
        }
    return {"t": round(now, 3), "q": queues}


def _rounded(age: float | None) -> float | None:
    return None if age is None else round(age, 1)


def _since(current: int, previous: int | None) -> int:
    if previous is None:
        return 0  # the first sample: no interval to count
    return current - previous if current >= previous else current  # totals were reset


def _with_counts(sample: dict, previous: dict | None) -> dict:
    """The sample with ``ok``/``failed``: tasks finished since the previous sample."""
    before = (previous or {}).get("q", {})
    queues = {}
    for name, values in sample.get("q", {}).items():
        values = dict(values)
        if "done" in values:
            old = before.get(name) or {}
            values["ok"] = _since(values["done"], old.get("done"))
            values["failed"] = _since(values.get("fails", 0), old.get("fails"))
        queues[name] = values
    return {**sample, "q": queues}


def merge(bucket: dict | None, sample: dict, start: float) -> dict:
    """``sample`` combined into ``bucket`` (which starts at ``start``), per :data:`COMBINE`."""
    if bucket is None:
        bucket = {"t": start, "n": 0, "q": {}}
    queues = {name: dict(values) for name, values in bucket["q"].items()}
    for name, values in sample.get("q", {}).items():
        into = queues.setdefault(name, {})
        for field, combine in COMBINE.items():
            present = [v for v in (into.get(field), values.get(field)) if v is not None]
            into[field] = combine(present) if present else None
        for field in ("done", "fails"):  # the bucket's latest totals
            if field in values:
                into[field] = values[field]
    return {"t": start, "n": bucket.get("n", 0) + 1, "q": queues}


def _latest(client, range_name: str) -> tuple[dict | None, bytes | None]:
    found = client.zrevrangebyscore(key(range_name), "+inf", "-inf", start=0, num=1)
    if not found:
        return None, None
    try:
        return json.loads(found[0]), found[0]
    except ValueError:
        return None, None


def store(client, sample: dict) -> dict:
    now = sample["t"]
    previous, _ = _latest(client, "hour")
    sample = _with_counts(sample, previous)
    start = float(int(now // DAY_BUCKET) * DAY_BUCKET)
    raw_bucket = client.zrangebyscore(key("day"), start, start)
    bucket = json.loads(raw_bucket[-1]) if raw_bucket else None
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key("hour"), {json.dumps(sample, separators=(",", ":")): now})
        pipe.zremrangebyscore(key("hour"), "-inf", now - RANGES["hour"])
        if raw_bucket:
            pipe.zrem(key("day"), *raw_bucket)
        merged = merge(bucket, sample, start)
        pipe.zadd(key("day"), {json.dumps(merged, separators=(",", ":")): start})
        pipe.zremrangebyscore(key("day"), "-inf", now - RANGES["day"])
        pipe.execute()
    return sample


def collect_sample(app=None) -> dict:
    return store(stats.stats_redis(), take_sample(app))


def series(client, range_name: str = "hour", now: float | None = None) -> dict:
    """The range as chart columns: times, and per queue depth/age/throughput/failed lists.

    Hour: every sample. Day: one point per minute bucket (its maximum depth and age,
    its sum of finished tasks).
    """
    queue_names = queue_table().names
    now = time.time() if now is None else now
    range_name = range_name if range_name in RANGES else "hour"
    seconds = RANGES[range_name]
    start = now - seconds - (DAY_BUCKET if range_name == "day" else 0)
    raw = client.zrangebyscore(key(range_name), start, "+inf")
    times: list[float] = []
    queues = {name: {column: [] for column in COLUMNS.values()} for name in queue_names}
    for member in raw:
        try:
            sample = json.loads(member)
        except ValueError:
            continue
        times.append(sample["t"])
        for name, columns in queues.items():
            values = sample.get("q", {}).get(name) or {}
            for field, column in COLUMNS.items():
                columns[column].append(values.get(field))
    return {
        "range": range_name,
        "seconds": seconds,
        "now": now,
        "bucket_seconds": DAY_BUCKET if range_name == "day" else None,
        "t": times,
        "queues": queues,
    }
