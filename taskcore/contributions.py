"""What the apps contribute to the platform's shared surfaces.

Each app registers its parts in its ``AppConfig.ready()``:

- cleanups: named jobs that the maintenance queue runs nightly and
  ``manage.py cleanup`` runs on demand (reports: expired exports);
- work in progress: rows for the operations dashboard (notifications: running
  campaigns).

Whoever runs or shows them reads this registry and imports none of the
contributors, so the apps stay independent of each other and an app that is not
installed simply contributes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

# A cleanup returns what it removed: a count, or counts by kind.
Cleanup = Callable[[], int | dict[str, int]]
# A work-in-progress provider returns dashboard sections: {"campaigns": [rows], ...}.
WorkInProgress = Callable[[int], dict[str, object]]

_cleanups: dict[str, Cleanup] = {}
_work_in_progress: dict[str, WorkInProgress] = {}


def register_cleanup(name: str, cleanup: Cleanup) -> None:
    """Register a cleanup under ``name`` (names are global; registering again replaces it)."""
    _cleanups[name] = cleanup


def registered_cleanups() -> dict[str, Cleanup]:
    return dict(_cleanups)


def register_work_in_progress(app_label: str, provider: WorkInProgress) -> None:
    """Register an app's provider of work-in-progress sections (one per app)."""
    _work_in_progress[app_label] = provider


def work_in_progress(limit: int) -> dict[str, object]:
    """Every registered app's sections, merged; each section holds at most ``limit`` rows."""
    sections: dict[str, object] = {}
    for provider in _work_in_progress.values():
        sections.update(provider(limit))
    return sections
