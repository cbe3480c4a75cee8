"""The suppression list: addresses campaigns never send to again.

Three ways in: an unsubscribe (``services.unsubscribe``), a hard bounce (a 5xx
answer to RCPT, recorded by the batch that got it) and a provider's bounce list
(``manage.py import_bounces``). One way out: ``remove``, which leaves an audit
row. The first reason an address got on the list is kept: an address that
unsubscribed and later bounced still reads "unsubscribed".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from .addresses import EmailInputError, clean_address
from .models import Suppression, SuppressionRemoval

Reason = Suppression.Reason

# Column names of bounce exports, lower-cased (SES, SendGrid, Mailgun, Postmark,
# Mailchimp use one of these); ``--email-column`` names any other.
EMAIL_COLUMNS = ("email", "email address", "emailaddress", "email_address", "address", "recipient")
DETAIL_COLUMNS = ("reason", "error", "description", "status", "code", "bouncetype", "type")


def add(
    emails: Iterable[str], reason: str, detail: str = "", campaign_id: int | None = None
) -> int:
    """Suppress the (already cleaned) addresses; return how many were new."""
    new = [
        Suppression(email=email, reason=reason, detail=detail[:2000], campaign_id=campaign_id)
        for email in dict.fromkeys(emails)
    ]
    if not new:
        return 0
    before = Suppression.objects.count()
    # ignore_conflicts: an address already suppressed keeps its first reason.
    Suppression.objects.bulk_create(new, batch_size=1_000, ignore_conflicts=True)
    return Suppression.objects.count() - before


def record_hard_bounces(bounces: dict[str, tuple[str, int | None]]) -> None:
    """``{email: (server's answer, campaign id)}`` from a batch's 5xx RCPT refusals."""
    for email, (answer, campaign_id) in bounces.items():
        add([email], Reason.HARD_BOUNCE, answer, campaign_id)


def remove(queryset, removed_by=None) -> int:
    """Delete suppression entries, each leaving a ``SuppressionRemoval``; return how many."""
    with transaction.atomic():
        entries = list(queryset.select_for_update())
        SuppressionRemoval.objects.bulk_create(
            SuppressionRemoval(
                email=entry.email,
                reason=entry.reason,
                detail=entry.detail,
                suppressed_at=entry.created_at,
                removed_by=removed_by,
            )
            for entry in entries
        )
        Suppression.objects.filter(pk__in=[entry.pk for entry in entries]).delete()
    return len(entries)


# --- a provider's bounce list ---------------------------------------------------


@dataclass
class BounceFile:
    addresses: dict[str, str]  # email -> detail
    bad_lines: list[str]


def read_bounce_csv(path: Path, email_column: str | None = None) -> BounceFile:
    """Read a provider's bounce export: the address column and a reason per row.

    Raises ``EmailInputError`` for a file that cannot be what was meant (no
    address column, not text); bad addresses are collected with their line number.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise EmailInputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
            email_key = _column(columns, [email_column.lower()] if email_column else EMAIL_COLUMNS)
            if email_key is None:
                wanted = repr(email_column) if email_column else " or ".join(EMAIL_COLUMNS)
                raise EmailInputError(
                    f"{path.name}: no address column ({wanted}) in the header line "
                    f"{list(columns)!r}; name it with --email-column"
                )
            detail_key = _column(columns, DETAIL_COLUMNS)
            found, bad = {}, []
            for row in reader:
                raw = (row.get(email_key) or "").strip()
                if not raw:
                    continue
                try:
                    email = clean_address(raw)
                except EmailInputError as exc:
                    bad.append(f"line {reader.line_num}: {exc}")
                    continue
                detail = (row.get(detail_key) or "").strip() if detail_key else ""
                found[email] = f"{path.name} line {reader.line_num}" + (
                    f": {detail}" if detail else ""
                )
        except (UnicodeDecodeError, csv.Error) as exc:
            raise EmailInputError(f"{path.name} is not a UTF-8 CSV file: {exc}") from None
    return BounceFile(found, bad)


def _column(columns: dict[str, str], candidates) -> str | None:
    return next((columns[name] for name in candidates if name in columns), None)


def import_bounces(bounces: BounceFile) -> int:
    """Suppress every address of a bounce file; return how many were new."""
    before = Suppression.objects.count()
    Suppression.objects.bulk_create(
        [
            Suppression(email=email, reason=Reason.IMPORTED, detail=detail[:2000])
            for email, detail in bounces.addresses.items()
        ],
        batch_size=1_000,
        ignore_conflicts=True,  # already there: keeps its first reason
    )
    return Suppression.objects.count() - before
