"""A RabbitMQ virtual host of the test run's own.

Created with ``rabbitmqctl`` (or the management API) and deleted after; without
either, the URL's vhost is used and the project's queues are deleted before and
after. Used by the RabbitMQ tests and by the broker-setup tests.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
import uuid
from urllib.parse import quote, urlsplit

import pytest
from kombu import Connection

from taskcore.brokers import with_password
from taskcore.queues import queue_table


def fail_unless_reachable(base_url: str) -> None:
    """An unreachable RabbitMQ fails the test, naming the URL (without its password)."""
    try:
        with Connection(base_url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=2)
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ unreachable at {with_password(base_url, '')}: {exc!r} "
            "(set RUN_RABBITMQ_TESTS=0 to skip the RabbitMQ tests on purpose)",
            pytrace=False,
        )


def _rabbitmqctl(*args: str) -> bool:
    tool = shutil.which("rabbitmqctl")
    if not tool:
        return False
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def _management(
    base_url: str, management_url: str, method: str, path: str, body: dict | None = None
) -> bool:
    """A call to the management API with the AMQP URL's user; False when it fails."""
    split = urlsplit(base_url)
    request = urllib.request.Request(
        f"{management_url}{path}",
        method=method,
        data=json.dumps(body or {}).encode(),
        headers={"content-type": "application/json"},
    )
    token = base64.b64encode(f"{split.username}:{split.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5):
            return True
    except OSError:
        return False


class RabbitVhost:
    """A vhost for this run (or the URL's, cleaned), and how to reach it."""

    def __init__(self, base_url: str, management_url: str):
        self.base_url = base_url
        self.management_url = management_url
        self.name = f"admin_backend_test_{uuid.uuid4().hex[:8]}"
        self.created_with = None
        user = urlsplit(base_url).username or "guest"
        if _rabbitmqctl("add_vhost", self.name) and _rabbitmqctl(
            "set_permissions", "-p", self.name, user, ".*", ".*", ".*"
        ):
            self.created_with = "rabbitmqctl"
        elif self._management("PUT", f"/api/vhosts/{self.name}") and self._management(
            "PUT",
            f"/api/permissions/{self.name}/{user}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        ):
            self.created_with = "management"
        if self.created_with:
            self.url = f"{self.base_url.rstrip('/')}/{quote(self.name, safe='')}"
        else:
            self.url = self.base_url
            self.delete_queues()

    def _management(self, method: str, path: str, body: dict | None = None) -> bool:
        return _management(self.base_url, self.management_url, method, path, body)

    def delete_queues(self) -> None:
        with Connection(self.url) as connection:
            for name in queue_table().names:
                channel = connection.channel()
                try:
                    channel.queue_delete(name)
                finally:
                    channel.close()

    def drop(self) -> None:
        if self.created_with == "rabbitmqctl":
            _rabbitmqctl("delete_vhost", self.name)
        elif self.created_with == "management":
            self._management("DELETE", f"/api/vhosts/{self.name}")
        else:
            self.delete_queues()
