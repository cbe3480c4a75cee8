"""Celery's Redis result backends, where a Redis out of memory is an outage like any other.

A Redis at ``maxmemory`` (policy ``noeviction``) refuses writes until memory is
freed. Celery retries storing a task's state (STARTED, its result) on connection
errors only: an out-of-memory error fails the task outside its body, and its
message is acknowledged although the task never ran (seen: 2,299 of 4,600 tasks
during 45 s at maxmemory). Here it is retried like a lost connection, with the
worker's result-backend retry settings (``WORKER_RESULT_BACKEND_RETRY``), so the
task waits for memory and then runs.

Selected through the Celery loader's ``override_backends`` (admin_backend/celery.py)
for the ``redis``, ``rediss`` and ``sentinel`` result backend URLs.
"""

from __future__ import annotations

from celery.backends.redis import RedisBackend, SentinelBackend

from .reliable_redis import refused_for_memory


class _OutOfMemoryIsAnOutage:
    def exception_safe_to_retry(self, exc):
        return refused_for_memory(exc) or super().exception_safe_to_retry(exc)


class Backend(_OutOfMemoryIsAnOutage, RedisBackend):
    pass


class Sentinel(_OutOfMemoryIsAnOutage, SentinelBackend):
    pass


BACKENDS = {
    "redis": f"{__name__}:Backend",
    "rediss": f"{__name__}:Backend",
    "sentinel": f"{__name__}:Sentinel",
}
