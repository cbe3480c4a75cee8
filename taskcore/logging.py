"""Logging for every process: Django's LOGGING, which Celery also uses.

Five rotating files live under ``LOG_DIR`` (the spec's list). Rotation goes
through ``concurrent_log_handler`` because the worker's main process and its
prefork children write the same files: Python's ``RotatingFileHandler`` would
lose or interleave lines across processes at rollover.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler

from .secrets import mask_text

LOG_FILES = {
    "celery": "celery.log",  # general Celery worker and beat logs
    "tasks": "celery_tasks.log",  # task execution
    "worker": "celery_worker.log",  # everything a worker process logs
    "beat": "celery_beat.log",  # everything a beat process logs
    "flower": "flower.log",  # everything a Flower process logs
}
# Task execution lines: Celery's tracer, task loggers, and our task pipeline's lines.
TASK_LOGGERS = ("celery.app.trace", "celery.task", "celery.lifecycle.task")
PROJECT_APPS = ("taskcore", "notifications", "media", "reports", "maintenance")


class TaskContextFilter(logging.Filter):
    """Stamp every record with the running task's id and name ('-' outside a task).

    Celery's own ``TaskFormatter`` does this only for its task logger; a filter
    on the handler covers every logger, ours and third parties' alike.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            task = _current_task()
            request = getattr(task, "request", None) if task else None
            record.task_id = getattr(request, "id", None) or "-"
            record.task_name = (getattr(task, "name", None) or "-") if request else "-"
        return True


def _current_task():
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover - celery is a hard dependency
        return None
    return get_current_task()


# Longest message a log line carries: a task given a 5 MB argument must not
# write a 5 MB line (the tail is cut, and says how much was cut).
MAX_MESSAGE_CHARS = 16_384


class SecretMaskingFilter(logging.Filter):
    """Mask URL passwords in the final message, whatever logged it; bound its length."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if len(masked) > MAX_MESSAGE_CHARS:
            cut = len(masked) - MAX_MESSAGE_CHARS
            masked = f"{masked[:MAX_MESSAGE_CHARS]}... [{cut:,} more characters cut]"
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Format the traceback now so the masked text is what handlers print.
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True


# Where a process notes, for the health checks, a log file it cannot write (a
# hash in the state Redis: field "<host> <pid> <file>", value "<epoch> <error>").
UNWRITABLE_LOGS_KEY = "taskcore:logging:unwritable"
UNWRITABLE_REPORT_INTERVAL = 60.0


class RotatingFileHandler(ConcurrentRotatingFileHandler):
    """Rotation safe across processes; a file that cannot be written is no flood.

    Python's handler prints a traceback to stderr for every line it fails to
    write: on a full disk, thousands (seen: 2,184 tracebacks, 5.6 MB, in one
    test run). Here the work goes on, the lines are dropped, and once a minute
    one warning line goes to stderr and into the state Redis, where the
    ``logging`` health check finds it.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._lost = getattr(self, "_lost", 0) + 1
        if now - getattr(self, "_reported", float("-inf")) < UNWRITABLE_REPORT_INTERVAL:
            return
        self._reported = now
        error = sys.exc_info()[1]
        problem = f"{type(error).__name__}: {error}" if error else "unknown error"
        with contextlib.suppress(Exception):  # stderr may be on the same full disk
            sys.stderr.write(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING log file {self.baseFilename} "
                f"cannot be written ({problem}); {self._lost} line(s) lost in the last "
                f"minute, the work goes on\n"
            )
        self._lost = 0
        _note_unwritable(self.baseFilename, problem)


def _note_unwritable(filename: str, problem: str) -> None:
    with contextlib.suppress(Exception):  # no Redis, no settings: stderr said it
        from .redis_clients import state_redis

        client = state_redis(timeout=1)
        field = f"{socket.gethostname()} {os.getpid()} {filename}"
        client.hset(UNWRITABLE_LOGS_KEY, field, f"{time.time():.0f} {problem}")
        client.expire(UNWRITABLE_LOGS_KEY, 600)


# The programs of the project; each but "web" (the web server, manage.py and every
# other process) also writes its own log file.
PROCESS_ROLES = ("web", "worker", "beat", "flower")


TEXT_FORMAT = (
    "%(asctime)s %(levelname)-8s [%(processName)s:%(process)d] %(name)s "
    "[task=%(task_name)s id=%(task_id)s] %(message)s"
)
JSON_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s %(process)d %(processName)s "
    "%(task_id)s %(task_name)s %(message)s"
)


def build_logging_config(
    *,
    log_dir: Path,
    level: str = "INFO",
    log_format: str = "text",
    role: str = "web",
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
    task_lines: str = "summary",
) -> dict:
    """Return a ``logging.config.dictConfig`` dictionary for this process's role.

    ``task_lines``: ``"summary"`` (default) writes one INFO line per task (our
    "task finished" line, with state and runtime) to ``celery_tasks.log`` only,
    and copies task warnings and errors to the console and the role's file;
    Celery's own per-task INFO lines ("received", "succeeded in") are left out.
    ``"verbose"``: received, started and finished lines, Celery's own lines too,
    each also in ``celery.log``, the role's file and the console. A line costs
    ~30 us per file (B1 in docs/benchmarks.md): at thousands of tasks a second
    the verbose mode costs more than the tasks.
    """
    if task_lines not in ("summary", "verbose"):
        raise ValueError(f"CELERY_TASK_LOG_LINES must be summary or verbose, not {task_lines!r}")
    log_dir.mkdir(parents=True, exist_ok=True)
    for filename in LOG_FILES.values():
        # The spec's five files exist from the first start, even before a line is written.
        (log_dir / filename).touch(exist_ok=True)
    formatter = "json" if log_format == "json" else "text"

    def rotating(filename: str) -> dict:
        return {
            "class": "taskcore.logging.RotatingFileHandler",
            "filename": str(log_dir / filename),
            "maxBytes": max_bytes,
            "backupCount": backup_count,
            "encoding": "utf-8",
            "use_gzip": False,
            "formatter": formatter,
            "filters": ["task_context", "mask_secrets"],
        }

    handlers = {key: rotating(filename) for key, filename in LOG_FILES.items()}
    handlers["console"] = {
        "class": "logging.StreamHandler",
        "formatter": formatter,
        "filters": ["task_context", "mask_secrets"],
    }
    role_handler = {"worker": ["worker"], "beat": ["beat"], "flower": ["flower"]}.get(role, [])
    # The same destinations for WARNING and above only: where task problems are
    # copied in the summary mode.
    handlers["console_problems"] = {**handlers["console"], "level": "WARNING"}
    for name in role_handler:
        handlers[f"{name}_problems"] = {**handlers[name], "level": "WARNING"}
    if task_lines == "summary":
        task_logger = {
            "level": level,
            "handlers": ["tasks", "console_problems", *(f"{n}_problems" for n in role_handler)],
            "propagate": False,
        }
        celery_per_task_loggers = {
            # "Task ... received" and "Task ... succeeded in": our finished line says it.
            name: {"level": "WARNING"}
            for name in ("celery.worker.strategy", "celery.app.trace")
        }
    else:
        task_logger = {"level": level, "handlers": ["tasks"], "propagate": True}
        celery_per_task_loggers = {}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "task_context": {"()": "taskcore.logging.TaskContextFilter"},
            "mask_secrets": {"()": "taskcore.logging.SecretMaskingFilter"},
        },
        "formatters": {
            "text": {"format": TEXT_FORMAT},
            "json": {"()": "pythonjsonlogger.json.JsonFormatter", "format": JSON_FORMAT},
        },
        "handlers": handlers,
        # The root logger gets the console and the role's own file; named
        # loggers below add the shared files and propagate to the root.
        "root": {"level": level, "handlers": ["console", *role_handler]},
        "loggers": {
            "celery": {"level": level, "handlers": ["celery"], "propagate": True},
            **{name: dict(task_logger) for name in TASK_LOGGERS},
            **celery_per_task_loggers,
            **{
                name: {"level": level, "handlers": ["tasks"], "propagate": True}
                for name in PROJECT_APPS
            },
            "django": {"level": "INFO", "propagate": True},
        },
    }
