"""Email queue tasks: thin wrappers over notifications.services."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="notifications.tasks.send_email_message")
def send_email_message(
    recipients: list[str], subject: str, text_body: str, html_body: str | None = None
) -> dict:
    """Send one email; SMTP 4xx and lost connections retry, 5xx and bad addresses fail."""
    return services.send_message(recipients, subject, text_body, html_body)
