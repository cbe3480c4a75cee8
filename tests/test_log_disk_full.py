"""A full log disk: the work goes on, one warning a minute per file, and health says so.

The worker's log files point at /dev/full (every write fails with ENOSPC), as on
a disk with no space left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskcore.logging import LOG_FILES
from taskcore.tasks import debug_task

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(transaction=True)
def test_a_full_log_disk_costs_log_lines_not_work(app, start_worker, tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    for filename in LOG_FILES.values():
        (log_dir / filename).symlink_to("/dev/full")
    worker = start_worker(["default"], env={"LOG_DIR": str(log_dir), "CELERY_LOG_LEVEL": "INFO"})

    results = [debug_task.delay(f"line {i}") for i in range(100)]
    assert [r.get(timeout=30)["message"] for r in results] == [f"line {i}" for i in range(100)]

    output = worker.output()  # the worker's stderr
    warnings = [line for line in output.splitlines() if "cannot be written" in line]
    assert warnings, output[-3000:]
    assert len(warnings) <= 2 * len(LOG_FILES)  # one a minute per handler, not one a line
    assert "Traceback" not in output, output[-3000:]
    assert "No space left on device" in warnings[0]

    completed = subprocess.run(
        [sys.executable, "manage.py", "celery_health", "--format", "json", "--only", "log_files"],
        cwd=PROJECT_DIR,
        env={**os.environ, "FLOWER_URL": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    (check,) = json.loads(completed.stdout)["checks"]
    assert check["status"] == "warning", check
    assert "celery_worker.log" in check["detail"] and "No space left" in check["detail"]
