"""Put every address of a provider's bounce export on the suppression list.

    python manage.py import_bounces bounces.csv
    python manage.py import_bounces export.csv --email-column "Recipient Address"

The file is CSV with a header line; the address column is found by name
(email, address, recipient, ...) and a reason column (reason, error, status,
...) is kept as the entry's detail. A file with any bad address imports
nothing unless --skip-invalid is given: a half-imported list is hard to notice.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from notifications import suppression
from notifications.addresses import EmailInputError


class Command(BaseCommand):
    help = "Import a provider's bounce list (CSV) into the suppression list."

    def add_arguments(self, parser):
        parser.add_argument("csv_file", type=Path)
        parser.add_argument("--email-column", help="name of the address column if not detected")
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="import the valid addresses even if some lines are bad (they are listed)",
        )

    def handle(self, *args, csv_file: Path, email_column: str | None, skip_invalid: bool, **_):
        try:
            bounces = suppression.read_bounce_csv(csv_file, email_column)
        except EmailInputError as exc:
            raise CommandError(str(exc)) from None
        for line in bounces.bad_lines:
            self.stderr.write(f"{csv_file.name} {line}")
        if bounces.bad_lines and not skip_invalid:
            raise CommandError(
                f"{len(bounces.bad_lines)} bad line(s), nothing imported; fix them or use "
                "--skip-invalid"
            )
        added = suppression.import_bounces(bounces)
        self.stdout.write(
            f"{len(bounces.addresses)} address(es) read, {added} newly suppressed, "
            f"{len(bounces.addresses) - added} already on the list"
            + (f", {len(bounces.bad_lines)} bad line(s) skipped" if bounces.bad_lines else "")
        )
