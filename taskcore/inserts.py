"""``Model.objects.create`` for hot paths: Django's INSERT, compiled once per database.

Django builds and compiles an INSERT on every ``save()``; for the outbox's row
that was ~0.2 ms, a fifth of a ``send_after_commit`` (B1 in docs/benchmarks.md).
Here Django's own compiler writes the SQL once per database alias, and each call
only prepares the values as the compiler would (``Field.pre_save``, then
``Field.get_db_prep_save``), so the row is the one ``create()`` writes.

Not for every model: no ``pre_save``/``post_save`` signals are sent, and the
primary key must come from the model (a default such as ``uuid4``), not from
the database.
"""

from __future__ import annotations

from django.db import connections, router
from django.db.models.sql import InsertQuery


class CompiledInsert:
    """Inserts instances of one model with SQL compiled once per database alias."""

    def __init__(self, model):
        if model._meta.pk.db_returning:
            raise ValueError(f"{model.__name__}: the database makes its key; use create()")
        self.model = model
        self.fields = list(model._meta.local_concrete_fields)
        self._sql: dict[str, str] = {}

    def _sql_for(self, alias: str) -> str:
        sql = self._sql.get(alias)
        if sql is None:
            query = InsertQuery(self.model)
            query.insert_values(self.fields, [self.model()])
            ((sql, _params),) = query.get_compiler(using=alias).as_sql()
            self._sql[alias] = sql
        return sql

    def create(self, **values):
        """Build an instance from ``values``, insert it, return it (as ``create()`` does)."""
        instance = self.model(**values)
        alias = router.db_for_write(self.model, instance=instance)
        connection = connections[alias]
        params = [
            field.get_db_prep_save(field.pre_save(instance, add=True), connection)
            for field in self.fields
        ]
        with connection.cursor() as cursor:
            cursor.execute(self._sql_for(alias), params)
        instance._state.adding = False
        instance._state.db = alias
        return instance
