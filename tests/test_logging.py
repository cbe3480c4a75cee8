"""Log files: the spec's five, rotating with several processes writing, task ids on every line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from taskcore.logging import LOG_FILES, SecretMaskingFilter, build_logging_config
from taskcore.secrets import mask_text, mask_url
from taskcore.tasks import debug_task
from taskcore.testing.waiting import wait_until
from taskcore.testing.workers import WorkerProcess

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _lines(log_dir: Path, filename: str) -> list[str]:
    lines = []
    for path in sorted(log_dir.glob(filename + "*")):
        if path.suffix != ".lock" and not path.name.startswith("."):
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines


def test_the_five_log_files_are_created(tmp_path):
    build_logging_config(log_dir=tmp_path / "logs")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(LOG_FILES.values())


def test_default_rotation_is_10_mb_keeping_5(tmp_path):
    config = build_logging_config(log_dir=tmp_path)
    handler = config["handlers"]["tasks"]
    assert handler["maxBytes"] == 10 * 1024 * 1024
    assert handler["backupCount"] == 5
    assert handler["class"] == "taskcore.logging.BufferedRotatingFileHandler"


def _buffered_handler(path: Path, flush_seconds: float, max_bytes: int = 0):
    import logging

    from taskcore.logging import BufferedRotatingFileHandler

    handler = BufferedRotatingFileHandler(
        str(path), maxBytes=max_bytes, backupCount=50, flush_seconds=flush_seconds
    )
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.buffered.{path.name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler


def test_task_lines_are_written_in_groups_and_problems_at_once(tmp_path):
    path = tmp_path / "tasks.log"
    logger, handler = _buffered_handler(path, flush_seconds=3600)  # no timed write here
    try:
        logger.info("one")
        logger.info("two")
        assert not path.exists() or path.read_text() == ""  # waiting for the group
        logger.warning("a problem")  # written at once, after what waited, in order
        assert path.read_text().splitlines() == ["INFO one", "INFO two", "WARNING a problem"]
        logger.info("three")
    finally:
        handler.close()  # what waits is written when the handler closes (process exit)
        logger.removeHandler(handler)
    assert path.read_text().splitlines()[-1] == "INFO three"


def test_a_waiting_task_line_is_written_within_the_flush_interval(tmp_path):
    path = tmp_path / "tasks.log"
    logger, handler = _buffered_handler(path, flush_seconds=0.2)
    try:
        logger.info("soon")
        assert wait_until(lambda: path.exists() and path.read_text() == "INFO soon\n", timeout=10)
    finally:
        handler.close()
        logger.removeHandler(handler)


def test_grouped_lines_keep_files_within_the_rotation_size(tmp_path):
    path = tmp_path / "tasks.log"
    logger, handler = _buffered_handler(path, flush_seconds=3600, max_bytes=40_000)
    try:
        for n in range(3000):
            logger.info("line %05d %s", n, "x" * 60)
    finally:
        handler.close()
        logger.removeHandler(handler)
    files = [p for p in tmp_path.glob("tasks.log*") if p.suffix != ".lock"]
    assert len(files) > 3
    assert all(p.stat().st_size <= 40_000 + 4096 for p in files)
    lines = _lines(tmp_path, "tasks.log")
    assert sorted(lines) == [f"INFO line {n:05d} {'x' * 60}" for n in range(3000)]


@pytest.mark.django_db(transaction=True)
def test_a_recycled_prefork_child_writes_its_waiting_task_lines(start_worker, test_work_dir):
    """A child replaced after its tasks leaves through os._exit, without logging's
    shutdown: its grouped lines are written on the way out, not lost."""
    log_dir = test_work_dir / "recycled-child-logs"
    start_worker(
        ["default"],
        env={"LOG_DIR": str(log_dir), "CELERY_TASK_LOG_FLUSH_SECONDS": "3600"},
        extra_args=["--max-tasks-per-child=1"],
    )
    ids = [debug_task.delay(f"child-{n}").get(timeout=30)["task_id"] for n in range(3)]

    def finished_ids():
        lines = _lines(log_dir, "celery_tasks.log")
        return {i for i in ids if any(i in line and "task finished" in line for line in lines)}

    assert wait_until(lambda: finished_ids() == set(ids), timeout=30) is True


@pytest.mark.django_db(transaction=True)
def test_logs_rotate_with_several_processes_writing_and_lose_no_line(start_worker, test_work_dir):
    log_dir = test_work_dir / "rotation-logs"
    # Small files so a few hundred tasks rotate many times; enough backups to keep all.
    worker = start_worker(
        ["default"],
        concurrency=2,
        env={
            "LOG_DIR": str(log_dir),
            "LOG_MAX_BYTES": "40000",
            "LOG_BACKUP_COUNT": "200",
            # received lines come from the main process: several writers per file
            "CELERY_TASK_LOG_LINES": "verbose",
        },
    )
    results = [debug_task.delay(f"line-{n}") for n in range(400)]
    task_ids = {result.get(timeout=60)["task_id"] for result in results}
    worker.stop()

    rotated = [p for p in log_dir.glob("celery_tasks.log.*") if p.suffix != ".lock"]
    assert len(rotated) >= 3, "celery_tasks.log should have rotated"
    assert all(p.stat().st_size <= 40000 + 4096 for p in rotated)

    lines = _lines(log_dir, "celery_tasks.log")
    ran = [line for line in lines if "debug_task ran:" in line]
    # Written by the pool children; received/finished lines by the main process too.
    assert len(ran) == 400
    ids_on_lines = {re.search(r"id=([0-9a-f-]{36})\]", line).group(1) for line in ran}
    assert ids_on_lines == task_ids
    received = [line for line in lines if "task received" in line]
    finished = [line for line in lines if "task finished: state=SUCCESS" in line]
    assert len(received) == len(finished) == 400
    writers = {re.search(r"\[([\w-]+):(\d+)\]", line).group(2) for line in ran + received}
    assert len(writers) >= 2  # the main process and pool children shared the files


@pytest.mark.django_db(transaction=True)
def test_json_log_format_carries_task_fields(start_worker, test_work_dir):
    log_dir = test_work_dir / "json-logs"
    worker = start_worker(["default"], env={"LOG_DIR": str(log_dir), "LOG_FORMAT": "json"})
    task_id = debug_task.delay("as-json").get(timeout=20)["task_id"]
    worker.stop()
    records = [json.loads(line) for line in _lines(log_dir, "celery_tasks.log")]
    ran = [r for r in records if r["message"].startswith("debug_task ran")]
    assert ran and ran[0]["task_id"] == task_id
    assert ran[0]["task_name"] == "taskcore.tasks.debug_task"


def test_mask_url_hides_passwords():
    assert mask_url("redis://:s3cret@redis:6379/0") == "redis://:****@redis:6379/0"
    assert mask_url("amqp://guest:pw@rabbit//") == "amqp://guest:****@rabbit//"
    assert mask_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert (
        mask_text("a=redis://:x@h:1/0;redis://:y@h2:1/0 b")
        == "a=redis://:****@h:1/0;redis://:****@h2:1/0 b"
    )
    assert (
        mask_text("sentinel://h:26379?password=abc&x=1") == "sentinel://h:26379?password=****&x=1"
    )


def test_masking_filter_masks_messages_and_tracebacks():
    import logging

    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "broker %s down", ("redis://:pw1@h/0",), None
    )
    try:
        raise ConnectionError("cannot reach redis://:pw2@h/0")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    SecretMaskingFilter().filter(record)
    assert "pw1" not in record.getMessage()
    assert "pw2" not in record.exc_text and "****" in record.exc_text


@pytest.mark.django_db(transaction=True)
def test_no_secret_in_worker_output_or_logs(
    private_redis, test_work_dir, worker_database_url, monkeypatch
):
    password = "Sup3r-Secret-Pw"
    server = private_redis("--requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    log_dir = test_work_dir / "secret-logs"
    env = {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "CACHE_URL": url,
        "LOG_DIR": str(log_dir),
        "CELERY_LOG_LEVEL": "DEBUG",
    }
    # A client app of its own on the password-protected Redis (Celery lets the
    # CELERY_BROKER_URL and CELERY_RESULT_BACKEND variables override the
    # arguments, so set them too).
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    app = Celery("secret-check", broker=url, backend=url, set_as_current=False)

    worker = WorkerProcess(
        app,
        ["default"],
        log_path=test_work_dir / "secret-worker.out",
        env={**env, "DATABASE_URL": worker_database_url},
    )
    worker.start()
    try:
        # The task logs its argument: a URL with the password must come out masked.
        result = app.send_task("taskcore.tasks.debug_task", args=[url], queue="default")
        assert result.get(timeout=20)["message"] == url  # the task itself got the real value
    finally:
        worker.stop()

    outputs = {"worker stdout/stderr": worker.output()}
    for path in log_dir.iterdir():
        outputs[path.name] = path.read_text(errors="replace")
    assert "redis://:****@" in outputs["celery_tasks.log"]
    for name, text in outputs.items():
        assert password not in text, f"password printed in {name}"


SUMMARY_PROBE = """
import logging, logging.config, sys
from pathlib import Path
from taskcore.logging import build_logging_config
logging.config.dictConfig(
    build_logging_config(log_dir=Path(sys.argv[1]), role="worker", task_lines=sys.argv[2])
)
task = logging.getLogger("celery.lifecycle.task")
task.debug("task received: eta=None retries=0")
task.info("task finished: state=SUCCESS runtime=0.001s retries=0")
task.error("task failed: PermanentError: bad input")
logging.getLogger("celery.app.trace").info("Task t[1] succeeded in 0.001s: None")
logging.getLogger("celery.worker.strategy").info("Task t[1] received")
"""


@pytest.mark.parametrize("mode", ["summary", "verbose"])
def test_task_lines_summary_writes_one_line_per_task_and_copies_problems(tmp_path, mode):
    out = subprocess.run(
        [sys.executable, "-c", SUMMARY_PROBE, str(tmp_path), mode],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    tasks = (tmp_path / "celery_tasks.log").read_text()
    worker = (tmp_path / "celery_worker.log").read_text()
    assert "task finished: state=SUCCESS" in tasks
    assert "task failed: PermanentError" in tasks
    # Problems reach the worker's file and the console in both modes.
    assert "task failed: PermanentError" in worker
    assert "task failed: PermanentError" in out.stderr
    if mode == "summary":
        assert "task finished" not in worker + out.stderr + (tmp_path / "celery.log").read_text()
        assert "succeeded in" not in tasks + worker + out.stderr
        assert "received" not in tasks + worker + out.stderr
    else:
        assert "task finished" in worker and "task finished" in out.stderr
        assert "succeeded in" in tasks and "Task t[1] received" in worker


@pytest.mark.django_db(transaction=True)
def test_each_program_writes_its_own_log_file_and_only_workers_retry_results(
    start_worker, test_work_dir, worker_database_url
):
    """The settings are the same in every process; the program says which it is."""
    from celery import current_app

    from taskcore.testing.tasks import result_backend_retries
    from taskcore.testing.workers import BeatProcess

    log_dir = test_work_dir / "role-logs"
    env = {"LOG_DIR": str(log_dir)}
    worker = start_worker(["default"], env=env)
    beat = BeatProcess(
        log_path=test_work_dir / "role-beat" / "beat.out",
        run_dir=test_work_dir / "role-beat",
        env={**env, "DATABASE_URL": worker_database_url},
    ).start()
    try:
        retries = result_backend_retries.delay().get(timeout=20)
        assert wait_until(lambda: _lines(log_dir, "celery_beat.log"), timeout=30)
    finally:
        beat.stop()
        worker.stop()

    # The worker stores task states through a short Redis outage; this (web) process
    # must not hang on one.
    assert retries == {"always_retry": True, "max_retries": 60}
    assert current_app.backend.always_retry is False
    worker_lines = _lines(log_dir, "celery_worker.log")
    beat_lines = _lines(log_dir, "celery_beat.log")
    assert any("worker ready" in line for line in worker_lines)
    assert any("beat: Starting..." in line for line in beat_lines)
    assert not any("worker ready" in line for line in beat_lines)
    assert not _lines(log_dir, "flower.log")
