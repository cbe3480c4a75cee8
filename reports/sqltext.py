"""CSV columns rendered as text by the database, so Python only moves strings.

Building a datetime or a Decimal object per value and turning it back into text
costs more than everything else in a CSV export (profiled: about 60% of the
time on SQLite, the datetime loader alone 40% on PostgreSQL). For CSV the
database renders each value as the text Python would have written, so those
values go from the cursor to ``csv.writer`` untouched:

- boolean: ``'True'`` / ``'False'``; date and time: ``CAST(col AS text)``, as ``str()``;
- datetime (USE_TZ): SQLite the stored text plus ``+00:00``, PostgreSQL ``to_char``
  in UTC: both exactly ``str(aware UTC datetime)``;
- decimal: SQLite ``printf('%.Nf')``, PostgreSQL ``col::text``: ``str(Decimal)``;
- integer, float: the value itself.

Anything else is fetched as Python values and handled by ``writers.CsvSink``:
text columns (strings already; their formulas are neutralised there, by the one
rule ``writers.is_risky``, which SQL cannot express portably), UUID, JSON,
custom fields, and datetimes and decimals on other databases.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Case, F, Func, TextField, Value, When
from django.db.models.functions import Cast

from . import writers


class DateTimeText(Func):
    """An aware datetime column as ``str(datetime)`` in UTC would write it."""

    output_field = TextField()

    def as_sqlite(self, compiler, connection, **extra):
        # Django stores str(naive UTC datetime): only the offset is missing.
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} || '+00:00')", params

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        utc = f"({sql} AT TIME ZONE 'UTC')"
        # str() leaves out the fraction when it is zero.
        fraction = (
            f"CASE WHEN MOD(EXTRACT(MICROSECONDS FROM {sql})::bigint, 1000000) = 0 "
            f"THEN '' ELSE to_char({utc}, '.US') END"
        )
        return (
            f"(to_char({utc}, 'YYYY-MM-DD HH24:MI:SS') || {fraction} || '+00:00')",
            params * 3,
        )


class DecimalText(Func):
    """A decimal column with its field's decimal places, as ``str(Decimal)``."""

    output_field = TextField()

    def __init__(self, expression, decimal_places: int):
        super().__init__(expression)
        self.decimal_places = int(decimal_places)

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        # printf() turns NULL into 0.00: keep NULL empty.
        rendered = f"printf('%%.{self.decimal_places}f', {sql})"
        return f"(CASE WHEN {sql} IS NULL THEN NULL ELSE {rendered} END)", params * 2

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql})::text", params


_FAST_VENDORS = frozenset({"sqlite", "postgresql"})


def text_expression(field, vendor: str):
    """The SQL rendering of one column, or None to fetch the Python value."""
    kind = writers.kind_of_field(field)
    column = field.attname
    if kind == writers.BOOLEAN:
        return Case(
            When(**{column: True}, then=Value("True")),
            When(**{column: False}, then=Value("False")),
            output_field=TextField(),
        )
    if kind in (writers.DATE, writers.TIME) and not field.is_relation:
        return Cast(F(column), TextField())
    if vendor not in _FAST_VENDORS or field.is_relation:
        return None
    if kind == writers.DATETIME and settings.USE_TZ:
        return DateTimeText(F(column))
    if kind == writers.DECIMAL:
        return DecimalText(F(column), field.decimal_places)
    return None


def csv_columns(model, fields: list[str], vendor: str) -> tuple[dict, list[str], list[str]]:
    """(annotations, values_list names, column kinds) for a CSV export of ``fields``."""
    annotations: dict = {}
    names: list[str] = []
    kinds: list[str] = []
    for index, name in enumerate(fields):
        field = model._meta.get_field(name)
        expression = text_expression(field, vendor)
        if expression is None:
            names.append(name)
            kinds.append(writers.kind_of_field(field))
        else:
            alias = f"export_column_{index}"
            annotations[alias] = expression
            names.append(alias)
            kinds.append(writers.RENDERED)
    return annotations, names, kinds
