"""Real Celery processes (workers, beat) for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery import Celery


class CeleryProcess:
    """A ``celery -A admin_backend ...`` subprocess in its own process group.

    ``env`` is added to this process's environment, so the child reads the same
    settings the test process does, plus whatever the test overrides. Output
    (stdout and stderr) goes to ``log_path``.
    """

    def __init__(
        self,
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ):
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a warm shutdown for workers: running tasks finish), then SIGKILL."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "_log_handle"):
            self._log_handle.close()
        return self.process.returncode if self.process else 0

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its children."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class WorkerProcess(CeleryProcess):
    """``celery -A admin_backend worker`` on chosen queues, ready when it answers ping."""

    def __init__(
        self,
        app: Celery,
        queues: list[str] | tuple[str, ...],
        *,
        log_path: Path,
        concurrency: int = 1,
        pool: str = "prefork",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        name: str | None = None,
    ):
        super().__init__(log_path=log_path, env=env, extra_args=extra_args)
        self.app = app
        self.queues = list(queues)
        self.hostname = f"{name or 'test'}-{uuid.uuid4().hex[:8]}@localhost"
        self.concurrency = concurrency
        self.pool = pool

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "admin_backend",
            "worker",
            f"--queues={','.join(self.queues)}",
            f"--hostname={self.hostname}",
            f"--pool={self.pool}",
            f"--concurrency={self.concurrency}",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            *self.extra_args,
        ]

    def start(self, wait: bool = True, timeout: float = 60) -> WorkerProcess:
        self._spawn()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.output()}"
                )
            if self.app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise RuntimeError(f"worker {self.hostname} not ready after {timeout}s:\n{self.output()}")

    def child_pids(self) -> list[int]:
        """PIDs of the pool's child processes (from /proc: no extra dependency)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class BeatProcess(CeleryProcess):
    """``celery -A admin_backend beat`` with the settings' scheduler, its files in ``run_dir``."""

    def __init__(
        self,
        *,
        log_path: Path,
        run_dir: Path,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ):
        super().__init__(log_path=log_path, env=env, extra_args=extra_args)
        self.run_dir = run_dir

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "admin_backend",
            "beat",
            "--loglevel=INFO",
            f"--pidfile={self.run_dir / 'celerybeat.pid'}",
            f"--schedule={self.run_dir / 'celerybeat-schedule'}",
            *self.extra_args,
        ]

    def start(self) -> BeatProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._spawn()
        return self

    def stop(self, timeout: float = 20) -> int:
        return super().stop(timeout)
