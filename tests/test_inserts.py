"""taskcore.inserts: the row written with SQL compiled once equals the one create() writes."""

from __future__ import annotations

import pytest
from django.utils import timezone

from taskcore.inserts import CompiledInsert
from taskcore.models import DeadLetter, OutboxMessage


@pytest.mark.django_db
def test_compiled_insert_writes_the_row_create_writes_on_this_database():
    values = {
        "task_name": "reports.tasks.run_export",
        "args": [1, "ünïcode", {"nested": [None, 2.5]}],
        "kwargs": {"user": "a@example.org", "when": "2026-12-06"},
        "options": {"queue": "reports", "countdown": 30},
        "claimed_until": timezone.now(),
    }
    insert = CompiledInsert(OutboxMessage)
    fast = insert.create(**values)
    again = insert.create(**values)  # the compiled SQL is reused
    slow = OutboxMessage.objects.create(**values)

    def stored(row):
        data = OutboxMessage.objects.filter(pk=row.pk).values().get()
        assert data.pop("id") == row.pk
        assert abs((data.pop("created_at") - row.created_at).total_seconds()) < 1e-3
        return data

    assert stored(fast) == stored(slow) == stored(again)
    assert fast.pk != again.pk and not fast._state.adding
    assert OutboxMessage.objects.count() == 3


def test_compiled_insert_refuses_a_model_whose_key_the_database_makes():
    with pytest.raises(ValueError, match="the database makes its key"):
        CompiledInsert(DeadLetter)
