"""What a health check returns: a status, its latency, what it saw and what to do."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from taskcore.secrets import mask_text


class Status(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 warning, 2 critical: what Docker and orchestrators read."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, statuses) -> Status:
        return max(statuses, key=lambda status: status.severity, default=cls.OK)


_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2}


@dataclass
class CheckResult:
    """One check's finding.

    ``detail`` says what was seen, ``remedy`` one line on what to do (empty when
    all is well), ``data`` the figures behind the detail (JSON-safe), for the
    JSON output, the metrics endpoint and the dashboard.
    """

    name: str
    status: Status
    detail: str
    remedy: str = ""
    latency_ms: float | None = None
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status.value,
            "latency_ms": self.latency_ms,
            "detail": mask_text(self.detail),
            "remedy": mask_text(self.remedy),
            "data": self.data,
        }

    def as_public_dict(self) -> dict:
        """What an unauthenticated HTTP caller may see: no hosts, versions or messages."""
        return {"status": self.status.value, "latency_ms": self.latency_ms}


def ok(name: str, detail: str, **kwargs) -> CheckResult:
    return CheckResult(name, Status.OK, detail, **kwargs)


def warning(name: str, detail: str, remedy: str, **kwargs) -> CheckResult:
    return CheckResult(name, Status.WARNING, detail, remedy, **kwargs)


def critical(name: str, detail: str, remedy: str, **kwargs) -> CheckResult:
    return CheckResult(name, Status.CRITICAL, detail, remedy, **kwargs)


@dataclass
class HealthReport:
    results: list[CheckResult]
    started_at: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    broker: str = ""  # masked URL

    @property
    def status(self) -> Status:
        return Status.worst(result.status for result in self.results)

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in Status}
        for result in self.results:
            counts[result.status.value] += 1
        return counts

    def problems(self) -> list[CheckResult]:
        """Results that are not ok, worst first (stable within a status)."""
        bad = [result for result in self.results if result.status is not Status.OK]
        return sorted(bad, key=lambda result: -result.status.severity)

    def get(self, name: str) -> CheckResult | None:
        return next((result for result in self.results if result.name == name), None)

    def as_dict(self) -> dict:
        return {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "generated_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "duration_ms": round(self.duration_ms, 1),
            "broker": mask_text(self.broker),
            "counts": self.counts(),
            "checks": [result.as_dict() for result in self.results],
        }
