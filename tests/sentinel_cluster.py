"""A Redis Sentinel topology of our own for tests: a primary, a replica and three Sentinels.

All from the bundled ``redis-server`` binary (``--sentinel``), on free ports,
with their data under the given directory and passwords on both the Redis
servers and the Sentinels (as a production setup has them). Used by the
Sentinel failover tests and by the broker-setup tests.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from taskcore.testing.redis_server import free_port, redis_server_binary, spawn_redis_server
from taskcore.testing.waiting import wait_until

MASTER = "au-vlp-primary"
REDIS_PASSWORD = "redis-secret-1"
SENTINEL_PASSWORD = "sentinel-secret-2"


class SentinelCluster:
    """A primary, a replica and three Sentinels, all ours."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.processes: dict[str, subprocess.Popen] = {}
        self.server_args: dict[str, tuple[int, list[str]]] = {}
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        data = ["--appendonly", "yes", "--appendfsync", "everysec"]
        auth = ["--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD]
        self._server("primary", self.primary_port, *data, *auth)
        replica_of = ["--replicaof", "127.0.0.1", str(self.primary_port)]
        self._server("replica", self.replica_port, *data, *auth, *replica_of)
        for number, port in enumerate(self.sentinel_ports):
            self._sentinel(number, port)
        wait_until(lambda: self._replica_in_sync(), timeout=15)
        wait_until(lambda: self._sentinels_agree(), timeout=20)

    def _server(self, name: str, port: int, *args: str) -> None:
        self.server_args[name] = (port, list(args))
        self.processes[name] = spawn_redis_server(port, self.directory / name, list(args))

    def _sentinel(self, number: int, port: int) -> None:
        data_dir = self.directory / f"sentinel-{number}"
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "sentinel.conf"
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {data_dir}\n"
            f"logfile {data_dir / 'sentinel.log'}\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel auth-pass {MASTER} {REDIS_PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.processes[f"sentinel-{number}"] = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def redis(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=1)

    def sentinel(self, number: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_ports[number], password=SENTINEL_PASSWORD, socket_timeout=1
        )

    def _replica_in_sync(self) -> bool:
        try:
            info = self.redis(self.replica_port).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        try:
            for number in range(3):
                state = self.sentinel(number).sentinel_master(MASTER)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def master_port(self) -> int | None:
        for number in range(3):
            try:
                _, port = self.sentinel(number).sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None

    def url(self, *, password: bool) -> str:
        auth = f":{REDIS_PASSWORD}@" if password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def kill_primary(self) -> None:
        self.processes["primary"].send_signal(signal.SIGKILL)
        self.processes["primary"].wait()

    def restart_killed_primary(self) -> None:
        """Start the killed primary again, as a restart policy would; the Sentinels make
        it a replica of the promoted one (its data directory and AOF are kept)."""
        port, args = self.server_args["primary"]
        self.processes["primary"] = spawn_redis_server(port, self.directory / "primary", args)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def settings_env(self) -> dict[str, str]:
        """The environment of a process whose broker and results go through these Sentinels.

        The URLs carry no password: settings add REDIS_PASSWORD, as operators set it.
        """
        bare = self.url(password=False)
        return {
            "CELERY_BROKER_URL": bare,
            "CELERY_RESULT_BACKEND": bare,
            "REDIS_PASSWORD": REDIS_PASSWORD,
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }
