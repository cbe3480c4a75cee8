"""Admin defaults: housekeeping runs out of the task-run list, the demo model on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from reports.models import TaskRun

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_the_task_run_list_leaves_out_the_collectors_runs_unless_asked(client, django_user_model):
    now = timezone.now()
    for name in ("dashboard.tasks.collect_sample", "media.tasks.process_upload"):
        TaskRun.objects.create(task_name=name, queue="x", state="SUCCESS", finished_at=now)
    root = django_user_model.objects.create_superuser("root", password="pw-irrelevant-123")
    client.force_login(root)

    default = client.get("/admin/reports/taskrun/").content.decode()
    assert "media.tasks.process_upload" in default
    assert "dashboard.tasks.collect_sample" not in default
    shown = client.get("/admin/reports/taskrun/?housekeeping=shown").content.decode()
    assert "dashboard.tasks.collect_sample" in shown


@pytest.mark.parametrize(("setting", "registered"), [("0", False), ("1", True)])
def test_the_demo_model_is_in_the_admin_only_when_asked(setting, registered):
    code = (
        "import django;django.setup()\n"
        "from django.contrib import admin\n"
        "from reports.models import SampleRecord\n"
        "print(admin.site.is_registered(SampleRecord))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "admin_backend.settings",
            "REPORTS_DEMO_ADMIN": setting,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.strip() == str(registered), completed.stderr[-2000:]
