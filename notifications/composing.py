"""Turning templates and a recipient into an email message.

Django templates render both bodies: the HTML body with autoescaping (a
recipient called ``<script>`` stays text), the plain-text body and the subject
without it (an ``&`` in a name must not become ``&amp;`` in plain text).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.utils import formataddr, formatdate, quote

from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.core.mail.message import sanitize_address
from django.template import Context, TemplateDoesNotExist, TemplateSyntaxError, engines
from django.template.loader import get_template
from django.urls import reverse
from django.utils.safestring import mark_safe

from . import conf, mime
from .addresses import EmailInputError, clean_subject
from .models import Campaign, Delivery

UNSUBSCRIBE_SALT = "notifications.unsubscribe"
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


def _engine():
    return engines["django"].engine


def _render(template, context: dict, *, html: bool) -> str:
    return template.render(Context(context, autoescape=html))


# --- notifications: templates in files ----------------------------------------


def render_notification(template_name: str, context: dict) -> tuple[str, str, str]:
    """Subject, text and HTML of ``notifications/email/<template_name>/``.

    ``subject.txt`` and ``body.txt`` are required, ``body.html`` is optional.
    """
    if not isinstance(template_name, str) or not TEMPLATE_NAME.match(template_name):
        # Also keeps a caller from reaching outside the email templates ("../").
        raise EmailInputError(
            f"template name must be lower-case letters, digits, - and _: {template_name!r}"
        )
    base = f"notifications/email/{template_name}"
    try:
        subject_template = get_template(f"{base}/subject.txt").template
        text_template = get_template(f"{base}/body.txt").template
    except TemplateDoesNotExist as exc:
        raise EmailInputError(f"no email template {template_name!r} (missing {exc})") from None
    try:
        html_template = get_template(f"{base}/body.html").template
    except TemplateDoesNotExist:
        html_template = None
    subject = clean_subject(_render(subject_template, context, html=False))
    text = _render(text_template, context, html=False)
    html = _render(html_template, context, html=True) if html_template else ""
    return subject, text, html


# --- campaigns: templates typed in the admin ----------------------------------


def compile_campaign_template(field: str, source: str):
    """Compile one of a campaign's templates; an error names the field."""
    if field == "subject" and ("\n" in source or "\r" in source):
        raise EmailInputError("subject: must be one line (header injection refused)")
    try:
        return _engine().from_string(source) if source else None
    except TemplateSyntaxError as exc:
        raise EmailInputError(f"{field}: template error: {exc}") from None


def compile_campaign_templates(subject: str, text: str, html: str) -> tuple:
    return (
        compile_campaign_template("subject", subject),
        compile_campaign_template("text body", text),
        compile_campaign_template("HTML body", html),
    )


def unsubscribe_token(email: str, campaign_id: int) -> str:
    return signing.dumps([email, campaign_id], salt=UNSUBSCRIBE_SALT)


def read_unsubscribe_token(token: str) -> tuple[str, int]:
    """The (email, campaign id) a token was made for; ``signing.BadSignature`` if forged."""
    email, campaign_id = signing.loads(token, salt=UNSUBSCRIBE_SALT)
    return str(email), int(campaign_id)


def unsubscribe_url_base() -> str:
    """The unsubscribe URL up to its token; add ``token + "/"`` to complete it.

    Resolved once per batch: ``reverse()`` for every recipient costs more than
    signing the token.
    """
    path = reverse("notifications:unsubscribe", args=["TOKEN"])
    return conf.site_url() + path.removesuffix("TOKEN/")


@dataclass
class Outgoing:
    """One rendered message for one recipient, and the two ways to send it."""

    subject: str
    text: str
    html: str
    name: str
    address: str
    headers: dict[str, str]

    def django_message(self, connection=None) -> EmailMultiAlternatives:
        message = EmailMultiAlternatives(
            subject=self.subject,
            body=self.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[_display_address(self.name, self.address)],
            headers=self.headers,
            connection=connection,
        )
        if self.html:
            message.attach_alternative(self.html, "text/html")
        return message

    def as_bytes(self) -> bytes:
        """What goes after DATA: our serialiser, or Django's for what it does not cover."""
        data = mime.serialise(
            sender=_from_header(),
            recipient_name=self.name,
            recipient_address=self.address,
            subject=self.subject,
            date=formatdate(localtime=settings.EMAIL_USE_LOCALTIME),
            message_id=self.headers["Message-ID"],
            text=self.text,
            html=self.html,
            extra_headers={k: v for k, v in self.headers.items() if k != "Message-ID"},
        )
        if data is None:
            data = self.django_message().message().as_bytes(linesep="\r\n")
        return data

    def envelope(self) -> tuple[str, str, bytes]:
        """(MAIL FROM, RCPT TO, the message) as SMTP takes them."""
        recipient = self.address if self.address.isascii() else _sanitised(self.address)
        return _from_header(), recipient, self.as_bytes()

    def send(self, connection) -> None:
        """Send over an open Django email backend; SMTP errors are smtplib's, as raised."""
        smtp = getattr(connection, "connection", None)
        if isinstance(connection, SMTPBackend) and smtp is not None:
            # The bytes straight to smtplib: what Django's backend does after
            # building the message, without building it through the email package.
            sender, recipient, data = self.envelope()
            smtp.sendmail(sender, [recipient], data)
        else:  # console, file, locmem and third-party backends take Django messages
            connection.send_messages([self.django_message(connection)])


def _display_address(name: str, address: str) -> str:
    if not name:
        return address
    if address.isascii():
        return formataddr((name, address))  # quotes or RFC 2047-encodes the name
    # formataddr refuses a non-ASCII address; Django's sanitize_address, which
    # parses this string again, encodes the name and the domain (IDNA).
    return f'"{quote(name)}" <{address}>'


def _sanitised(address: str) -> str:
    return sanitize_address(address, settings.DEFAULT_CHARSET)


@functools.cache
def _from_header_for(from_email: str) -> str:
    return _sanitised(from_email)


def _from_header() -> str:
    # Settings can change under override_settings; the cache keys on the value.
    return _from_header_for(settings.DEFAULT_FROM_EMAIL)


class MessageComposer:
    """Builds each delivery's message; compiles a campaign's templates once per batch."""

    def __init__(self):
        self._campaigns: dict[int, tuple] = {}
        self._layouts = None
        self._mailto = conf.unsubscribe_mailto()
        self._unsubscribe_base = unsubscribe_url_base()

    def compose(self, delivery: Delivery) -> Outgoing:
        headers = {"Message-ID": delivery.message_id}
        if delivery.campaign_id:
            subject, text, html = self._render_campaign(delivery, headers)
        else:
            notification = delivery.notification
            subject, text, html = (
                notification.subject,
                notification.text_body,
                notification.html_body,
            )
        return Outgoing(clean_subject(subject), text, html, delivery.name, delivery.email, headers)

    def _render_campaign(self, delivery: Delivery, headers: dict) -> tuple[str, str, str]:
        campaign = delivery.campaign
        subject_t, text_t, html_t = self._compiled(campaign)
        url = self._unsubscribe_base + unsubscribe_token(delivery.email, campaign.pk) + "/"
        context = {
            "name": delivery.name,
            "email": delivery.email,
            "campaign": campaign.name,
            "unsubscribe_url": url,
        }
        text_layout, html_layout = self._layout_templates()
        subject = _render(subject_t, context, html=False)
        body = _render(text_t, context, html=False)
        text = _render(text_layout, {**context, "body": body}, html=False)
        html = ""
        if html_t:
            # The body is already escaped by its own rendering: insert it as is.
            body = mark_safe(_render(html_t, context, html=True))  # noqa: S308
            html = _render(html_layout, {**context, "body": body}, html=True)
        # RFC 2369 and RFC 8058: mail clients show an unsubscribe button and may
        # POST "List-Unsubscribe=One-Click" to the link without a browser.
        targets = [f"<{url}>"]
        if self._mailto:
            targets.append(f"<mailto:{self._mailto}?subject=unsubscribe>")
        headers["List-Unsubscribe"] = ", ".join(targets)
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return subject, text, html

    def _compiled(self, campaign: Campaign) -> tuple:
        if campaign.pk not in self._campaigns:
            self._campaigns[campaign.pk] = compile_campaign_templates(
                campaign.subject, campaign.text_template, campaign.html_template
            )
        return self._campaigns[campaign.pk]

    def _layout_templates(self):
        if self._layouts is None:
            self._layouts = (
                get_template("notifications/email/campaign/layout.txt").template,
                get_template("notifications/email/campaign/layout.html").template,
            )
        return self._layouts
