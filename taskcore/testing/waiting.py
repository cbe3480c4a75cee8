"""Polling for a condition that real processes make true: a worker, a server, a database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """The condition's first truthy value, or its last (falsy) value after ``timeout`` s.

    Checked once before the first sleep and once more at the deadline, so a
    condition already true costs no wait, and a slow machine gets its last chance.
    """
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = condition()
    return value


def wait_for(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "condition"
) -> T:
    """Like :func:`wait_until`, but a timeout fails the test, naming ``what``."""
    value = wait_until(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"{what} not met within {timeout}s")
    return value
