"""B1: throughput of tiny tasks, our full stack against bare Celery and Dramatiq.

    .venv/bin/pip install -e ".[bench]"                 # Dramatiq (else: auto-installed)
    .venv/bin/python bench/bench_throughput.py          # 20,000 tasks x 2 workloads x 3 runs
    .venv/bin/python bench/bench_throughput.py --tasks 5000 --runs 1 --systems ours \\
        --ours-shape solo:1:32:2                         # try another worker shape

One command, one run, on a private redis-server (``start_redis``) and a fresh
SQLite database (migrated). Workloads: ``noop`` (the task does nothing) and
``io`` (the task sleeps 2 ms, like a small network call). Systems:

- ``bare``: a minimal Celery app defined here (no Django) with the spec's
  settings: prefork, concurrency 2, acks late, reject on worker lost, track
  started, prefetch multiplier 1, max tasks per child 1000;
- ``ours``: real ``celery -A admin_backend worker`` processes shaped as the
  queue table says for the ``default`` queue (``worker_commands.for_group``),
  with everything on: BaseTask, lifecycle signals and log lines into the
  rotating log files, ``sent_at`` headers, task events;
- ``dramatiq``: Dramatiq on the same Redis, ``dramatiq -p 2 -t 8`` (its defaults).

Then, beside the bursts, in the same run, the steady-load mode (``--steady``,
default 100, 300 and 1,000 tasks/s, ``--steady-seconds`` each, ``noop``): the
producer sends one task every 1/rate seconds (after 50 warm-up sends that are
not counted) and reports its CPU per send (the sending thread's, sleeps
excluded); the workers' CPU (every process of theirs, from /proc, pool children
included) over the paced run divided by the tasks gives the worker CPU per task,
idle cost included; pickup latency is enqueue to start; the Redis commands per
task (INFO commandstats, all clients, commands inside scripts included) show
where round trips go. ``--systems bare,ours,ours-outbox`` also measures
``send_after_commit`` (one transaction per call, charged in full) against ours'
workers; ``ours-outbox-request`` sends it inside a transaction that writes a row
of its own (a session, as a web request would): there the caller's CPU per send
is what the send adds to that transaction (each paced request is followed by the
same request without the send; the difference of the means).

Each task's only work (besides the sleep) is one RPUSH of its enqueue-to-start
latency (the enqueue time travels as the task's argument), the same in all
three systems; the run ends when the list holds every task. Timed from the
first enqueue (one ``delay()``/``send()`` per task, in a separate producer
process, while the workers consume) to the last task's start. All tasks are
fire and forget (no result stored) in every system.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
RECORD_KEY = "b1:latency"
QUEUE = "b1"  # bare and dramatiq; ours routes bench.* to the table's "default" queue
IO_SLEEP = 0.002
# Steady mode: sends before the paced ones, not measured (and their tasks not counted).
WARM_UP_SENDS = 50

# --- worker side: the tasks of each system, chosen by B1_SYSTEM ---------------

_client = None
_client_pid = None


def _record(enqueued_at: float) -> None:
    """The tasks' common work: push the enqueue-to-start latency (one round trip)."""
    global _client, _client_pid
    started = time.time()
    if _client is None or _client_pid != os.getpid():  # one connection per (forked) process
        import redis

        _client = redis.Redis.from_url(os.environ["B1_RECORD_URL"])
        _client_pid = os.getpid()
    _client.rpush(RECORD_KEY, started - enqueued_at)


def _noop(enqueued_at: float) -> None:
    _record(enqueued_at)


def _io(enqueued_at: float) -> None:
    _record(enqueued_at)
    time.sleep(IO_SLEEP)


def bare_celery_app(broker_url: str):
    """A minimal Celery app with the spec's settings, no Django."""
    from celery import Celery

    app = Celery("b1_bare", broker=broker_url, backend=broker_url)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=10,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1000,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=QUEUE,
        worker_hijack_root_logger=True,
    )
    return app


TASKS: dict[str, object] = {}
_SYSTEM = os.environ.get("B1_SYSTEM")
if _SYSTEM == "bare":
    bare_app = bare_celery_app(os.environ["B1_BROKER_URL"])
    TASKS["noop"] = bare_app.task(name="bench.noop", ignore_result=True)(_noop)
    TASKS["io"] = bare_app.task(name="bench.io", ignore_result=True)(_io)
elif _SYSTEM == "ours":
    from admin_backend.celery import app as ours_app

    TASKS["noop"] = ours_app.task(name="bench.noop", ignore_result=True)(_noop)
    TASKS["io"] = ours_app.task(name="bench.io", ignore_result=True)(_io)
elif _SYSTEM == "dramatiq":
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=os.environ["B1_BROKER_URL"]))
    TASKS["noop"] = dramatiq.actor(_noop, actor_name="b1_noop", queue_name=QUEUE, max_retries=0)
    TASKS["io"] = dramatiq.actor(_io, actor_name="b1_io", queue_name=QUEUE, max_retries=0)


# --- producer side: a separate process enqueues, one call per task -------------


def produce(system: str, workload: str, count: int, mode: str) -> dict:
    variant, system = system, system.split("-")[0]
    if system == "ours":
        import django

        django.setup()
    task = TASKS[workload]
    send = task.send if system == "dramatiq" else task.delay
    baseline = None
    if variant == "ours-outbox":
        send = _send_after_commit(task)
    if variant == "ours-outbox-request":
        send, baseline = _request_with_send_after_commit(task)
    if mode == "delay-no-sent-at":
        from celery import signals

        from taskcore.publishing import stamp_sent_at

        signals.before_task_publish.disconnect(stamp_sent_at)
    if mode.startswith("paced:"):
        return produce_paced(send, count, float(mode.split(":", 1)[1]), baseline)
    started = time.time()
    if mode == "fanout" and system == "dramatiq":
        mode = "delay"  # Dramatiq's send() is its bulk way already (one LPUSH each)
    if mode == "fanout":
        from taskcore.fanout import publish_many

        publish_many(task, ((time.time(),) for _ in range(count)))
    else:
        for _ in range(count):
            send(time.time())
    ended = time.time()
    return {"start": started, "end": ended}


def _send_after_commit(task):
    """One transaction per call, as a web request that writes a row and sends a task."""
    from django.db import transaction

    from taskcore.outbox import send_after_commit

    def send(*args):
        with transaction.atomic():
            send_after_commit(task, args)

    return send


def _request_with_send_after_commit(task):
    """A web request's transaction: it writes its own row (a session) and sends a task.

    Returns the request and the same request without the send: the difference is
    what ``send_after_commit`` adds to a transaction the request has anyway.
    """
    import uuid

    from django.contrib.sessions.models import Session
    from django.db import transaction
    from django.utils import timezone

    from taskcore.outbox import send_after_commit

    def write_own_row():
        Session.objects.create(
            session_key=uuid.uuid4().hex, session_data="b1", expire_date=timezone.now()
        )

    def request(*args):
        with transaction.atomic():
            write_own_row()
            send_after_commit(task, args)

    def request_without_send():
        with transaction.atomic():
            write_own_row()

    return request, request_without_send


def produce_paced(send, count: int, rate: float, baseline=None) -> dict:
    """Steady load: one send every 1/rate seconds; the caller's CPU per send, sleeps excluded.

    With ``baseline`` (the same call without the send), each send is followed by
    one baseline call, and the CPU per send is the difference of the two means.
    """
    for _ in range(WARM_UP_SENDS):  # connections, imports, caches: not what a send costs
        send(time.time())
        if baseline:
            baseline()
    print("warm", flush=True)
    sys.stdin.readline()  # the orchestrator has counted the warm-up tasks out: go
    cpu = baseline_cpu = 0.0
    interval = 1.0 / rate
    process_cpu = time.process_time()
    started = time.time()
    next_at = time.perf_counter()
    for _ in range(count):
        now = time.perf_counter()
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        before = time.thread_time()
        send(time.time())
        cpu += time.thread_time() - before
        if baseline:
            before = time.thread_time()
            baseline()
            baseline_cpu += time.thread_time() - before
    return {
        "start": started,
        "end": time.time(),
        "cpu_per_send": (cpu - baseline_cpu) / count,
        # Also the producer's other threads and the pacing loop itself.
        "process_cpu_per_send": (time.process_time() - process_cpu) / count,
    }


# --- orchestration ------------------------------------------------------------


def parse_shape(text: str) -> dict:
    """``POOL:CONCURRENCY:PREFETCH[:WORKERS]``, e.g. ``solo:1:32:2``."""
    parts = text.split(":")
    return {
        "pool": parts[0],
        "concurrency": int(parts[1]),
        "prefetch": int(parts[2]),
        "workers": int(parts[3]) if len(parts) > 3 else 1,
    }


class Bench:
    def __init__(self, options):
        self.options = options
        self.work_dir = Path(tempfile.mkdtemp(prefix="b1-"))
        from taskcore.testing.redis_server import start_redis

        self.redis = start_redis(self.work_dir / "redis")
        self.client = self.redis.client()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")]),
            "B1_BROKER_URL": self.redis.url,
            "B1_RECORD_URL": self.redis.url,
            "REDIS_URL": self.redis.url,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url,
            "DATABASE_URL": f"sqlite:///{self.work_dir / 'db.sqlite3'}",
            "LOG_DIR": str(self.work_dir / "logs"),
            "SECRET_KEY": "b1-benchmark-only",
            "DEBUG": "0",
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)  # Celery's Django fixup would load it
        # ours-norec: the same stack without the reports app's TaskRun row per task.
        (self.work_dir / "b1_settings_norec.py").write_text(
            "from admin_backend.settings import *  # noqa: F403\nREPORTS_RECORD_TASK_RUNS = False\n"
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0", "--skip-checks"],
            cwd=PROJECT_DIR,
            env=self.system_env("ours"),
            check=True,
        )
        self.processes: list[subprocess.Popen] = []

    def system_env(self, system: str) -> dict[str, str]:
        """ours: Django settings; ours-norec: TaskRun recording off; ours-lean: and no
        lifecycle lines; ours-outbox: ours, the producer sends with send_after_commit, a
        transaction per send; ours-outbox-request: the same inside a transaction that
        writes a row of its own, the caller's CPU being what the send adds to it.
        bare-spec: bare Celery also sending task events (-E, for Flower) and writing its
        task lines to a log file, the per-task work the spec asks of a deployment.
        bare and dramatiq: no Django at all."""
        env = {**self.env, "B1_SYSTEM": system.split("-")[0]}
        if system.startswith("ours"):
            env["DJANGO_SETTINGS_MODULE"] = "admin_backend.settings"
            if system in ("ours-norec", "ours-lean"):
                env["DJANGO_SETTINGS_MODULE"] = "b1_settings_norec"
                env["PYTHONPATH"] = os.pathsep.join([str(self.work_dir), env["PYTHONPATH"]])
            if system == "ours-lean" or self.options.no_lifecycle_log:
                env["CELERY_TASK_LIFECYCLE_LOG"] = "0"
        return env

    # workers

    def worker_commands(self, system: str) -> list[list[str]]:
        if system == "dramatiq":
            return [
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    "bench.bench_throughput",
                    "--processes",
                    "2",
                    "--threads",
                    "8",
                ]
            ]
        if system in ("bare", "bare-spec"):
            shape = parse_shape(self.options.bare_shape)
            base = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.bench_throughput:bare_app",
                "worker",
                "--loglevel=INFO",
                f"--queues={QUEUE}",
                f"--pool={shape['pool']}",
                f"--concurrency={shape['concurrency']}",
                f"--prefetch-multiplier={shape['prefetch']}",
                "--max-tasks-per-child=1000",
            ]
            if system == "bare-spec":
                # The work the spec asks of a deployment that ours does per task:
                # task events (Flower) and a task log file (Celery's own lines).
                base += ["--task-events", f"--logfile={self.work_dir / 'bare-tasks.log'}"]
            return [[*base, f"--hostname={system}{i}@%h"] for i in range(shape["workers"])]
        from admin_backend import queues, worker_commands

        group = queues.QUEUES_BY_NAME[queues.DEFAULT_QUEUE].worker_group
        # The table's processes for the group (worker_processes of them, own node names).
        table = [list(c.args) for c in worker_commands.processes_of_group(group)]
        if not self.options.ours_shape:
            commands = table
        else:
            shape = parse_shape(self.options.ours_shape)
            command = [
                arg
                for arg in table[0]
                if not arg.startswith(
                    ("--pool=", "--concurrency=", "--prefetch-multiplier=", "--max-")
                )
            ]
            command += [
                f"--pool={shape['pool']}",
                f"--concurrency={shape['concurrency']}",
                f"--prefetch-multiplier={shape['prefetch']}",
            ]
            if shape["pool"] == "prefork":
                command.append("--max-tasks-per-child=1000")
            commands = [
                [
                    arg.replace("@%h", f"-b1w{i}@%h") if arg.startswith("--hostname") else arg
                    for arg in command
                ]
                for i in range(shape["workers"])
            ]
        return [[sys.executable, "-m", *c, "--include=bench.bench_throughput"] for c in commands]

    def start_workers(self, system: str) -> None:
        env = self.system_env(system)
        log = (self.work_dir / f"workers-{system}.out").open("ab")
        for command in self.worker_commands(system):
            self.processes.append(
                subprocess.Popen(
                    command,
                    cwd=PROJECT_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        # Warm up (and wait for readiness): every worker process has started and run tasks.
        self.client.delete(RECORD_KEY)
        self.enqueue(system, "noop", 50)
        self.wait_for(50, timeout=120)
        time.sleep(1.0)
        self.client.delete(RECORD_KEY)

    def stop_workers(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes = []

    def enqueue(self, system: str, workload: str, count: int, mode: str = "delay", stdin=None):
        return subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--produce",
                system,
                workload,
                str(count),
                mode,
            ],
            cwd=PROJECT_DIR,
            env=self.system_env(system),
            stdout=subprocess.PIPE,
            stdin=stdin,
        )

    def wait_for(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.llen(RECORD_KEY) >= count:
                return time.time()
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited with {process.returncode}; see {self.work_dir}"
                    )
            time.sleep(0.01)
        raise RuntimeError(
            f"only {self.client.llen(RECORD_KEY)} of {count} tasks ran within {timeout}s"
        )

    def measure(self, system: str, workload: str) -> dict:
        count = self.options.tasks
        self.client.delete(RECORD_KEY)
        load = os.getloadavg()[0]
        producer = self.enqueue(system, workload, count, self.options.publish)
        out, _ = producer.communicate()
        if producer.returncode:
            raise RuntimeError(f"producer failed for {system}/{workload}")
        times = json.loads(out.decode().strip().splitlines()[-1])
        finished = self.wait_for(count, timeout=self.options.timeout)
        latencies = sorted(float(v) for v in self.client.lrange(RECORD_KEY, 0, -1))
        return {
            "system": system,
            "workload": workload,
            "tasks_per_s": count / (finished - times["start"]),
            "enqueue_per_s": count / (times["end"] - times["start"]),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "load_before": load,
        }

    def workers_cpu(self) -> float:
        """CPU seconds of every worker process so far (pool children too, also the exited)."""
        ticks = os.sysconf("SC_CLK_TCK")
        sessions = {p.pid for p in self.processes}
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the name: state ppid pgrp session ... utime(12) stime(13) cutime cstime
            if int(fields[3]) in sessions:
                total += sum(int(v) for v in fields[11:15])
        return total / ticks

    def measure_steady(self, system: str, workload: str, rate: float) -> dict:
        """Paced publishing at ``rate`` for --steady-seconds: CPU per task and pickup latency."""
        count = max(1, int(rate * self.options.steady_seconds))
        self.client.delete(RECORD_KEY)
        load = os.getloadavg()[0]
        producer = self.enqueue(system, workload, count, f"paced:{rate}", stdin=subprocess.PIPE)
        # The producer's warm-up sends run first: start counting once they have run.
        producer.stdout.readline()
        self.wait_for(WARM_UP_SENDS, timeout=120)
        time.sleep(0.5)
        self.client.delete(RECORD_KEY)
        cpu_before, wall_before = self.workers_cpu(), time.monotonic()
        commands_before = self.redis_commands()
        out, _ = producer.communicate(b"go\n")
        if producer.returncode:
            raise RuntimeError(f"producer failed for {system}/{workload}")
        times = json.loads(out.decode().strip().splitlines()[-1])
        self.wait_for(count, timeout=self.options.timeout)
        cpu, wall = self.workers_cpu() - cpu_before, time.monotonic() - wall_before
        commands = self.redis_commands()
        commands.subtract(commands_before)
        latencies = sorted(float(v) for v in self.client.lrange(RECORD_KEY, 0, -1))
        return {
            "system": system,
            "workload": workload,
            "rate": rate,
            "tasks": count,
            "worker_cpu_ms_per_task": 1000 * cpu / count,
            "worker_cpu_share": cpu / wall,
            "caller_cpu_ms_per_send": 1000 * times["cpu_per_send"],
            "caller_process_cpu_ms_per_send": 1000 * times["process_cpu_per_send"],
            "achieved_rate": count / (times["end"] - times["start"]),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "load_before": load,
            # Redis commands per task (all clients: producer, workers, the task's RPUSH);
            # the most frequent ones, to see where round trips go.
            "redis_commands_per_task": sum(commands.values()) / count,
            "redis_commands": {k: round(v / count, 2) for k, v in commands.most_common(14)},
        }

    def redis_commands(self):
        import collections

        stats = self.client.info("commandstats")
        return collections.Counter(
            {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
        )

    def close(self) -> None:
        self.stop_workers()
        self.redis.stop()
        if not self.options.keep:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def publish_rates(bench: Bench, count: int, runs: int) -> None:
    """Enqueue only (no worker): one delay() per task against one producer for all."""
    cases = [
        ("bare", "delay"),
        ("ours", "delay"),
        ("ours", "delay-no-sent-at"),
        ("ours", "fanout"),
        ("bare", "fanout"),
        ("dramatiq", "delay"),
    ]
    print(f"\n# publish rate, {count} messages, no worker, median of {runs}")
    print("| system | way | messages/s |\n|---|---|---:|")
    for system, mode in cases:
        rates = []
        for _ in range(runs):
            producer = bench.enqueue(system, "noop", count, mode)
            out, _ = producer.communicate()
            times = json.loads(out.decode().strip().splitlines()[-1])
            rates.append(count / (times["end"] - times["start"]))
            bench.client.flushdb()
        print(f"| {system} | {mode} | {statistics.median(rates):,.0f} |", flush=True)


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    keys = []
    for r in results:
        if (r["system"], r["workload"]) not in keys:
            keys.append((r["system"], r["workload"]))
    for system, workload in keys:
        runs = [r for r in results if r["system"] == system and r["workload"] == workload]
        row = {"system": system, "workload": workload, "runs": len(runs)}
        for field in ("tasks_per_s", "enqueue_per_s", "p50_ms", "p99_ms"):
            row[field] = statistics.median(r[field] for r in runs)
        row["tasks_per_s_all"] = [round(r["tasks_per_s"]) for r in runs]
        rows.append(row)
    return rows


def redis_version(bench: Bench) -> str:
    return bench.client.info("server")["redis_version"]


# The peer, as pyproject.toml's "bench" extra pins it.
PEER_REQUIREMENT = "dramatiq[redis]>=1.17,<3"


def ensure_peer_installed() -> None:
    """Install Dramatiq into this interpreter's environment when it is missing."""
    try:
        import dramatiq  # noqa: F401
    except ImportError:
        print(f"# installing the peer: {PEER_REQUIREMENT}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", PEER_REQUIREMENT], check=True
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default="bare,ours,dramatiq")
    parser.add_argument("--workloads", default="noop,io")
    parser.add_argument("--bare-shape", default="prefork:2:1", help="POOL:C:PREFETCH[:WORKERS]")
    parser.add_argument(
        "--ours-shape", default="", help="override the queue table's shape for the default queue"
    )
    parser.add_argument("--no-lifecycle-log", action="store_true")
    parser.add_argument("--publish", choices=("delay", "fanout"), default="delay")
    parser.add_argument(
        "--publish-only", action="store_true", help="only measure enqueue rates, no worker"
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--steady",
        default="100,300,1000",
        help="steady-load rates (tasks/s) measured after the bursts; '' for none",
    )
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--steady-workload", default="noop")
    parser.add_argument("--no-burst", action="store_true", help="only the steady-load mode")
    parser.add_argument("--produce", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.produce:
        system, workload, count, mode = options.produce
        print(json.dumps(produce(system, workload, int(count), mode)))
        return

    systems = options.systems.split(",")
    workloads = [] if options.no_burst else options.workloads.split(",")
    rates = [float(r) for r in options.steady.split(",") if r.strip()]
    steady = []
    if "dramatiq" in systems or options.publish_only:
        ensure_peer_installed()
    bench = Bench(options)
    results = []
    try:
        print(
            f"# B1 on {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"Redis {redis_version(bench)}; {options.tasks} tasks; work dir {bench.work_dir}",
            flush=True,
        )
        if options.publish_only:
            publish_rates(bench, options.tasks, options.runs)
            return
        for run in range(options.runs):
            # Systems interleaved per run: a noisy neighbour spreads over all of them.
            for system in systems:
                bench.start_workers(system)
                try:
                    for workload in workloads:
                        result = bench.measure(system, workload)
                        result["run"] = run
                        results.append(result)
                        print(
                            f"run {run} {system:9s} {workload:5s} "
                            f"{result['tasks_per_s']:8.0f} tasks/s  "
                            f"enqueue {result['enqueue_per_s']:7.0f}/s  "
                            f"p50 {result['p50_ms']:8.1f} ms  p99 {result['p99_ms']:8.1f} ms  "
                            f"load {result['load_before']:.1f}",
                            flush=True,
                        )
                    for rate in rates:
                        result = bench.measure_steady(system, options.steady_workload, rate)
                        result["run"] = run
                        steady.append(result)
                        print(
                            f"run {run} {system:9s} steady {rate:6.0f}/s "
                            f"worker {result['worker_cpu_ms_per_task']:6.3f} ms/task  "
                            f"caller {result['caller_cpu_ms_per_send']:6.3f} ms/send  "
                            f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                            f"achieved {result['achieved_rate']:6.0f}/s  "
                            f"load {result['load_before']:.1f}  "
                            f"redis {result['redis_commands_per_task']:.1f} cmds/task "
                            f"{result['redis_commands']}",
                            flush=True,
                        )
                finally:
                    bench.stop_workers()
    finally:
        bench.close()
    if options.json:
        options.json.write_text(json.dumps({"burst": results, "steady": steady}, indent=2))
    if results:
        print_burst(results)
    if steady:
        print_steady(steady)


def _ratio(value: float, peer: float | None) -> str:
    return f"{value / peer:.2f}x" if peer else "-"


def print_burst(results: list[dict]) -> None:
    rows = summarise(results)
    peer = {r["workload"]: r["tasks_per_s"] for r in rows if r["system"] == "dramatiq"}
    bare = {r["workload"]: r["tasks_per_s"] for r in rows if r["system"] == "bare"}
    print("\n# burst, medians")
    print(
        "| system | workload | tasks/s | vs bare | vs Dramatiq | enqueue/s "
        "| start latency p50 | p99 | runs (tasks/s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['system']} | {row['workload']} | {row['tasks_per_s']:,.0f} | "
            f"{_ratio(row['tasks_per_s'], bare.get(row['workload']))} | "
            f"{_ratio(row['tasks_per_s'], peer.get(row['workload']))} | "
            f"{row['enqueue_per_s']:,.0f} | {row['p50_ms']:,.0f} ms | {row['p99_ms']:,.0f} ms | "
            f"{', '.join(f'{v:,}' for v in row['tasks_per_s_all'])} |"
        )


STEADY_FIELDS = (
    "worker_cpu_ms_per_task",
    "caller_cpu_ms_per_send",
    "caller_process_cpu_ms_per_send",
    "p50_ms",
    "p99_ms",
    "achieved_rate",
)


def summarise_steady(steady: list[dict]) -> list[dict]:
    rows = []
    for rate in dict.fromkeys(r["rate"] for r in steady):
        for system in dict.fromkeys(r["system"] for r in steady):
            runs = [r for r in steady if r["rate"] == rate and r["system"] == system]
            if runs:
                row = {"rate": rate, "system": system, "runs": len(runs)}
                for field in STEADY_FIELDS:
                    row[field] = statistics.median(r[field] for r in runs)
                row["worker_all"] = [round(r["worker_cpu_ms_per_task"], 2) for r in runs]
                rows.append(row)
    return rows


def print_steady(steady: list[dict]) -> None:
    rows = summarise_steady(steady)
    print("\n# steady load, medians (CPU in ms; ratios: ours or bare to bare / to Dramatiq)")
    print(
        "| rate/s | system | worker CPU/task | vs bare | vs Dramatiq | caller CPU/send "
        "| vs bare | vs Dramatiq | pickup p50 | p99 | worker CPU/task, runs |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        same = {r["system"]: r for r in rows if r["rate"] == row["rate"]}
        bare, peer = same.get("bare"), same.get("dramatiq")

        def ratios(field, row=row, bare=bare, peer=peer):
            return (
                f"{_ratio(row[field], bare and bare[field])} | "
                f"{_ratio(row[field], peer and peer[field])}"
            )

        print(
            f"| {row['rate']:,.0f} | {row['system']} | {row['worker_cpu_ms_per_task']:.3f} | "
            f"{ratios('worker_cpu_ms_per_task')} | {row['caller_cpu_ms_per_send']:.3f} | "
            f"{ratios('caller_cpu_ms_per_send')} | {row['p50_ms']:.1f} ms | "
            f"{row['p99_ms']:.1f} ms | {', '.join(map(str, row['worker_all']))} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))
    main()
