"""Health of the task system: one set of checks behind every surface.

``run_health()`` runs them (in parallel, within a deadline) and returns a
``HealthReport``: ``manage.py celery_health``, the HTTP endpoints
(``taskcore.views``), ``/metrics`` and the admin dashboard all call it.
Each result has a status (ok / warning / critical), a latency, a detail and a
one-line remedy; see docs/operations.md for what each check means.
"""

from .model import CheckResult, HealthReport, Status


def run_health(*args, **kwargs) -> HealthReport:
    from .runner import run_health as run

    return run(*args, **kwargs)


__all__ = ["CheckResult", "HealthReport", "Status", "run_health"]
