"""Hostile content: spreadsheet formulas hidden in exported text, animations that are pixel bombs.

Spreadsheet cells follow OWASP's CSV Injection page (docs/reports.md lists the
rules): the table below is the rule, one input and the exact CSV cell each;
one export runs on a real reports worker and is read back as a user would.
Animated images: every frame counts in the pixel budget (docs/media.md); the
uploads through a real media worker are in tests/test_media_pipeline.py.
"""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal

import openpyxl
import pytest
from django.db import connection
from openpyxl.utils.escape import unescape
from test_reports_support import grant_view, wait_for_export

from media import services as media_services
from media import testing as media_testing
from reports import services, writers
from reports.models import SampleRecord

# input -> the CSV cell written for it. A leading ' marks a neutralised value.
FORMULA_CELLS = [
    # OWASP's list: a cell must not begin with = + - @ tab (0x09) or CR (0x0D)
    ("=1+1", "'=1+1"),
    ("+1", "'+1"),
    ("-1", "'-1"),
    ("-5", "'-5"),  # text that looks like a number is still text
    ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
    ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
    ("\t=1", "'\t=1"),
    ("\tplain", "'\tplain"),
    ("\r=1", "'\r=1"),
    ("\rplain", "'\rplain"),
    # OWASP's later revision adds line feed (0x0A); OWASP ASVS 5.0 V1.2.10 adds NUL
    ("\nplain", "'\nplain"),
    ("\x00plain", "'\x00plain"),
    ("\x00", "'\x00"),
    # a trigger reached after leading whitespace or control characters
    (" =1+1", "' =1+1"),
    ("    +1", "'    +1"),
    ("\x00=cmd|' /C calc'!A0", "'\x00=cmd|' /C calc'!A0"),
    ("\n@SUM(1,2)", "'\n@SUM(1,2)"),
    ("\x0b=1", "'\x0b=1"),  # vertical tab
    ("\x1f-2+3", "'\x1f-2+3"),  # unit separator
    ("\x7f=1", "'\x7f=1"),  # DEL
    ("\u00a0=1", "'\u00a0=1"),  # no-break space
    ("\u3000=1", "'\u3000=1"),  # ideographic space
    ("\u200b=1", "'\u200b=1"),  # zero-width space
    ("\ufeff@cmd", "'\ufeff@cmd"),  # byte order mark
    ("\u202e=1", "'\u202e=1"),  # right-to-left override
    (" \t\r\n =1", "' \t\r\n =1"),
    # full-width and other compatibility forms of the signs (NFKC folds them to ASCII)
    ("\uff1d1+1", "'\uff1d1+1"),  # FULLWIDTH EQUALS SIGN
    ("\uff0b1", "'\uff0b1"),  # FULLWIDTH PLUS SIGN
    ("\uff0d1", "'\uff0d1"),  # FULLWIDTH HYPHEN-MINUS
    ("\uff20SUM(A1)", "'\uff20SUM(A1)"),  # FULLWIDTH COMMERCIAL AT
    ("\ufe66 1", "'\ufe66 1"),  # SMALL EQUALS SIGN
    ("\u3000\uff1d1", "'\u3000\uff1d1"),  # after an ideographic space
    # not formulas: unchanged
    ("plain", "plain"),
    ("a=1", "a=1"),
    ("1-2", "1-2"),
    ("12", "12"),
    ("'=1", "'=1"),  # already quoted: a quote first is never a trigger
    ("  spaces  ", "  spaces  "),
    ("   ", "   "),
    ("", ""),
    (" \u00a0", " \u00a0"),
    ("line 1\nline 2", "line 1\nline 2"),
    ("(555) 123-4567", "(555) 123-4567"),
    ("Zo\u00eb \u6771\u4eac", "Zo\u00eb \u6771\u4eac"),
    ("\u300c=\u300d", "\u300c=\u300d"),  # a visible bracket first
]


@pytest.mark.parametrize(("value", "cell"), FORMULA_CELLS)
def test_formula_triggers_are_neutralised_after_any_leading_whitespace_or_control(value, cell):
    assert writers.neutralise_formula(value) == cell
    assert writers.is_risky(value) == (cell != value)  # XLSX's quote-prefix style, same rule


@pytest.mark.parametrize(
    "number", [-5, -0.5, Decimal("-12.50"), 0, dt.date(2024, 1, 2), dt.timedelta(days=-1)]
)
def test_real_numbers_and_dates_are_never_changed(number):
    assert writers.neutralise_formula(number) == str(number)


# --- a real export, read back ---------------------------------------------------------

HOSTILE_NAMES = [value for value, cell in FORMULA_CELLS if value]
if connection.vendor == "postgresql":  # PostgreSQL text cannot hold NUL: not storable there
    HOSTILE_NAMES = [value for value in HOSTILE_NAMES if "\x00" not in value]


def _read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.django_db(transaction=True)
def test_exports_on_a_worker_neutralise_hidden_formulas_and_keep_numbers_numeric(
    start_worker, django_user_model
):
    viewer = django_user_model.objects.create_user("exporter", is_staff=True)
    grant_view(viewer, "samplerecord")
    viewer = django_user_model.objects.get(pk=viewer.pk)
    created = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    SampleRecord.objects.bulk_create(
        SampleRecord(name=name, quantity=-5, amount=Decimal("-12.50"), created_at=created)
        for name in HOSTILE_NAMES
    )
    fields = ["name", "quantity", "amount"]
    exports = {
        fmt: services.create_export(
            user=viewer, model_label="reports.SampleRecord", fields=fields, fmt=fmt
        )
        for fmt in ("csv", "xlsx")
    }
    start_worker(["reports"])
    for fmt, export in exports.items():
        export = wait_for_export(export)
        assert export.status == "ready", (fmt, export.error)
        exports[fmt] = export
    expected = dict(FORMULA_CELLS)

    rows = _read_csv(services.export_path(exports["csv"]))
    assert rows[0] == fields
    assert [row[0] for row in rows[1:]] == [expected[name] for name in HOSTILE_NAMES]
    assert {(row[1], row[2]) for row in rows[1:]} == {("-5", "-12.50")}  # numbers untouched

    sheet = openpyxl.load_workbook(services.export_path(exports["xlsx"])).worksheets[0]
    for name, (text, quantity, amount) in zip(
        HOSTILE_NAMES, sheet.iter_rows(min_row=2), strict=True
    ):
        # The text is stored as it is, as a string cell; a risky one carries Excel's
        # quote prefix (what a typed leading ' sets), so even editing it runs nothing.
        assert text.data_type == "s" and unescape(text.value) == name
        assert bool(text.quotePrefix) == (expected[name] != name), repr(name)
        assert (quantity.data_type, quantity.value) == ("n", -5)
        assert (amount.data_type, amount.value) == ("n", -12.5)


# --- animated images: every frame counts ----------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "a.gif"), ("PNG", "a.png"), ("WEBP", "a.webp")])
def test_every_frame_of_an_animation_counts_in_the_pixel_budget(fmt, name):
    ten_frames = media_testing.animation(fmt, ["red", "blue"] * 5, size=(100, 100))
    assert media_services.render(ten_frames, name, max_pixels=100_000).format == fmt

    # Each frame (10,000 pixels) is far under the limit; the ten together are not.
    with pytest.raises(media_services.Rejected) as refused:
        media_services.render(ten_frames, name, max_pixels=99_999)
    label = media_services.FORMAT_LABELS[fmt]
    assert str(refused.value) == (
        f"decompression bomb refused: animated {label} of 10 frames of 100x100 is "
        "100,000 pixels in all (every frame counts), the limit is 99,999"
    )
