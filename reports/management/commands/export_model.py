"""Export a model registered in the admin to CSV or XLSX on the reports queue.

    manage.py export_model auth.User --user alice --format xlsx \
        --fields id,username,email --filter '{"is_staff": true}' --wait
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from reports import services
from reports.exportable import ExportError

from ._waiting import wait_and_report


class Command(BaseCommand):
    help = (
        "Request an export of a model registered in the admin (CSV or XLSX). The file is "
        "made by a worker of the reports queue; the user gets an email with the link."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", help="app_label.ModelName, e.g. auth.User")
        parser.add_argument(
            "--user",
            required=True,
            help="username of the requester: needs view permission on the model, gets the email",
        )
        parser.add_argument("--format", default="csv", choices=["csv", "xlsx"])
        parser.add_argument(
            "--fields", default="", help="comma-separated field names (default: all exportable)"
        )
        parser.add_argument(
            "--filter",
            default="",
            help="JSON object of lookups on the model's fields, e.g. '{\"id__in\": [1, 2]}'",
        )
        parser.add_argument("--base-url", default="", help="scheme and host for the emailed link")
        parser.add_argument(
            "--wait", action="store_true", help="wait until the file is ready and print its path"
        )
        parser.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits")

    def handle(self, *args, **options):
        user = find_user(options["user"])
        try:
            filters = json.loads(options["filter"]) if options["filter"] else {}
        except json.JSONDecodeError as exc:
            raise CommandError(f"--filter is not valid JSON: {exc}") from None
        fields = [name for name in options["fields"].split(",") if name.strip()] or None
        try:
            with transaction.atomic():
                export = services.create_export(
                    user=user,
                    model_label=options["model"],
                    fields=fields,
                    filters=filters,
                    fmt=options["format"],
                    link_base=options["base_url"],
                )
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"export #{export.pk} of {export.model_label} queued "
            f"({export.format}, columns: {', '.join(export.fields)})"
        )
        if options["wait"]:
            wait_and_report(self, export, options["timeout"])


def find_user(username: str):
    model = get_user_model()
    try:
        return model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        raise CommandError(f"no user {username!r}") from None
