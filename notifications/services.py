"""Sending email through Django's email framework, with input checks first."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import make_msgid
from django.core.validators import validate_email

from taskcore.base import PermanentError

MAX_RECIPIENTS = 50


def _clean_header(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise PermanentError(f"{what} contains a line break (header injection refused): {value!r}")
    return value


def clean_recipients(recipients: list[str] | str) -> list[str]:
    if isinstance(recipients, str):
        recipients = [recipients]
    if not recipients:
        raise PermanentError("no recipient given")
    if len(recipients) > MAX_RECIPIENTS:
        raise PermanentError(f"{len(recipients)} recipients; at most {MAX_RECIPIENTS} per message")
    cleaned = []
    for address in recipients:
        _clean_header(str(address), "recipient address")
        try:
            validate_email(address)
        except ValidationError:
            raise PermanentError(f"invalid email address: {address!r}") from None
        cleaned.append(address)
    return cleaned


def send_message(
    recipients: list[str] | str, subject: str, text_body: str, html_body: str | None = None
) -> dict:
    """Send one message over the configured SMTP connection; return who got it."""
    to = clean_recipients(recipients)
    subject = _clean_header(str(subject), "subject")
    message_id = make_msgid(domain="au-vlp.local")
    message = EmailMultiAlternatives(
        subject=subject, body=text_body, to=to, headers={"Message-ID": message_id}
    )
    if html_body:
        message.attach_alternative(html_body, "text/html")
    message.send(fail_silently=False)
    return {"to": to, "message_id": message_id}
