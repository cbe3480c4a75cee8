"""Worker command lines derived from the queue table.

The start scripts and Docker Compose run what this prints, so a queue, pool or
limit changes in ``admin_backend/queues.py`` only.

    python -m admin_backend.worker_commands              # one worker, all queues
    python -m admin_backend.worker_commands --groups     # one worker per group
    python -m admin_backend.worker_commands --group io   # one group's worker
    python -m admin_backend.worker_commands --json       # machine-readable

A group whose queues have ``autoscale=(max, min)`` gets ``--autoscale=max,min``
instead of ``--concurrency``. A group with ``worker_processes=N`` (N > 1) is N
lines, ``worker-<group>-1`` ... with node names ``<group>-1@%h`` ...: separate
worker processes of the same shape on this host.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import asdict, dataclass

from admin_backend import queues


@dataclass(frozen=True)
class WorkerCommand:
    name: str
    queues: tuple[str, ...]
    args: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(self.args)


def _base_args(
    *,
    queue_names,
    hostname,
    pool,
    concurrency,
    prefetch,
    max_tasks,
    max_memory_kb,
    autoscale=None,
) -> tuple[str, ...]:
    # --autoscale=max,min replaces --concurrency: the pool starts with min processes
    # and grows to max (Celery ignores --concurrency when both are given).
    if autoscale:
        size = f"--autoscale={autoscale[0]},{autoscale[1]}"
    else:
        size = f"--concurrency={concurrency}"
    args = [
        "celery",
        "-A",
        "admin_backend",
        "worker",
        "--loglevel",
        os.environ.get("CELERY_LOG_LEVEL", "INFO").lower(),
        f"--pool={pool}",
        size,
        f"--prefetch-multiplier={prefetch}",
        f"--queues={','.join(queue_names)}",
        f"--hostname={hostname}",
    ]
    if pool == "prefork":
        # Child recycling only exists for prefork; the spec's 1000 by default.
        args.append(f"--max-tasks-per-child={max_tasks}")
        if max_memory_kb:
            args.append(f"--max-memory-per-child={max_memory_kb}")
    return tuple(args)


def all_in_one() -> WorkerCommand:
    """The spec's single worker: every queue, prefork, concurrency from the environment."""
    concurrency = int(os.environ.get("CELERY_WORKER_CONCURRENCY", "4"))
    max_tasks = int(os.environ.get("CELERY_WORKER_MAX_TASKS_PER_CHILD", "1000"))
    return WorkerCommand(
        "worker",
        queues.QUEUE_NAMES,
        _base_args(
            queue_names=queues.QUEUE_NAMES,
            hostname="worker@%h",
            pool="prefork",
            concurrency=concurrency,
            prefetch=1,
            max_tasks=max_tasks,
            max_memory_kb=None,
        ),
    )


def for_group(group: str, instance: int | None = None) -> WorkerCommand:
    """The group's worker command; ``instance`` numbers one of its worker processes."""
    groups = queues.worker_groups()
    if group not in groups:
        raise SystemExit(f"unknown worker group {group!r}; groups: {', '.join(sorted(groups))}")
    specs = groups[group]
    pools = {spec.pool for spec in specs}
    if len(pools) != 1:
        raise SystemExit(
            f"group {group!r} mixes pools {sorted(pools)}; fix admin_backend/queues.py"
        )
    memory = [spec.max_memory_per_child_kb for spec in specs if spec.max_memory_per_child_kb]
    # The table's validation guarantees one autoscale value per group.
    autoscale = specs[0].autoscale
    node = group if instance is None else f"{group}-{instance}"
    return WorkerCommand(
        f"worker-{node}",
        tuple(spec.name for spec in specs),
        _base_args(
            queue_names=[spec.name for spec in specs],
            hostname=f"{node}@%h",
            pool=pools.pop(),
            concurrency=max(spec.concurrency for spec in specs),
            prefetch=min(spec.prefetch_multiplier for spec in specs),
            max_tasks=min(spec.max_tasks_per_child for spec in specs),
            max_memory_kb=min(memory) if memory else None,
            autoscale=autoscale,
        ),
    )


def processes_of_group(group: str) -> list[WorkerCommand]:
    """The group's worker processes on one host (``worker_processes`` of them)."""
    command = for_group(group)  # an unknown group ends here, with the known ones named
    count = queues.worker_groups()[group][0].worker_processes
    if count == 1:
        return [command]
    return [for_group(group, index) for index in range(1, count + 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", action="store_true", help="one worker per worker group")
    parser.add_argument("--group", help="only this worker group")
    parser.add_argument("--json", action="store_true", help="print JSON instead of shell lines")
    options = parser.parse_args(argv)
    if options.group:
        commands = processes_of_group(options.group)
    elif options.groups:
        commands = [c for group in queues.worker_groups() for c in processes_of_group(group)]
    else:
        commands = [all_in_one()]
    if options.json:
        print(json.dumps([asdict(command) for command in commands], indent=2))
    else:
        for command in commands:
            # "name<TAB>command": the start script splits on the tab.
            print(f"{command.name}\t{command.shell()}")


if __name__ == "__main__":
    main()
