"""deploy/prometheus and deploy/grafana: the alert rules, their unit tests, the example
configuration, and that every metric they name is one /metrics serves.

promtool comes from Debian's prometheus package (run_tests.sh installs it when it
may; TEST_PROMTOOL=always, as in CI, makes a missing one a failure, not a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from taskcore import views

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"
GRAFANA_DASHBOARD = DEPLOY_DIR / "grafana" / "admin_backend.json"
METRIC_NAME = re.compile(r"\badmin_backend_[a-z_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("TEST_PROMTOOL") == "always":
            pytest.fail("promtool missing: apt-get install -y --no-install-recommends prometheus")
        pytest.skip("promtool missing: apt-get install -y --no-install-recommends prometheus")
    return found


def run(*command, cwd=PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_names(path: Path) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_alert_rules_are_valid(promtool):
    checked = run(promtool, "check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout


def test_alert_rules_pass_their_unit_tests(promtool):
    tested = run(promtool, "test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_sees_it_fire():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    names = set(alert_names(PROMETHEUS_DIR / "alerts.yml"))
    assert names >= {
        "QueueWithoutConsumer",
        "QueueOldestMessageTooOld",
        "DeadLettersRising",
        "BeatSilent",
        "WorkerMemoryNearLimit",
        "RedisMemoryNearMaxmemory",
    }
    assert firing == names  # each fires in a test ...
    assert quiet == names  # ... and each stays quiet before it should


def test_example_configuration_is_valid_and_sends_the_token(promtool, tmp_path):
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "admin_backend")
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    # promtool checks that the secret files exist: point them at files of this test.
    for scrape in config["scrape_configs"]:
        for auth, key in (("authorization", "credentials_file"), ("basic_auth", "password_file")):
            if key in scrape.get(auth, {}):
                secret = tmp_path / Path(scrape[auth][key]).name
                secret.write_text("not-a-real-secret\n")
                scrape[auth][key] = str(secret)
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.django_db(transaction=True)
def test_rules_and_dashboard_name_only_metrics_that_metrics_serves(client, settings):
    settings.HEALTH_METRICS_TOKEN = "prometheus-test-token"
    settings.FLOWER_URL = "off"
    views.clear_cache()
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer prometheus-test-token").content
    served = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            served.add(name)
            served.update(name + suffix for suffix in SUFFIXES.get(kind, ()))
    views.clear_cache()

    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = set(METRIC_NAME.findall(rules)) | {
        name for expr in expressions for name in METRIC_NAME.findall(expr)
    }
    assert named, "no metric found in the rules or the dashboard"
    assert named <= served, f"not served by /metrics: {sorted(named - served)}"
    assert "admin_backend_tasks_dead_lettered_total" in named
    assert "admin_backend_task_runtime_seconds_bucket" in named
