"""What other apps may use of notifications: sending one e-mail, the campaigns under way.

The only module of this app that another app imports (import-linter holds it);
everything else here is internal and may change.
"""

from __future__ import annotations

from django.db.models import Count

from taskcore import outbox


def send_email_after_commit(recipients: list[str], subject: str, body: str):
    """Send one plain-text e-mail once the current transaction commits (at least once).

    Goes through the outbox, so a broker that is away at commit time delays the
    mail instead of losing it. Returns the outbox row (its id is the task id).
    """
    from .tasks import send_email_message

    return outbox.send_after_commit(send_email_message, [list(recipients), subject, body])


def campaigns_in_progress(limit: int) -> dict[str, list[dict]]:
    """The dashboard's "campaigns" section: queued and sending campaigns, oldest first."""
    from .models import Campaign, Delivery

    campaigns = Campaign.objects.filter(
        status__in=(Campaign.Status.QUEUED, Campaign.Status.SENDING)
    ).order_by("created_at")[:limit]
    rows = []
    for campaign in campaigns:
        counts = dict(campaign.deliveries.values_list("status").annotate(n=Count("id")).order_by())
        total = sum(counts.values())
        pending = sum(counts.get(status, 0) for status in Delivery.PENDING)
        rows.append(
            {
                "id": campaign.pk,
                "name": campaign.name,
                "status": campaign.status,
                "done": total - pending,
                "total": total,
                "counts": counts,
                "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
            }
        )
    return {"campaigns": rows}
