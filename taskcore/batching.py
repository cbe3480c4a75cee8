"""Per-process buffers that write per-task bookkeeping in batches, off the task's path.

Recording something for every task (an activity row, a dashboard counter) one
write at a time costs a database commit or a Redis round trip per task: more
than a small task itself (B1 in docs/benchmarks.md). A :class:`FlushingBuffer`
collects items in memory and hands them to its ``flush`` function as one batch
when ``max_items`` are waiting, and at least every ``max_age`` seconds from a
daemon thread, and when the process shuts down cleanly.

What a buffer holds is bookkeeping, never the work: a process killed with
SIGKILL loses at most ``max_age`` seconds of it. Buffers are per process (a
forked pool child starts empty, with its own thread). Only worker processes
buffer; elsewhere (web, shell, tests calling ``task.apply()``) every item is
written at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from celery import signals

logger = logging.getLogger(__name__)

_buffers: list[FlushingBuffer] = []
# Seconds between two warnings of one buffer that cannot write.
WARNING_INTERVAL = 60.0
# Set in worker processes (see the signal receivers at the end).
_batching = {"enabled": False}


class FlushingBuffer:
    def __init__(
        self,
        name: str,
        flush: Callable[[list], None],
        *,
        max_items: int = 500,
        max_age: float = 1.0,
        max_kept: int = 50_000,
        everywhere: bool = False,
    ):
        self.name = name
        self._flush = flush
        self.max_items = max_items
        self.max_age = max_age
        # When flushing keeps failing, keep at most this many (the newest).
        self.max_kept = max_kept
        # Buffer in every process (a caller's too), not only in workers.
        self.everywhere = everywhere
        self._warned_at = float("-inf")
        self._items: list = []
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._wake = threading.Event()
        _buffers.append(self)

    def add(self, item) -> None:
        if not (_batching["enabled"] or self.everywhere):
            with self._lock:
                self._items.append(item)
            self.flush()
            return
        self._ensure_thread()
        with self._lock:
            self._items.append(item)
            full = len(self._items) >= self.max_items
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write what is waiting now, in this thread; return how many items were written."""
        with self._lock:
            items, self._items = self._items, []
        if not items:
            return 0
        try:
            self._flush(items)
        except Exception:
            # Once a minute at most: an outage would otherwise log every max_age.
            now = time.monotonic()
            if now - self._warned_at >= WARNING_INTERVAL:
                self._warned_at = now
                logger.warning(
                    "%s: %d items not written, kept for the next flush",
                    self.name,
                    len(items),
                    exc_info=True,
                )
            with self._lock:
                self._items[:0] = items
                dropped = len(self._items) - self.max_kept
                if dropped > 0:
                    del self._items[:dropped]
                    logger.error("%s: dropped the %d oldest items", self.name, dropped)
            return 0
        return len(items)

    def _ensure_thread(self) -> None:
        # _pid is reset in a forked child (register_at_fork below), so a set _pid is
        # this process's thread: no getpid() system call on every item.
        if self._pid is not None:
            return
        with self._lock:
            if self._pid is not None:
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name=f"flush-{self.name}", daemon=True).start()

    def _forget_parent(self) -> None:
        # In a forked child: the parent's lock may be held, its items are its own.
        self._lock = threading.Lock()
        self._items = []
        self._wake = threading.Event()
        self._pid = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.max_age)
            self._wake.clear()
            self.flush()


def flush_all(**kwargs) -> None:
    for buffer in _buffers:
        if buffer._pid == os.getpid():
            buffer.flush()


# A pool child reports shutdown before it exits; solo/threads pools run in the
# main process, which reports worker_shutdown. SIGKILL skips all of them.
def _batch_in_this_process(**kwargs) -> None:
    _batching["enabled"] = True


# worker_init: the worker's main process (solo and threads pools run tasks there);
# worker_process_init: each prefork pool child.
signals.worker_init.connect(_batch_in_this_process, weak=False)
signals.worker_process_init.connect(_batch_in_this_process, weak=False)


def _forget_parents_buffers() -> None:
    for buffer in _buffers:
        buffer._forget_parent()


os.register_at_fork(after_in_child=_forget_parents_buffers)
signals.worker_process_shutdown.connect(flush_all, weak=False)
signals.worker_shutdown.connect(flush_all, weak=False)
atexit.register(flush_all)
