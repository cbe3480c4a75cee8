"""The health checks. Each takes the run's HealthContext and returns one or more results.

Every surface (``manage.py celery_health``, the HTTP endpoints, /metrics, the
admin dashboard) runs these through ``taskcore.health.runner.run_health``: one
code path, one set of thresholds (those of the queue table and
``taskcore.health.conf``).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from taskcore.brokers import describe_connection_error
from taskcore.queues import queue_table
from taskcore.redis_clients import backend_redis, backend_url, broker_url, is_redis_url
from taskcore.secrets import mask_url

from . import conf
from .context import HealthContext
from .model import CheckResult, Status, critical, ok, warning

START_WORKERS = (
    "start the workers (./start_celery.sh; `python -m admin_backend.worker_commands` "
    "prints each worker's command line)"
)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return f"{count:.1f}GiB"


# --- connectivity --------------------------------------------------------------
def check_broker(ctx: HealthContext) -> CheckResult:
    url = mask_url(broker_url(ctx.app))
    if ctx.amqp:
        try:
            server = ctx.amqp_server()
        except Exception as exc:
            return critical(
                "broker",
                f"RabbitMQ broker at {url} does not answer: {exc}",
                "start RabbitMQ or fix CELERY_BROKER_URL (user, password, virtual host); "
                "check the RabbitMQ log and the network between this host and RabbitMQ",
            )
        rtt = round(server["connect_ms"], 3)
        return ok(
            "broker",
            f"{server['product']} {server['version']} at {url} accepts a connection in "
            f"{rtt:.1f} ms",
            latency_ms=rtt,
            data={"url": url, "kind": ctx.kind, "version": server["version"], "rtt_ms": rtt},
        )
    try:
        rtt = ctx.broker_ping_ms()
        version = ctx.redis_info().get("redis_version", "?")
    except Exception as exc:
        problem = describe_connection_error(exc)
        if problem.startswith("authentication failed"):
            return critical(
                "broker",
                f"Redis broker at {url}: {problem}",
                "set REDIS_PASSWORD (or the password in CELERY_BROKER_URL) to the one Redis "
                "requires (requirepass / ACL user); workers exit with status 78 until it matches",
            )
        return critical(
            "broker",
            f"Redis broker at {url} does not answer: {problem}",
            "start Redis or fix CELERY_BROKER_URL / REDIS_HOST / REDIS_PORT / REDIS_PASSWORD"
            " (Sentinel: the Sentinels, REDIS_SENTINEL_MASTER); check the Redis log and the "
            "network between this host and Redis",
        )
    via = " (primary found through Sentinel)" if ctx.kind == "sentinel" else ""
    refusal = broker_write_refusal(ctx)
    if refusal:
        # A Redis that answers PING but refuses writes takes no publish, reservation or
        # acknowledgement: work stops as surely as when it is down.
        return critical(
            "broker",
            f"Redis {version} at {url}{via} answers but refuses writes: {refusal}",
            "out of memory: raise maxmemory or drain the queues (redis-cli INFO memory); "
            "READONLY: the URL names a replica; MISCONF: Redis cannot persist (disk full?); "
            "a write that does not complete: CLIENT PAUSE, a stalled disk under AOF, overload",
            latency_ms=round(rtt, 3),
            data={"url": url, "kind": ctx.kind, "version": version, "writable": False},
        )
    return ok(
        "broker",
        f"Redis {version} at {url}{via} answers in {rtt:.1f} ms",
        latency_ms=round(rtt, 3),
        data={"url": url, "kind": ctx.kind, "version": version, "rtt_ms": round(rtt, 3)},
    )


WRITE_PROBE_KEY = "taskcore:health:write-probe"


def broker_write_refusal(ctx: HealthContext) -> str | None:
    """Why the broker's Redis refuses a small write (SET with expiry), None when it takes it.

    Its own client with a short timeout: a paused Redis (CLIENT PAUSE WRITE)
    holds the write without an error, and must not hold the whole health run.
    """
    from taskcore.redis_clients import broker_redis

    timeout = max(0.2, min(1.0, ctx.remaining() - 0.5))
    try:
        client = broker_redis(ctx.app, timeout)
        client.set(WRITE_PROBE_KEY, str(time.time()), ex=60)
    except Exception as exc:
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return f"a write did not complete within {timeout:.1f}s"
        if "maxmemory" in str(exc):
            return f"out of memory ({exc})"
        return f"{type(exc).__name__}: {exc}"
    return None


def _not_on_rabbitmq(name: str) -> CheckResult:
    return ok(
        name,
        "not applicable: the broker is RabbitMQ, queued messages are not kept in Redis",
        data={"applicable": False},
    )


def check_result_backend(ctx: HealthContext) -> CheckResult:
    url = backend_url(ctx.app)
    shown = mask_url(url)
    if not url:
        return warning(
            "result_backend",
            "no result backend configured: task results and --test-tasks are unavailable",
            "set CELERY_RESULT_BACKEND",
        )
    if not is_redis_url(url):
        return ok("result_backend", f"result backend {shown} (not probed: not Redis)")
    try:
        client = backend_redis(ctx.app, ctx.timeout)
        client.ping()  # connects: not part of the round trip
        started = time.perf_counter()
        client.ping()
        rtt = ms(time.perf_counter() - started)
    except Exception as exc:
        return critical(
            "result_backend",
            f"result backend at {shown} does not answer: {exc}",
            "start Redis or fix CELERY_RESULT_BACKEND; callers waiting on results will hang",
        )
    return ok(
        "result_backend",
        f"result backend at {shown} answers in {rtt:.1f} ms",
        latency_ms=rtt,
        data={"url": shown, "rtt_ms": rtt},
    )


def check_database(ctx: HealthContext) -> CheckResult:
    from django.db import connection

    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return critical(
            "database",
            f"database ({connection.vendor}) does not answer: {type(exc).__name__}: {exc}",
            "check DATABASE_URL and that the database server runs and accepts connections",
        )
    rtt = ms(time.perf_counter() - started)
    return ok(
        "database",
        f"{connection.vendor} answers SELECT 1 in {rtt:.1f} ms",
        latency_ms=rtt,
        data={"vendor": connection.vendor},
    )


def check_cache(ctx: HealthContext) -> CheckResult:
    from django.core.cache import cache

    key, value = f"health:{uuid.uuid4().hex}", uuid.uuid4().hex
    started = time.perf_counter()
    try:
        cache.set(key, value, timeout=30)
        read_back = cache.get(key)
        cache.delete(key)
    except Exception as exc:
        return critical(
            "cache",
            f"cache does not answer: {type(exc).__name__}: {exc}",
            "check CACHE_URL / REDIS_URL and that its Redis runs",
        )
    rtt = ms(time.perf_counter() - started)
    if read_back != value:
        return critical(
            "cache",
            "cache returned a different value than was written (evicted at once?)",
            "check the cache Redis: maxmemory and maxmemory-policy",
            latency_ms=rtt,
        )
    return ok("cache", f"set/get/delete in {rtt:.1f} ms", latency_ms=rtt)


# --- workers and queues --------------------------------------------------------
def check_workers(ctx: HealthContext) -> CheckResult:
    try:
        census = ctx.census()
    except Exception as exc:
        return critical(
            "workers",
            f"cannot ask the workers: {exc}",
            "fix the broker connection first (check broker); workers use the same Redis",
        )
    latency = round(census.elapsed_ms, 3)
    try:
        unacked = ctx.queues().unacked
    except Exception:
        unacked = None
    data = {
        "workers": {worker: queues for worker, queues in sorted(census.queues_by_worker.items())},
        "count": len(census.workers),
        "control_listeners": census.listeners,
        "unacked": unacked,
    }
    if not census.workers:
        seen = (
            "no worker is connected to the broker (none listens for control commands)"
            if census.listeners == 0
            else f"no worker answers within {ctx.broadcast_timeout:.1f}s"
            + (f" ({census.listeners} listen)" if census.listeners else "")
        )
        return critical(
            "workers",
            seen,
            START_WORKERS,
            latency_ms=latency,
            data=data,
        )
    listing = "; ".join(
        f"{worker} ({', '.join(queues) or 'no queues'})"
        for worker, queues in sorted(census.queues_by_worker.items())
    )
    in_flight = f"; {unacked} messages in flight (taken, not yet acknowledged)" if unacked else ""
    stalled = _stalled_workers(ctx, census.workers)
    data["stalled"] = stalled
    if stalled:
        return critical(
            "workers",
            f"{len(stalled)} of {len(census.workers)} workers answer ping but make no progress "
            "(stalled): "
            + "; ".join(f"{worker}: {verdict['reason']}" for worker, verdict in stalled.items()),
            "each restarts its consumer after CELERY_WORKER_STALL_SECONDS and exits with status "
            "69 if that does not help (its supervisor restarts it); if it stays: restart it, "
            "and see logs/celery.log (taskcore.watchdog) and docs/operations.md, Stalled workers",
            latency_ms=latency,
            data=data,
        )
    if census.silent:
        return warning(
            "workers",
            f"{len(census.workers)} workers answer, {census.silent} more listen but did not "
            f"answer within {ctx.broadcast_timeout:.1f}s: {listing}{in_flight}",
            "a worker that does not answer is stuck, dead with its connection half-open, "
            "or a solo pool busy with a task: check `celery -A admin_backend inspect ping` "
            "and logs/celery_worker.log",
            latency_ms=latency,
            data=data,
        )
    return ok(
        "workers",
        f"{len(census.workers)} workers answer: {listing}{in_flight}",
        latency_ms=latency,
        data=data,
    )


def _stalled_workers(ctx: HealthContext, workers: list[str]) -> dict[str, dict]:
    """Workers whose stall watchdog (taskcore/watchdog.py) says they make no progress."""
    from taskcore.watchdog import read_verdicts

    if not workers:
        return {}
    try:
        verdicts = read_verdicts(ctx.liveness(), workers)
    except Exception:
        return {}  # the state Redis is reported by its own checks
    stalled = {}
    for worker, verdict in verdicts.items():
        if verdict.get("stalled") == "1":
            stalled[worker] = {
                "reason": verdict.get("reason", ""),
                "stalled_for_s": float(verdict.get("stalled_for") or 0),
                "consumer_restarts": int(verdict.get("consumer_restarts") or 0),
                "waiting": verdict.get("waiting"),
            }
    return stalled


def _queue_result(
    spec, depth, consumers: list[str] | None, latency: float, ages: bool = True
) -> CheckResult:
    name = f"queue.{spec.name}"
    age = depth.oldest_age
    data = {
        **depth.as_dict(),
        "consumers": None if consumers is None else len(consumers),
        "consumer_workers": consumers,
        "thresholds": {
            "depth_warning": spec.depth_warning,
            "depth_critical": spec.depth_critical,
            "age_warning_s": spec.age_warning,
            "age_critical_s": spec.age_critical,
        },
    }
    waiting = f"{depth.depth} waiting"
    if depth.depth:
        if age is not None:
            waiting += f", oldest {human_age(age)}"
        else:
            waiting += ", age unknown" if ages else " (RabbitMQ: ages not readable)"
    if len(depth.by_priority) > 1 or any(step for step in depth.by_priority):
        waiting += (
            " (by priority: "
            + ", ".join(f"{step}: {count}" for step, count in sorted(depth.by_priority.items()))
            + ")"
        )
    if depth.scheduled:
        overdue = depth.most_overdue
        waiting += f", {depth.scheduled} scheduled" + (
            f" (most overdue {human_age(overdue)})" if overdue and overdue >= 1 else ""
        )
    who = (
        "consumers unknown"
        if consumers is None
        else f"{len(consumers)} consumer{'' if len(consumers) == 1 else 's'}"
    )
    detail = f"{waiting}; {who}"
    start_one = (
        f"start a worker consuming {spec.name} "
        f"(celery -A admin_backend worker -Q {spec.name}; see `python -m "
        "admin_backend.worker_commands --groups`)"
    )

    # (status, problem, remedy), worst first when reported.
    findings: list[tuple[Status, str, str]] = []
    if consumers is not None and not consumers:
        if depth.depth:
            findings.append(
                (
                    Status.CRITICAL,
                    f"{depth.depth} messages wait in queue {spec.name} and no worker consumes "
                    f"{spec.name}",
                    start_one,
                )
            )
        else:
            findings.append(
                (
                    Status.WARNING,
                    f"no worker consumes {spec.name}: tasks sent there will wait",
                    start_one,
                )
            )
    backlog_remedy = (
        f"{spec.name} is falling behind: add workers or concurrency for it, look for slow or "
        "stuck tasks (celery_monitor, logs/celery_tasks.log), or a flood of new tasks"
    )
    if depth.depth >= spec.depth_warning:
        level = Status.CRITICAL if depth.depth >= spec.depth_critical else Status.WARNING
        limit = spec.depth_critical if level is Status.CRITICAL else spec.depth_warning
        findings.append((level, f"depth {depth.depth} over {limit}", backlog_remedy))
    overdue = depth.most_overdue
    if overdue is not None and overdue >= spec.age_warning:
        # Due messages are moved to the queue by its consumers' reservations.
        level = Status.CRITICAL if overdue >= spec.age_critical else Status.WARNING
        findings.append(
            (level, f"a scheduled message is {human_age(overdue)} past due", backlog_remedy)
        )
    if age is not None and age >= spec.age_warning:
        level = Status.CRITICAL if age >= spec.age_critical else Status.WARNING
        limit = spec.age_critical if level is Status.CRITICAL else spec.age_warning
        findings.append(
            (level, f"oldest message {human_age(age)} old (limit {limit}s)", backlog_remedy)
        )
    if findings:
        findings.sort(key=lambda finding: -finding[0].severity)
        status = findings[0][0]
        problems = "; ".join(problem for _, problem, _ in findings)
        return CheckResult(
            name,
            status,
            f"{problems} ({detail})",
            findings[0][2],
            latency_ms=latency,
            data=data,
        )
    return ok(name, detail, latency_ms=latency, data=data)


def check_queues(ctx: HealthContext) -> list[CheckResult]:
    specs = queue_table().specs
    started = time.perf_counter()
    try:
        snapshot = ctx.queues()
    except Exception as exc:
        return [
            critical(
                f"queue.{spec.name}",
                f"cannot read the queue: {exc}",
                "fix the broker connection first (check broker)",
            )
            for spec in specs
        ]
    latency = ms(time.perf_counter() - started)
    try:
        consumers = ctx.census().consumers
    except Exception:
        consumers = None
    results = []
    for spec in specs:
        holders = None if consumers is None else consumers.get(spec.name, [])
        counted = (snapshot.consumers or {}).get(spec.name)
        if holders is None and counted is not None:
            # RabbitMQ counts consumers itself: use that when the workers did not answer.
            holders = [f"consumer {number + 1}" for number in range(counted)]
        results.append(
            _queue_result(spec, snapshot.queues[spec.name], holders, latency, snapshot.ages)
        )
    return results


# --- Redis ---------------------------------------------------------------------
def check_eviction_policy(ctx: HealthContext) -> CheckResult:
    if ctx.amqp:
        return _not_on_rabbitmq("redis.eviction")
    info = ctx.redis_info()
    policy = info.get("maxmemory_policy", "?")
    data = {"maxmemory_policy": policy}
    if policy != "noeviction":
        return critical(
            "redis.eviction",
            f"maxmemory-policy is {policy}: under memory pressure Redis may evict queue keys, "
            "losing tasks without a trace",
            "set `maxmemory-policy noeviction` in redis.conf (now: CONFIG SET maxmemory-policy "
            "noeviction) and keep the cache in a Redis of its own if it needs eviction",
            data=data,
        )
    return ok("redis.eviction", "maxmemory-policy noeviction", data=data)


def check_persistence(ctx: HealthContext) -> CheckResult:
    if ctx.amqp:
        return _not_on_rabbitmq("redis.persistence")
    info = ctx.redis_info()
    aof = bool(int(info.get("aof_enabled", 0)))
    save = ctx.redis_config("save")
    rdb = bool(save) if save is not None else None
    data = {
        "aof_enabled": aof,
        "rdb_save": save,
        "aof_last_write_status": info.get("aof_last_write_status"),
        "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
        "rdb_changes_since_last_save": info.get("rdb_changes_since_last_save"),
    }
    remedy = (
        "set `appendonly yes` and `appendfsync everysec` in redis.conf "
        "(now: CONFIG SET appendonly yes; CONFIG REWRITE)"
    )
    if aof and info.get("aof_last_write_status", "ok") != "ok":
        return critical(
            "redis.persistence",
            f"AOF is on but its last write failed ({info.get('aof_last_write_status')})",
            "check the Redis log and free disk space on the Redis host",
            data=data,
        )
    if not aof:
        if rdb is False:
            detail = "no persistence (AOF off, no RDB snapshots): a Redis restart loses every "
            detail += "queued message"
        elif rdb:
            detail = (
                f"AOF off (RDB snapshots only: save {save}): a Redis restart loses the "
                "messages queued since the last snapshot"
            )
        else:
            detail = "AOF off: a Redis restart loses queued messages"
        return warning("redis.persistence", detail, remedy, data=data)
    if info.get("rdb_last_bgsave_status", "ok") != "ok":
        return warning(
            "redis.persistence",
            "AOF on, but the last RDB snapshot failed",
            "check the Redis log and free disk space on the Redis host",
            data=data,
        )
    return ok("redis.persistence", "AOF on" + (f", RDB save {save}" if save else ""), data=data)


def check_redis_memory(ctx: HealthContext) -> CheckResult:
    if ctx.amqp:
        return _not_on_rabbitmq("redis.memory")
    info = ctx.redis_info()
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    data = {
        "used_memory": used,
        "maxmemory": limit,
        "used_memory_peak": int(info.get("used_memory_peak", 0)),
    }
    if not limit:
        return ok(
            "redis.memory",
            f"{human_bytes(used)} used, no maxmemory limit (bounded by the host's memory)",
            data=data,
        )
    percent = 100 * used / limit
    data["percent"] = round(percent, 1)
    detail = f"{human_bytes(used)} of {human_bytes(limit)} used ({percent:.0f}%)"
    remedy = (
        "raise maxmemory, drain the queues (are workers keeping up?) or move the cache "
        "and results to another Redis; with noeviction a full Redis refuses new tasks"
    )
    if percent >= conf.number("REDIS_MEMORY_CRITICAL_PERCENT"):
        return critical("redis.memory", detail, remedy, data=data)
    if percent >= conf.number("REDIS_MEMORY_WARNING_PERCENT"):
        return warning("redis.memory", detail, remedy, data=data)
    return ok("redis.memory", detail, data=data)


def check_redis_clients(ctx: HealthContext) -> CheckResult:
    if ctx.amqp:
        return _not_on_rabbitmq("redis.clients")
    info = ctx.redis_info()
    connected = int(info.get("connected_clients", 0))
    blocked = int(info.get("blocked_clients", 0))
    rejected = int(info.get("rejected_connections", 0))
    limit = info.get("maxclients")
    if limit is None:
        limit = ctx.redis_config("maxclients")
    limit = int(limit) if limit else None
    data = {
        "connected": connected,
        "blocked": blocked,
        "maxclients": limit,
        "rejected_connections": rejected,
    }
    detail = f"{connected} connected" + (f" of {limit}" if limit else "")
    detail += f", {blocked} blocked (waiting on BRPOP: idle workers)"
    if limit and connected >= 0.9 * limit:
        return critical(
            "redis.clients",
            detail + ": near maxclients",
            "raise maxclients or lower REDIS_MAX_CONNECTIONS / worker counts",
            data=data,
        )
    if rejected:
        return warning(
            "redis.clients",
            f"{detail}; {rejected} connections rejected since start",
            "raise maxclients; rejected connections are failed publishes or idle workers",
            data=data,
        )
    return ok("redis.clients", detail, data=data)


def check_redis_server(ctx: HealthContext) -> CheckResult:
    if ctx.amqp:
        return _not_on_rabbitmq("redis.server")
    info = ctx.redis_info()
    keyspace = {
        key: {"keys": value.get("keys"), "expires": value.get("expires")}
        for key, value in info.items()
        if key.startswith("db") and isinstance(value, dict)
    }
    evicted = int(info.get("evicted_keys", 0))
    uptime = int(info.get("uptime_in_seconds", 0))
    data = {
        "version": info.get("redis_version"),
        "uptime_s": uptime,
        "keyspace": keyspace,
        "evicted_keys": evicted,
        "expired_keys": int(info.get("expired_keys", 0)),
        "role": info.get("role"),
    }
    keys = ", ".join(f"{db}: {v['keys']} keys" for db, v in keyspace.items()) or "no keys"
    detail = (
        f"Redis {data['version']} ({data['role']}), up {human_age(uptime)}; {keys}; "
        f"{evicted} keys evicted since start"
    )
    if evicted:
        return warning(
            "redis.server",
            detail,
            "evicted keys may have been queued tasks: set maxmemory-policy noeviction and "
            "compare task counts (dead letters, missing results)",
            data=data,
        )
    return ok("redis.server", detail, data=data)


# --- configuration, beat, dead letters, outbox, Flower ---------------------------------
def check_config(ctx: HealthContext) -> CheckResult:
    from taskcore.config_audit import audit

    problems = audit(ctx.app.conf)
    data = {
        "problems": [
            {"code": p.code, "level": p.level, "message": p.message, "remedy": p.remedy}
            for p in problems
        ]
    }
    if not problems:
        return ok(
            "config",
            "Celery settings pass the audit (visibility timeout, JSON only, "
            "result expiry, declared queues)",
            data=data,
        )
    worst = next((p for p in problems if p.level == "critical"), problems[0])
    detail = "; ".join(p.message for p in problems)
    make = critical if worst.level == "critical" else warning
    return make("config", detail, worst.remedy, data=data)


def check_beat(ctx: HealthContext) -> CheckResult:
    from taskcore.beat_liveness import read_heartbeat, read_lock

    warn_after = conf.number("BEAT_HEARTBEAT_WARNING")
    critical_after = conf.number("BEAT_HEARTBEAT_CRITICAL")
    try:
        client = ctx.liveness()
        heartbeat = read_heartbeat(client)
        holder, lock_ttl = read_lock(client)
    except Exception as exc:
        return critical(
            "beat",
            f"cannot read the beat heartbeat: {exc}",
            "fix the broker connection first (check broker)",
        )
    start_beat = (
        "start beat with the liveness scheduler: celery -A admin_backend beat --scheduler "
        "taskcore.beat_liveness:LivenessScheduler (./start_celery.sh does); logs/celery_beat.log"
    )
    if heartbeat is None:
        return warning(
            "beat",
            "no beat heartbeat recorded: beat is not running, or runs without the liveness "
            "scheduler; periodic tasks (health checks, cleanups) are not being sent",
            start_beat,
            data={"age_s": None, "warning_s": warn_after, "critical_s": critical_after},
        )
    age = max(0.0, time.time() - float(heartbeat.get("ts", 0)))
    data = {
        "age_s": round(age, 3),
        "pid": heartbeat.get("pid"),
        "host": heartbeat.get("host"),
        "lock_held": holder is not None,
        "lock_ttl_s": lock_ttl,
        "warning_s": warn_after,
        "critical_s": critical_after,
    }
    who = f"pid {heartbeat.get('pid')} on {heartbeat.get('host')}"
    if age >= critical_after:
        return critical(
            "beat",
            f"last beat heartbeat {human_age(age)} ago ({who}): beat is stopped or stuck, "
            "periodic tasks are not being sent",
            start_beat,
            data=data,
        )
    if age >= warn_after:
        return warning(
            "beat",
            f"last beat heartbeat {human_age(age)} ago ({who}, limit {warn_after:g}s): beat "
            "is stopped, stuck or slow",
            start_beat,
            data=data,
        )
    return ok("beat", f"beat alive: heartbeat {human_age(age)} ago ({who})", data=data)


def check_dead_letters(ctx: HealthContext) -> CheckResult:
    from django.utils import timezone

    from taskcore.models import DeadLetter

    try:
        waiting = DeadLetter.objects.filter(replayed_at__isnull=True)
        total = waiting.count()
        last_hour = waiting.filter(first_seen__gte=timezone.now() - timedelta(hours=1)).count()
        refused = waiting.filter(reason=DeadLetter.Reason.REFUSED).count()
    except Exception as exc:
        return warning(
            "dead_letters",
            f"cannot count dead letters: {type(exc).__name__}: {exc}",
            "run `python manage.py migrate`; check the database",
        )
    data = {"available": True, "unreplayed": total, "last_hour": last_hour, "refused": refused}
    detail = f"{total} dead letters not replayed, {last_hour} in the last hour"
    if refused:
        detail += (
            f"; {refused} refused messages (not valid task messages: "
            "`manage.py dead_letters list --reason refused`, then purge)"
        )
    remedy = (
        "review them in the admin (Task platform > Dead letters): fix the cause, then "
        "replay or discard"
    )
    if last_hour and last_hour >= conf.number("DEAD_LETTERS_CRITICAL_PER_HOUR"):
        return critical(
            "dead_letters",
            detail + ": tasks are failing for good at a high rate",
            remedy,
            data=data,
        )
    if total:
        return warning("dead_letters", detail, remedy, data=data)
    return ok("dead_letters", "no dead letters waiting", data=data)


def check_outbox(ctx: HealthContext) -> CheckResult:
    from django.utils import timezone

    from taskcore.outbox import waiting_rows

    try:
        pending = waiting_rows()
        backlog = pending.count()
        first = pending.order_by("created_at").values_list("created_at", flat=True).first()
        oldest = (timezone.now() - first).total_seconds() if first else None
    except Exception as exc:
        return warning(
            "outbox",
            f"cannot read the outbox: {type(exc).__name__}: {exc}",
            "run `python manage.py migrate`; check the database",
        )
    data = {
        "available": True,
        "backlog": backlog,
        "oldest_age_s": None if oldest is None else round(oldest, 3),
    }
    detail = f"{backlog} messages not yet published" + (
        f", oldest {human_age(oldest)}" if oldest is not None else ""
    )
    remedy = (
        "the outbox relay is not keeping up or not running: check beat and the "
        "maintenance worker, and the broker connection"
    )
    if backlog >= conf.number("OUTBOX_BACKLOG_CRITICAL") or (
        oldest is not None and oldest >= conf.number("OUTBOX_AGE_CRITICAL")
    ):
        return critical("outbox", detail, remedy, data=data)
    if backlog >= conf.number("OUTBOX_BACKLOG_WARNING") or (
        oldest is not None and oldest >= conf.number("OUTBOX_AGE_WARNING")
    ):
        return warning("outbox", detail, remedy, data=data)
    return ok("outbox", detail, data=data)


def check_flower(ctx: HealthContext) -> CheckResult:
    url = conf.text("FLOWER_URL").strip()
    if not url or url.lower() in ("off", "none", "0"):
        return ok("flower", "not checked (FLOWER_URL is off)", data={"checked": False})
    shown = mask_url(url)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=min(ctx.timeout, 2.0)) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        return warning(
            "flower",
            f"Flower does not answer at {shown}: {reason}",
            "start Flower (celery -A admin_backend flower --conf=deploy/flowerconfig.py) or set "
            "FLOWER_URL to where it runs (FLOWER_URL=off to skip)",
            data={"checked": True, "url": shown},
        )
    rtt = ms(time.perf_counter() - started)
    data = {"checked": True, "url": shown, "http_status": status}
    if status >= 500 or status == 404:
        return warning(
            "flower",
            f"Flower at {shown} answers HTTP {status}",
            "see logs/flower.log",
            latency_ms=rtt,
            data=data,
        )
    return ok(
        "flower",
        f"Flower answers at {shown} (HTTP {status}) in {rtt:.0f} ms",
        latency_ms=rtt,
        data=data,
    )


# --- round trips ---------------------------------------------------------------------
def check_round_trips(ctx: HealthContext) -> list[CheckResult]:
    """Send health_check_task to every queue and time each answer."""
    from celery.exceptions import TimeoutError as ResultTimeout
    from celery.result import ResultSet
    from django.conf import settings

    # The project names its probe task (TASKCORE_HEALTH_CHECK_TASK): the platform
    # knows no app's tasks.
    probe_task = ctx.app.signature(settings.TASKCORE_HEALTH_CHECK_TASK)
    specs = queue_table().specs
    try:
        ctx.broker_ping_ms()
    except Exception as exc:
        return [
            critical(
                f"roundtrip.{spec.name}",
                f"not sent: broker unreachable ({exc})",
                "fix the broker connection first (check broker)",
            )
            for spec in specs
        ]
    budget = max(0.5, ctx.remaining() - 0.2)
    sent: dict[str, tuple[str, float]] = {}
    results = []
    for spec in specs:
        sending = time.perf_counter()
        result = probe_task.apply_async(
            kwargs={"sent_at": time.time()},
            queue=spec.name,
            # Never run late: a probe left in an unconsumed queue is dropped when it expires.
            expires=budget,
        )
        sent[result.id] = (spec.name, sending)
        results.append(result)
    answered: dict[str, tuple[float, object]] = {}

    def on_result(task_id, value):
        answered[task_id] = (time.perf_counter(), value)

    try:
        ResultSet(results).join_native(
            timeout=budget, callback=on_result, propagate=False, interval=0.01
        )
    except ResultTimeout:
        pass
    except Exception as exc:
        return [
            critical(
                f"roundtrip.{spec.name}", f"results unreadable: {exc}", "check the result backend"
            )
            for spec in specs
        ]
    try:
        consumers = ctx.census().consumers
    except Exception:
        consumers = {}
    outcomes = []
    for result in results:
        queue, sent_clock = sent[result.id]
        name = f"roundtrip.{queue}"
        if result.id not in answered:
            holders = consumers.get(queue, [])
            if holders:
                outcomes.append(
                    warning(
                        name,
                        f"no answer within {budget:.1f}s although {len(holders)} workers consume "
                        f"{queue}: busy with long tasks, or stuck",
                        f"see what runs on {queue}: celery_monitor, celery -A admin_backend "
                        "inspect active",
                        data={"answered": False, "consumers": len(holders)},
                    )
                )
            else:
                outcomes.append(
                    critical(
                        name,
                        f"no answer within {budget:.1f}s: no worker consumes {queue}",
                        f"start a worker consuming {queue}",
                        data={"answered": False, "consumers": 0},
                    )
                )
            continue
        done_clock, report = answered[result.id]
        rtt = ms(done_clock - sent_clock)
        if not isinstance(report, dict):
            outcomes.append(
                critical(
                    name,
                    f"health_check_task failed: {report!r}",
                    "see logs/celery_tasks.log",
                    latency_ms=rtt,
                )
            )
            continue
        worker = (report.get("worker") or {}).get("hostname", "?")
        data = {
            "answered": True,
            "round_trip_ms": rtt,
            "queue_wait_ms": report.get("queue_wait_ms"),
            "worker": worker,
            "database_ms": (report.get("database") or {}).get("latency_ms"),
            "cache_ms": (report.get("cache") or {}).get("latency_ms"),
        }
        if not report.get("ok", False):
            failed = [
                f"{part}: {(report.get(part) or {}).get('error', 'failed')}"
                for part in ("database", "cache")
                if not (report.get(part) or {}).get("ok", False)
            ]
            outcomes.append(
                critical(
                    name,
                    f"worker {worker} answered in {rtt:.0f} ms but cannot reach "
                    + "; ".join(failed),
                    "check the worker host's DATABASE_URL / CACHE_URL and network",
                    latency_ms=rtt,
                    data=data,
                )
            )
            continue
        outcomes.append(
            ok(
                name,
                f"answered by {worker} in {rtt:.0f} ms (queue wait "
                f"{data['queue_wait_ms'] or 0:.0f} ms, database {data['database_ms']} ms, "
                f"cache {data['cache_ms']} ms)",
                latency_ms=rtt,
                data=data,
            )
        )
        result.forget()
    return outcomes


def check_log_files(ctx: HealthContext) -> CheckResult:
    """Log files a process could not write in the last few minutes (a full disk).

    Processes note them in the state Redis (``taskcore.logging.RotatingFileHandler``),
    so this reports every host's, not only this one's.
    """
    from taskcore.logging import UNWRITABLE_LOGS_KEY
    from taskcore.redis_clients import state_redis

    try:
        noted = state_redis(timeout=ctx.timeout).hgetall(UNWRITABLE_LOGS_KEY)
    except Exception as exc:
        return ok("log_files", f"not checked: the state Redis does not answer ({exc})")
    recent = []
    for field, value in noted.items():
        at, _, problem = value.decode("utf-8", "replace").partition(" ")
        age = time.time() - float(at or 0)
        if age <= 300:
            host, pid, filename = field.decode("utf-8", "replace").split(" ", 2)
            recent.append(f"{filename} on {host} (pid {pid}, {human_age(age)} ago): {problem}")
    if recent:
        return warning(
            "log_files",
            f"{len(recent)} log file(s) could not be written: " + "; ".join(sorted(recent)[:5]),
            "free disk space under LOG_DIR (or fix its permissions); the work goes on, "
            "but its log lines are lost until then",
            data={"unwritable": sorted(recent)},
        )
    return ok("log_files", "every process writes its log files")


# --- registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[HealthContext], CheckResult | list[CheckResult]]
    # "core": every run; "redis": with --check-redis; "tasks": with --test-tasks.
    group: str = "core"
    # Part of the web process's readiness (/health/ready).
    readiness: bool = False
    # Produces one result per queue ("<name>.<queue>"), not one named after it.
    per_queue: bool = False

    def names(self) -> tuple[str, ...]:
        """The results it produces, for reporting a check that ran out of time."""
        if self.per_queue:
            prefix = "queue" if self.name == "queues" else self.name
            return tuple(f"{prefix}.{queue}" for queue in queue_table().names)
        return (self.name,)


CHECKS: tuple[Check, ...] = (
    Check("broker", check_broker, readiness=True),
    Check("result_backend", check_result_backend),
    Check("database", check_database, readiness=True),
    Check("cache", check_cache, readiness=True),
    Check("workers", check_workers),
    Check("queues", check_queues, per_queue=True),
    Check("redis.eviction", check_eviction_policy),
    Check("redis.persistence", check_persistence),
    Check("config", check_config),
    Check("beat", check_beat),
    Check("dead_letters", check_dead_letters),
    Check("outbox", check_outbox),
    Check("log_files", check_log_files),
    Check("flower", check_flower),
    Check("redis.memory", check_redis_memory, group="redis"),
    Check("redis.clients", check_redis_clients, group="redis"),
    Check("redis.server", check_redis_server, group="redis"),
    Check(
        "roundtrip",
        check_round_trips,
        group="tasks",
        per_queue=True,
    ),
)
CHECKS_BY_NAME = {check.name: check for check in CHECKS}
