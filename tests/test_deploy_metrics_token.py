"""start_celery.sh puts a generated HEALTH_METRICS_TOKEN into .env when there is none.

Its ``ensure_metrics_token`` function, taken from the script as it is, runs in
bash in a directory of the test's own (the full script's first-run setup would
write the project's .env).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "start_celery.sh"
TOKEN_LINE = re.compile(r"^HEALTH_METRICS_TOKEN=([A-Za-z0-9_-]{40,})$", re.MULTILINE)


def ensure_metrics_token(
    directory: Path, *, setup: str = "1", **env
) -> subprocess.CompletedProcess:
    function = re.search(
        r"^ensure_metrics_token\(\) \{\n.*?^\}\n", SCRIPT.read_text(), re.MULTILINE | re.DOTALL
    )
    assert function, "ensure_metrics_token() not found in start_celery.sh"
    program = (
        'ok() { printf "ok %s\\n" "$*"; }\n'
        f"{function.group(0)}\n"
        f'SETUP={setup}\nVENV_PY="{sys.executable}"\nensure_metrics_token\n'
    )
    environment = {k: v for k, v in os.environ.items() if k != "HEALTH_METRICS_TOKEN"}
    return subprocess.run(
        ["bash", "-c", program],
        cwd=directory,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_token_is_added_once_and_never_printed(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DEBUG=0\n# HEALTH_METRICS_TOKEN=\n")

    first = ensure_metrics_token(tmp_path)
    assert first.returncode == 0, first.stderr
    tokens = TOKEN_LINE.findall(env_file.read_text())
    assert len(tokens) == 1
    assert tokens[0] not in first.stdout + first.stderr
    assert "added a generated HEALTH_METRICS_TOKEN" in first.stdout

    second = ensure_metrics_token(tmp_path)
    assert second.returncode == 0
    assert TOKEN_LINE.findall(env_file.read_text()) == tokens  # kept, not replaced
    assert second.stdout == ""


def test_an_empty_assignment_is_filled_in_place(tmp_path):
    # The settings keep the first value .env gives: a second line would not count.
    env_file = tmp_path / ".env"
    env_file.write_text("HEALTH_METRICS_TOKEN=\nDEBUG=0\n")
    assert ensure_metrics_token(tmp_path).returncode == 0
    lines = env_file.read_text().splitlines()
    assert TOKEN_LINE.match(lines[0])
    assert lines[1:] == ["DEBUG=0"]
    assert not (tmp_path / ".env.bak").exists()


@pytest.mark.parametrize(
    ("setup", "env"),
    [("1", {"HEALTH_METRICS_TOKEN": "from-the-environment"}), ("0", {})],
)
def test_nothing_is_written_when_the_environment_decides_or_setup_is_off(tmp_path, setup, env):
    env_file = tmp_path / ".env"
    env_file.write_text("DEBUG=0\n")
    assert ensure_metrics_token(tmp_path, setup=setup, **env).returncode == 0
    assert env_file.read_text() == "DEBUG=0\n"


def test_no_env_file_no_token(tmp_path):
    # Without .env (CI, containers) the environment configures everything.
    assert ensure_metrics_token(tmp_path).returncode == 0
    assert not (tmp_path / ".env").exists()
