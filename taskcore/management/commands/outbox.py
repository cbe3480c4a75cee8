"""Publish pending outbox messages, or show the backlog."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from taskcore import outbox


class Command(BaseCommand):
    help = "Transactional outbox: relay (publish pending messages) | status"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("relay", "status"))

    def handle(self, action, **options):
        if action == "status":
            self.stdout.write(f"{outbox.backlog()} message(s) waiting to be published")
            return
        counts = outbox.relay()
        self.stdout.write(
            f"published {counts['published']}, failed {counts['failed']}, "
            f"skipped {counts['skipped']}; {outbox.backlog()} still waiting"
        )
        if counts["failed"]:
            raise CommandError("the broker did not accept every message; they stay in the outbox")
