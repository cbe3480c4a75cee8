"""Settings of the reports app, each with a default (override in Django settings).

- ``REPORTS_EXPORT_ROOT``: private directory of export files; default ``exports/``
  beside ``MEDIA_ROOT`` (never under it: MEDIA_ROOT is served publicly).
- ``REPORTS_EXPORT_TTL_SECONDS``: how long a ready export may be downloaded (7 days).
- ``REPORTS_EXPORT_CHUNK_SIZE``: rows fetched per database round trip (2000).
- ``REPORTS_SITE_URL``: base URL for emailed links when no request gives one ("").
- ``REPORTS_RECORD_TASK_RUNS``: record one ``TaskRun`` row per task execution (True).
- ``REPORTS_SENSITIVE_FIELDS``: extra never-exported fields, ``{"app.Model": ["field"]}``.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

DEFAULT_TTL_SECONDS = 7 * 24 * 3600


def export_root() -> Path:
    configured = getattr(settings, "REPORTS_EXPORT_ROOT", None)
    if configured:
        return Path(configured)
    return Path(settings.MEDIA_ROOT).resolve().parent / "exports"


def export_ttl_seconds() -> int:
    return int(getattr(settings, "REPORTS_EXPORT_TTL_SECONDS", DEFAULT_TTL_SECONDS))


def chunk_size() -> int:
    return int(getattr(settings, "REPORTS_EXPORT_CHUNK_SIZE", 2000))


def site_url() -> str:
    return str(getattr(settings, "REPORTS_SITE_URL", "") or "").rstrip("/")


def record_task_runs() -> bool:
    return bool(getattr(settings, "REPORTS_RECORD_TASK_RUNS", True))


def extra_sensitive_fields() -> dict[str, list[str]]:
    return dict(getattr(settings, "REPORTS_SENSITIVE_FIELDS", {}) or {})
