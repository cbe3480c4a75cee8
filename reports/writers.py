"""Streaming CSV and XLSX writers that neutralise spreadsheet formulas.

Both take rows in chunks (tuples from ``values_list``) and keep nothing but the
current chunk in memory: CSV goes straight to the file, XLSX through XlsxWriter
in ``constant_memory`` mode (each row is flushed to a temporary file as soon as
the next one starts).

Formula injection (OWASP "CSV Injection"): a text cell that a spreadsheet
program could take for a formula is *risky*; ``is_risky`` is the one rule, used
by both writers (see its docstring for the characters).

- CSV has no cell types, so a risky value is written with a leading ``'``: the
  program shows the text and runs nothing (OWASP's recommendation).
- XLSX cells are typed: every text value is written as a string cell (never
  through ``write()``, which turns ``=...`` into a formula), and a risky one
  also gets Excel's *quote prefix* style (what Excel stores when a user types a
  leading ``'``), so it stays text even when a user edits the cell. The value
  itself is unchanged.

Numbers, booleans and dates are never text, so ``-5`` stays a number.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import unicodedata
import uuid
from collections.abc import Sequence

import xlsxwriter
from django.db import models
from django.utils import timezone

# OWASP CSV Injection's list of characters no cell may begin with: the formula
# signs, and tab, carriage return and line feed (a program may drop them while
# parsing and then see what follows). NUL is added from OWASP ASVS 5.0 V1.2.10.
FORMULA_SIGNS = frozenset("=+-@")
RISKY_FIRST_CONTROLS = frozenset("\t\r\n\x00")
# Characters a spreadsheet program (or a reader's eye) may pass over before a
# formula sign: whitespace of any script, control and invisible format
# characters (zero-width space, byte order mark, direction marks).
_SKIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})

# Excel's limits: rows per sheet (the header takes one), characters per cell.
XLSX_MAX_ROWS = 1_048_576
XLSX_MAX_STRING = 32_767
# Integers beyond this lose digits as Excel doubles: written as text instead.
XLSX_MAX_EXACT_INT = 2**53

# Column kinds: how a column's values are written.
TEXT, JSON, INTEGER, FLOAT, DECIMAL, BOOLEAN, DATETIME, DATE, TIME, OTHER = (
    "text",
    "json",
    "integer",
    "float",
    "decimal",
    "boolean",
    "datetime",
    "date",
    "time",
    "other",
)
# Text the database already rendered and neutralised (see reports.sqltext).
RENDERED = "rendered"
# Kinds whose values need no formula check: never strings, or already checked.
_NEVER_TEXT = frozenset({INTEGER, FLOAT, DECIMAL, BOOLEAN, DATETIME, DATE, TIME, RENDERED})
# Python values that are numbers or dates, not text: their ``str()`` is not user input.
_NEVER_FORMULAS = (int, float, decimal.Decimal, dt.date, dt.time, dt.timedelta, uuid.UUID)


def neutralise_formula(value) -> str:
    """Text for a CSV cell: ``None`` is empty, risky text gets a leading quote.

    A real number or date is never text, so it is never changed: ``-5`` stays
    ``-5`` and a spreadsheet reads it as the number it is.
    """
    if value is None:
        return ""
    text = str(value)
    if isinstance(value, _NEVER_FORMULAS):
        return text
    return "'" + text if is_risky(text) else text


def is_risky(text: str) -> bool:
    """Whether a spreadsheet program could read ``text`` as a formula.

    Risky: text whose first character is tab, CR, LF or NUL, or whose first
    character that is not whitespace, control or format character is a formula
    sign: ``=``, ``+``, ``-``, ``@``, or a character that NFKC folds to one
    (full-width U+FF1D U+FF0B U+FF0D U+FF20, small and superscript forms), which
    East Asian input methods and normalising importers turn into the ASCII sign.
    So ``" =1+1"``, ``"\\x00=cmd"``, ``"\\n@SUM"`` and ``"\\uff1d1+1"`` are risky;
    ``"a=1"`` and ``"  spaces"`` are not.
    """
    first = text[:1]
    if not first or first.isalnum():  # almost every cell: decided by one character
        return False
    if first in RISKY_FIRST_CONTROLS:
        return True
    for char in text:
        if char.isspace() or unicodedata.category(char) in _SKIPPED_CATEGORIES:
            continue
        return _is_formula_sign(char)
    return False


def _is_formula_sign(char: str) -> bool:
    return char in FORMULA_SIGNS or unicodedata.normalize("NFKC", char)[:1] in FORMULA_SIGNS


def kind_of_field(field) -> str:
    """The column kind of a model field (a foreign key takes its target's kind)."""
    if field.is_relation and getattr(field, "target_field", None) is not None:
        return kind_of_field(field.target_field)
    if isinstance(field, models.JSONField):
        return JSON
    if isinstance(field, models.BooleanField):
        return BOOLEAN
    if isinstance(field, models.IntegerField | models.AutoField):
        return INTEGER
    if isinstance(field, models.FloatField):
        return FLOAT
    if isinstance(field, models.DecimalField):
        return DECIMAL
    if isinstance(field, models.DateTimeField):
        return DATETIME
    if isinstance(field, models.DateField):
        return DATE
    if isinstance(field, models.TimeField):
        return TIME
    if isinstance(field, models.CharField | models.TextField):
        return TEXT
    return OTHER  # UUIDs, durations, custom fields: checked value by value


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class CsvSink:
    """Rows to an open text file (``newline=""``, UTF-8), RFC 4180 quoting."""

    def __init__(self, handle, headers: Sequence[str], kinds: Sequence[str]):
        self._writer = csv.writer(handle)
        self._writer.writerow(headers)
        self._json_columns = [i for i, kind in enumerate(kinds) if kind == JSON]
        self._checked_columns = [i for i, kind in enumerate(kinds) if kind not in _NEVER_TEXT]

    def write_rows(self, rows: Sequence[Sequence]) -> None:
        if not self._checked_columns:
            self._writer.writerows(rows)
            return
        json_columns, checked = self._json_columns, self._checked_columns
        cleaned = []
        for row in rows:
            row = list(row)
            for i in json_columns:
                if row[i] is not None:
                    row[i] = _json_text(row[i])
            for i in checked:
                if row[i] is not None:
                    row[i] = neutralise_formula(row[i])
            cleaned.append(row)
        self._writer.writerows(cleaned)

    def close(self) -> None:
        pass


class XlsxSink:
    """Rows to an .xlsx file with XlsxWriter's constant-memory mode.

    Sheets roll over at Excel's row limit ("Export", "Export 2", ...), each with
    the header row frozen at the top.
    """

    def __init__(self, path: str, headers: Sequence[str], kinds: Sequence[str], *, tmpdir=None):
        self._workbook = xlsxwriter.Workbook(
            path,
            {
                "constant_memory": True,
                "tmpdir": str(tmpdir) if tmpdir else None,
                # Never guess types from text: a string stays a string.
                "strings_to_formulas": False,
                "strings_to_numbers": False,
                "strings_to_urls": False,
                "nan_inf_to_errors": True,
                "use_zip64": True,
            },
        )
        self._headers = list(headers)
        self._header_format = self._workbook.add_format({"bold": True})
        self._quoted = self._workbook.add_format({"quote_prefix": True})
        self._datetime = self._workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self._date = self._workbook.add_format({"num_format": "yyyy-mm-dd"})
        self._time = self._workbook.add_format({"num_format": "hh:mm:ss"})
        self._kinds = list(kinds)
        self._sheets = 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._sheets += 1
        name = "Export" if self._sheets == 1 else f"Export {self._sheets}"
        sheet = self._workbook.add_worksheet(name)
        for col, header in enumerate(self._headers):
            sheet.set_column(col, col, max(10, min(40, len(header) + 2)))
            sheet.write_string(0, col, header, self._header_format)
        sheet.freeze_panes(1, 0)
        self._sheet = sheet
        self._row = 1
        self._cell_writers = [(col, self._writer_for(kind)) for col, kind in enumerate(self._kinds)]

    # One writer per column kind; each takes (row, col, value) with value not None.
    def _writer_for(self, kind: str):
        sheet = self._sheet
        write_string, write_number = sheet.write_string, sheet.write_number
        quoted = self._quoted

        def text(row, col, value):
            if value.__class__ is not str:
                value = _json_text(value) if isinstance(value, dict | list) else str(value)
            if is_risky(value):
                write_string(row, col, value, quoted)
            else:
                write_string(row, col, value)

        def json_value(row, col, value):
            text(row, col, _json_text(value))

        def integer(row, col, value):
            if -XLSX_MAX_EXACT_INT < value < XLSX_MAX_EXACT_INT:
                write_number(row, col, value)
            else:
                write_string(row, col, str(value))

        def decimal_value(row, col, value):
            if value.is_finite() and len(value.as_tuple().digits) <= 15:
                write_number(row, col, float(value))
            else:
                write_string(row, col, str(value))

        def boolean(row, col, value):
            sheet.write_boolean(row, col, value)

        datetime_format, date_format, time_format = self._datetime, self._date, self._time

        def datetime_value(row, col, value):
            if timezone.is_aware(value):
                value = timezone.make_naive(value)
            if value.year < 1900:  # before Excel's epoch
                write_string(row, col, value.isoformat(sep=" "))
            else:
                sheet.write_datetime(row, col, value, datetime_format)

        def date_value(row, col, value):
            if value.year < 1900:
                write_string(row, col, value.isoformat())
            else:
                sheet.write_datetime(row, col, value, date_format)

        def time_value(row, col, value):
            sheet.write_datetime(row, col, value.replace(tzinfo=None), time_format)

        def other(row, col, value):
            if isinstance(value, bool):
                boolean(row, col, value)
            elif isinstance(value, int):
                integer(row, col, value)
            elif isinstance(value, float):
                write_number(row, col, value)
            elif isinstance(value, decimal.Decimal):
                decimal_value(row, col, value)
            elif isinstance(value, dt.datetime):
                datetime_value(row, col, value)
            elif isinstance(value, dt.date):
                date_value(row, col, value)
            elif isinstance(value, uuid.UUID):
                write_string(row, col, str(value))
            else:
                text(row, col, value)

        return {
            TEXT: text,
            JSON: json_value,
            INTEGER: integer,
            FLOAT: write_number,
            DECIMAL: decimal_value,
            BOOLEAN: boolean,
            DATETIME: datetime_value,
            DATE: date_value,
            TIME: time_value,
        }.get(kind, other)

    def write_rows(self, rows: Sequence[Sequence]) -> None:
        for values in rows:
            if self._row >= XLSX_MAX_ROWS:
                self._new_sheet()
            row = self._row
            for col, write in self._cell_writers:
                value = values[col]
                if value is not None:
                    write(row, col, value)
            self._row = row + 1

    def close(self) -> None:
        self._workbook.close()


def open_sink(fmt: str, path: str, headers, kinds, *, handle=None, tmpdir=None):
    if fmt == "csv":
        return CsvSink(handle, headers, kinds)
    if fmt == "xlsx":
        return XlsxSink(path, headers, kinds, tmpdir=tmpdir)
    raise ValueError(f"unknown export format {fmt!r}")
