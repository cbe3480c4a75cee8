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
import threading
import time
import weakref
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
        self._lost = getattr(self, "_lost", 0) + (len(getattr(record, "lines", ())) or 1)
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


class _Lines(logging.LogRecord):
    """Lines formatted already, written by one ``emit`` (see BufferedRotatingFileHandler)."""

    def __init__(self, lines: list[str], last: logging.LogRecord) -> None:
        super().__init__(last.name, last.levelno, last.pathname, last.lineno, "", None, None)
        self.lines = lines


class BufferedRotatingFileHandler(RotatingFileHandler):
    """The rotating handler, writing lines in groups: one file lock per group.

    For ``celery_tasks.log``, which gets a line per task from every worker
    process: the cross-process lock, stale-file check and write of
    ``concurrent_log_handler`` cost ~0.1 ms of worker CPU per line at 300 tasks/s
    (B1 steady in docs/benchmarks.md). Here a line waits at most ``flush_seconds``
    (a thread writes what waits) and is written with the lines that came
    meanwhile; a WARNING or worse is written at once, with what waits before it.
    ``close()`` (at exit, by ``logging.shutdown``) writes what waits; a process
    killed with SIGKILL loses its last ``flush_seconds`` of INFO lines. Each line
    keeps its own time and format. ``flush_seconds`` 0: a write per line.

    Rotation is checked before each group, so a file may pass ``maxBytes`` by one
    group: groups are kept under 1% of ``maxBytes`` (4 KiB at least).
    """

    def __init__(self, *args, flush_seconds: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        self.flush_seconds = flush_seconds
        self.max_group_chars = max(4096, self.maxBytes // 100) if self.maxBytes > 0 else 65536
        self._waiting: list[str] = []
        self._waiting_chars = 0
        self._last: logging.LogRecord | None = None
        self._flusher_pid: int | None = None
        _buffered_handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.flush_seconds <= 0:
            return super().emit(record)
        try:
            line = self.format(record)
        except Exception:
            return self.handleError(record)
        if self._waiting_chars + len(line) > self.max_group_chars:
            self._write_waiting()
        self._waiting.append(line)
        self._waiting_chars += len(line) + 1
        self._last = record
        if record.levelno >= logging.WARNING:
            self._write_waiting()
        elif self._flusher_pid is None:  # reset in a forked child: no getpid() per line
            self._start_flusher()

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record, _Lines):
            return self.terminator.join(record.lines)
        return super().format(record)

    def _write_waiting(self) -> None:
        """Write the waiting lines in one emit (the caller holds the handler's lock)."""
        if not self._waiting:
            return
        lines, self._waiting, self._waiting_chars = self._waiting, [], 0
        super().emit(_Lines(lines, self._last))

    def flush(self) -> None:
        # Each write flushes its stream already (concurrent_log_handler's do_write),
        # and a write error goes to handleError there: nothing else to flush.
        self.acquire()
        try:
            self._write_waiting()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        self._flusher_pid = None  # its thread ends
        super().close()

    def _start_flusher(self) -> None:
        # One daemon thread per handler and process (a forked child starts its own).
        self._flusher_pid = os.getpid()
        thread = threading.Thread(
            target=_flush_every, args=(weakref.ref(self),), name="log-flush", daemon=True
        )
        thread.start()


def _flush_every(handler_ref) -> None:
    """Write what waits every ``flush_seconds``, while the handler is open in this process."""
    pid = os.getpid()
    while True:
        handler = handler_ref()  # not kept alive by this thread between flushes
        if handler is None or handler._flusher_pid != pid:
            return
        interval = handler.flush_seconds
        del handler
        time.sleep(interval)
        handler = handler_ref()
        if handler is not None and handler._waiting:
            with contextlib.suppress(Exception):  # emit reported it (handleError)
                handler.flush()
        del handler


_buffered_handlers: weakref.WeakSet[BufferedRotatingFileHandler] = weakref.WeakSet()


def write_waiting_lines() -> None:
    """Write every grouped handler's waiting lines now: for a process about to end
    without ``logging.shutdown`` (a prefork child leaves through ``os._exit``)."""
    for handler in list(_buffered_handlers):
        with contextlib.suppress(Exception):
            handler.flush()


def _forget_parents_lines() -> None:
    # A forked child inherits the lines its parent had not written yet: the parent
    # writes them; the child starts empty (and starts its own flusher).
    for handler in list(_buffered_handlers):
        handler._waiting, handler._waiting_chars = [], 0
        handler._flusher_pid = None


os.register_at_fork(after_in_child=_forget_parents_lines)


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
    task_log_flush_seconds: float = 0.2,
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

    ``task_log_flush_seconds``: ``celery_tasks.log`` is written in groups, a line
    waiting at most this long (WARNING and worse at once); 0 writes each line
    (``BufferedRotatingFileHandler``).
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
    handlers["tasks"] = {
        **handlers["tasks"],
        "class": "taskcore.logging.BufferedRotatingFileHandler",
        "flush_seconds": task_log_flush_seconds,
    }
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
