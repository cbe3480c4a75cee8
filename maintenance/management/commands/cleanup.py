"""Run a maintenance cleanup now, in this process (or list them)."""

import json

from django.core.management.base import BaseCommand, CommandError

from maintenance import cleanups
from taskcore.base import PermanentError


class Command(BaseCommand):
    help = "Run cleanups now: manage.py cleanup NAME [NAME ...] | --all | --list"

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*")
        parser.add_argument("--all", action="store_true")
        parser.add_argument("--list", action="store_true")

    def handle(self, names, **options):
        if options["list"]:
            for name in sorted(cleanups.all_cleanups()):
                self.stdout.write(name)
            return
        names = sorted(cleanups.all_cleanups()) if options["all"] else names
        if not names:
            raise CommandError("name a cleanup, or use --all (--list shows them)")
        for name in names:
            try:
                report = cleanups.run_cleanup(name)
            except PermanentError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(json.dumps(report.as_dict()))
