"""List, replay and purge dead letters from the terminal."""

from __future__ import annotations

import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from taskcore import deadletters
from taskcore.models import DeadLetter


class Command(BaseCommand):
    help = "Dead letters: tasks that failed for good. list | replay | purge"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("list", "replay", "purge"))
        parser.add_argument(
            "--id", type=int, action="append", dest="ids", help="record id (repeat)"
        )
        parser.add_argument("--task", help="task name")
        parser.add_argument("--queue", help="queue name")
        parser.add_argument("--reason", choices=[choice for choice, _ in DeadLetter.Reason.choices])
        parser.add_argument("--not-replayed", action="store_true", help="only never replayed")
        parser.add_argument("--older-than-days", type=float, help="last seen more than N days ago")
        parser.add_argument("--all", action="store_true", help="replay/purge every match")
        parser.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
        parser.add_argument("--json", action="store_true", help="list as JSON lines")

    def handle(self, action, **options):
        try:
            parked = deadletters.store_parked_dead_letters()
        except Exception as exc:  # Redis away: the database's letters still list
            self.stderr.write(f"parked dead letters not read from Redis: {exc}")
        else:
            if parked:
                self.stdout.write(f"stored {parked} dead letter(s) parked in Redis")
        letters = self._select(options)
        if action == "list":
            return self._list(letters, options)
        if not (options["ids"] or options["all"]):
            raise CommandError(f"{action} needs --id N (repeatable) or --all with filters")
        if action == "replay":
            outcome = deadletters.replay_many(letters.iterator())
            for pk, task_id in outcome.replayed:
                self.stdout.write(f"replayed {pk} as task {task_id}")
            for _, problem in outcome.failed:
                self.stderr.write(problem)
            self.stdout.write(f"{len(outcome.replayed)} replayed, {len(outcome.failed)} failed")
            if outcome.failed:
                raise CommandError(f"{len(outcome.failed)} dead letter(s) could not be replayed")
        else:
            deleted, _ = letters.delete()
            self.stdout.write(f"purged {deleted} dead letter(s)")

    def _select(self, options):
        letters = DeadLetter.objects.all()
        if options["ids"]:
            letters = letters.filter(pk__in=options["ids"])
            missing = set(options["ids"]) - set(letters.values_list("pk", flat=True))
            if missing:
                raise CommandError(f"no dead letter with id {sorted(missing)}")
        for option, field in (("task", "task_name"), ("queue", "queue"), ("reason", "reason")):
            if options[option]:
                letters = letters.filter(**{field: options[option]})
        if options["not_replayed"]:
            letters = letters.filter(replayed_at__isnull=True)
        if options["older_than_days"] is not None:
            cutoff = timezone.now() - timedelta(days=options["older_than_days"])
            letters = letters.filter(last_seen__lt=cutoff)
        return letters.order_by("-last_seen")

    def _list(self, letters, options):
        for letter in letters[: options["limit"]]:
            row = {
                "id": letter.pk,
                "task": letter.task_name,
                "task_id": letter.task_id,
                "queue": letter.queue,
                "reason": letter.reason,
                "error": f"{letter.exception_type}: {letter.exception_message[:200]}",
                "attempts": letter.attempts,
                "last_seen": letter.last_seen.isoformat(),
                "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None,
            }
            if options["json"]:
                self.stdout.write(json.dumps(row))
            else:
                replayed = f" replayed {row['replayed_at']}" if row["replayed_at"] else ""
                self.stdout.write(
                    f"{row['id']:>6} {row['last_seen'][:19]} {row['queue']:<11} {row['task']} "
                    f"[{row['reason']}] {row['error']}{replayed}"
                )
        if not options["json"]:
            self.stdout.write(f"{letters.count()} dead letter(s) match")
