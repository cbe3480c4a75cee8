"""Shared by the reports tests: tricky sample data, reading exports back, waiting."""

from __future__ import annotations

import csv
import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import openpyxl
from django.contrib.auth.models import Permission
from openpyxl.utils.escape import unescape

from reports.models import ExportRequest, SampleRecord

CREATED = dt.datetime(2024, 2, 29, 13, 45, 7, 123000, tzinfo=dt.UTC)

# Everything a CSV or XLSX writer can get wrong, plus formula payloads.
TRICKY_ROWS = [
    # name, email, quantity, amount, active, notes
    ("Zoë Ångström — 東京 🚀", "zoe@example.org", 3, Decimal("12.50"), True, "line 1\nline 2"),
    ('Comma, "quoted" name', "", None, None, False, None),
    ("multi\r\nline, with ; separators", "a@b.c", -7, Decimal("-0.01"), True, ""),
    ('=HYPERLINK("http://evil.example","click")', "", 1, Decimal("1.00"), True, "=1+1"),
    ("+cmd|' /C calc'!A0", "", 2, None, True, "-2+3"),
    ("-2+3", "", 0, Decimal("0.00"), False, "@SUM(A1:A2)"),
    ("@SUM(1,2)", "", 5, None, True, "\tTabbed"),
    ("\tTab first", "", 6, None, True, "\rCarriage"),
    ("\rCR first", "", 7, None, True, "safe = text"),
    ("  spaces  ", "", 2_147_483_647, Decimal("9999999999.99"), True, "   "),
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EXPORTED_FIELDS = ["id", "name", "email", "quantity", "amount", "active", "created_at", "notes"]


def make_tricky_records() -> list[SampleRecord]:
    return SampleRecord.objects.bulk_create(
        SampleRecord(
            name=name,
            email=email,
            quantity=quantity,
            amount=amount,
            active=active,
            created_at=CREATED + dt.timedelta(minutes=i),
            notes=notes,
            api_token=f"tok-{i}-never-exported",
        )
        for i, (name, email, quantity, amount, active, notes) in enumerate(TRICKY_ROWS)
    )


def make_records(count: int, *, batch: int = 5000) -> None:
    for start in range(0, count, batch):
        SampleRecord.objects.bulk_create(
            SampleRecord(
                name=f"record {i}",
                quantity=i,
                created_at=CREATED,
                notes=None if i % 7 else "seventh",
            )
            for i in range(start, min(count, start + batch))
        )


def grant_view(user, model_name: str, app_label: str = "reports") -> None:
    user.user_permissions.add(
        Permission.objects.get(codename=f"view_{model_name}", content_type__app_label=app_label)
    )


def expected_rows(queryset=None, fields=EXPORTED_FIELDS) -> list[tuple]:
    queryset = SampleRecord.objects.all() if queryset is None else queryset
    return list(queryset.order_by("pk").values_list(*fields))


def csv_text(value) -> str:
    """What a neutralised CSV cell holds for a database value."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_STARTS) else text


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def read_xlsx(path: Path) -> tuple[list[list], list[list]]:
    """(values, quote_prefix flags) of the first sheet.

    openpyxl leaves Excel's ``_xHHHH_`` escapes of control characters in inline
    strings as they are (Excel and LibreOffice decode them), so decode them here.
    """
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    values, quoted = [], []
    for row in sheet.iter_rows():
        values.append([unescape(c.value) if isinstance(c.value, str) else c.value for c in row])
        quoted.append([bool(c.quotePrefix) for c in row])
    return values, quoted


def wait_for_export(export: ExportRequest, timeout: float = 60) -> ExportRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export.refresh_from_db()
        if export.status in (ExportRequest.Status.READY, ExportRequest.Status.FAILED):
            return export
        time.sleep(0.1)
    raise AssertionError(f"export #{export.pk} still {export.status} after {timeout}s")
