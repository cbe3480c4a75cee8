"""A private PostgreSQL cluster for fault-injection tests: initdb, pg_ctl start/stop, gone after.

Started from the machine's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``,
else ``pg_ctl`` on PATH) on a free port of its own, with its data in a temporary
directory. The machine's own PostgreSQL service is never touched. ``initdb``
refuses to run as root, so as root every command runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from taskcore.testing.redis_server import free_port

CLUSTER_OWNER = "postgres"
SUPERUSER = "postgres"


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PostgresCluster:
    """A ``postgres`` server of our own: ``stop()`` and ``start()`` are the fault."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under the test's work directory: that one is private to root (mkdtemp),
        # and the server runs as the cluster owner.
        self.root = Path(tempfile.mkdtemp(prefix="admin-backend-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self._owner = pwd.getpwnam(CLUSTER_OWNER) if os.geteuid() == 0 else None
        if self._owner:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._owner:
            command = ["runuser", "-u", CLUSTER_OWNER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}")
        return result

    def init(self) -> PostgresCluster:
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        # fsync off: the faults here are process faults (the kernel keeps what was
        # written), and the shared test machine's disk is not what is measured.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` drops every session at once, as a crash does."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True
        )

    def create_database(self, name: str, project_dir: Path) -> str:
        """Create a database with the project's schema (``manage.py migrate``); return its URL."""
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=project_dir,
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrate.stdout}{migrate.stderr}")
        return url

    def count(self, database: str, sql: str, *params) -> int:
        with self.connect(database) as connection:
            return connection.execute(sql, params).fetchone()[0]

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)
