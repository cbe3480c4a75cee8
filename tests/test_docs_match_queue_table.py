"""The docs' tables of worker groups and compose services agree with the queue table.

docs/scaling.md and docs/deployment.md describe the groups in prose tables a reader
can take in at a glance; the queue table (admin_backend/queues.py) is the truth. A
change to the table that the docs do not follow fails here, naming the row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from admin_backend import queues, worker_commands

# Runs in the SQLite pass only: nothing here touches the test database.
pytestmark = pytest.mark.database_independent

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The cells of the table whose header line starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_scaling_md_group_table_matches_the_queue_table():
    rows = table_rows((DOCS / "scaling.md").read_text(), "| group | queues |")
    groups = queues.worker_groups()
    assert [ticked(row[0])[0] for row in rows] == list(groups)
    for group_cell, queues_cell, pool, size, prefetch, processes in rows:
        group = ticked(group_cell)[0]
        specs = groups[group]
        spec = specs[0]
        assert ticked(queues_cell) == [s.name for s in specs], group
        assert pool == spec.pool, group
        if spec.autoscale:
            assert f"autoscale {spec.autoscale[1]}-{spec.autoscale[0]}" in size, group
        else:
            assert int(re.match(r"\d+", size).group()) == max(s.concurrency for s in specs), group
        assert int(prefetch) == min(s.prefetch_multiplier for s in specs), group
        assert int(re.search(r"\d+", processes).group()) == spec.worker_processes, group
        hostnames = [
            a.split("=", 1)[1]
            for c in worker_commands.processes_of_group(group)
            for a in c.args
            if a.startswith("--hostname=")
        ]
        assert ticked(processes) == hostnames, group


def test_deployment_md_names_every_group_service_of_the_compose_file():
    rows = table_rows((DOCS / "deployment.md").read_text(), "| Service | Runs")
    documented = {name for row in rows for name in ticked(row[0]) if name.startswith("worker-")}
    expected = {
        command.name
        for group in queues.worker_groups()
        for command in worker_commands.processes_of_group(group)
    }
    assert documented == expected, (
        f"docs/deployment.md lists {sorted(documented)}; the queue table runs {sorted(expected)}"
    )
