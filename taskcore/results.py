"""Celery's Redis result backends, where a Redis out of memory is an outage like any other.

A Redis at ``maxmemory`` (policy ``noeviction``) refuses writes until memory is
freed. Celery retries storing a task's state (STARTED, its result) on connection
errors only: an out-of-memory error fails the task outside its body, and its
message is acknowledged although the task never ran (seen: 2,299 of 4,600 tasks
during 45 s at maxmemory). Here it is retried like a lost connection, with the
worker's result-backend retry settings (``WORKER_RESULT_BACKEND_RETRY``), so the
task waits for memory and then runs.

A task's STARTED state is not written here but by ``taskcore.base.BaseTask``, in
the task's body and with few tries: a task that cannot record its start goes back
to its queue rather than spend its time limit waiting. Its result, written after
its body, waits for Redis as long as the retry settings allow, and the soft time
limit (a prefork signal meant for the body, which has finished) does not end that
wait: a run that did its work is not failed into a dead letter because Redis was
full when it ended. The hard time limit still ends it.

Selected through the Celery loader's ``override_backends`` (admin_backend/celery.py)
for the ``redis``, ``rediss`` and ``sentinel`` result backend URLs.
"""

from __future__ import annotations

from billiard.exceptions import SoftTimeLimitExceeded
from celery.backends.redis import RedisBackend, SentinelBackend

from .reliable_redis import refused_for_memory


class _OutOfMemoryIsAnOutage:
    def exception_safe_to_retry(self, exc):
        return refused_for_memory(exc) or super().exception_safe_to_retry(exc)

    def store_result(self, *args, **kwargs):
        try:
            return super().store_result(*args, **kwargs)
        except SoftTimeLimitExceeded:  # fires once per run: the second wait is not cut short
            return super().store_result(*args, **kwargs)


class Backend(_OutOfMemoryIsAnOutage, RedisBackend):
    pass


class Sentinel(_OutOfMemoryIsAnOutage, SentinelBackend):
    pass


BACKENDS = {
    "redis": f"{__name__}:Backend",
    "rediss": f"{__name__}:Backend",
    "sentinel": f"{__name__}:Sentinel",
}
