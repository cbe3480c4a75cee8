"""Claim "effect X for key K" once, with a database unique constraint.

Tasks run at least once (acks late, redelivery after a crash). Make each effect
happen once by claiming it:

    from taskcore.idempotency import effect_once

    with effect_once("invoice-paid", invoice_id) as first:
        if first:
            mark_invoice_paid(invoice_id)      # database effects: same transaction

The claim and the effects inside the block commit together or not at all, so a
crash in the middle leaves nothing claimed and the next delivery does the work.
For effects outside the database (an email), claim first and send inside the
block: a crash after sending and before commit sends twice (at least once); a
claim committed before sending could lose the email instead (at most once).
Pick per effect; notifications record deliveries this way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import IntegrityError, transaction


def claim_effect(scope: str, key, task_id: str = "") -> bool:
    """Record the effect; True the first time for (scope, key), False afterwards.

    Call inside a transaction that also holds the effect.
    """
    from .models import EffectClaim

    try:
        with (
            transaction.atomic()
        ):  # a savepoint: a duplicate does not spoil the caller's transaction
            EffectClaim.objects.create(scope=scope, key=str(key), task_id=task_id or "")
    except IntegrityError:
        return False
    return True


@contextmanager
def effect_once(scope: str, key, task_id: str = "") -> Iterator[bool]:
    """A transaction holding the claim: yields True when this caller does the effect."""
    with transaction.atomic():
        yield claim_effect(scope, key, task_id)


def effect_done(scope: str, key) -> bool:
    from .models import EffectClaim

    return EffectClaim.objects.filter(scope=scope, key=str(key)).exists()
