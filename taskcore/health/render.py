"""Output of a health report: JSON, a rich table, or one summary line."""

from __future__ import annotations

import json
from datetime import datetime

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from taskcore.secrets import mask_text

from .model import HealthReport, Status

STYLES = {Status.OK: "green", Status.WARNING: "yellow", Status.CRITICAL: "bold red"}
LABELS = {Status.OK: "OK", Status.WARNING: "WARNING", Status.CRITICAL: "CRITICAL"}


def render_json(report: HealthReport, *, indent: int | None = 2) -> str:
    return mask_text(json.dumps(report.as_dict(), indent=indent, default=str))


def render_summary(report: HealthReport, *, limit: int = 3) -> str:
    counts = report.counts()
    head = (
        f"{LABELS[report.status]}: {counts['critical']} critical, {counts['warning']} warning, "
        f"{counts['ok']} ok in {report.duration_ms:.0f} ms"
    )
    problems = report.problems()
    if not problems:
        return head
    shown = "; ".join(f"{result.name}: {result.detail}" for result in problems[:limit])
    more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return mask_text(f"{head} | {shown}{more}")


def table(report: HealthReport) -> Group:
    counts = report.counts()
    title = Text.assemble(
        ("Task system health: ", "bold"),
        (LABELS[report.status], STYLES[report.status]),
        f"  ({counts['critical']} critical, {counts['warning']} warning, {counts['ok']} ok; "
        f"{report.duration_ms:.0f} ms; broker {mask_text(report.broker)}; "
        f"{datetime.fromtimestamp(report.started_at):%Y-%m-%d %H:%M:%S})",
    )
    grid = Table(box=box.SIMPLE_HEAVY, show_lines=False, expand=False)
    grid.add_column("Check", no_wrap=True)
    grid.add_column("Status", no_wrap=True)
    grid.add_column("ms", justify="right", no_wrap=True)
    grid.add_column("Detail", overflow="fold")
    grid.add_column("Remedy", overflow="fold", style="dim")
    for result in report.results:
        latency = "" if result.latency_ms is None else f"{result.latency_ms:.1f}"
        grid.add_row(
            result.name,
            Text(result.status.value, STYLES[result.status]),
            latency,
            mask_text(result.detail),
            mask_text(result.remedy),
        )
    return Group(title, grid)


def print_table(report: HealthReport, console: Console) -> None:
    console.print(table(report))
