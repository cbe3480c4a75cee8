"""Settings of the email app, from Django settings or else the environment.

Django's own ``EMAIL_*`` settings (host, port, TLS, user, password, default
from address) are read by ``admin_backend/settings.py``; these are the ones
only this app uses. Each is read when used, so a test's ``settings`` fixture
or a worker's environment can change it.
"""

from __future__ import annotations

from email.utils import parseaddr

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Recipients per batch task: all share one SMTP connection. Larger batches mean
# fewer tasks and connections; smaller ones spread a campaign over more workers
# and lose less progress when a worker dies.
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 1_000
# A notification is a personal message to a few people, not a mailing.
MAX_NOTIFICATION_RECIPIENTS = 50


def _value(name: str) -> str | None:
    value = getattr(settings, name, None)
    return None if value in (None, "") else str(value)


def batch_size() -> int:
    raw = _value("EMAIL_BATCH_SIZE")
    if raw is None:
        return DEFAULT_BATCH_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"EMAIL_BATCH_SIZE must be a whole number, got {raw!r}"
        ) from None
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ImproperlyConfigured(f"EMAIL_BATCH_SIZE must be 1..{MAX_BATCH_SIZE}, got {size}")
    return size


def site_url() -> str:
    """Base of the links put in mail (unsubscribe), e.g. ``https://admin.au-vlp.org``."""
    return (_value("EMAIL_SITE_URL") or "http://127.0.0.1:8000").rstrip("/")


def unsubscribe_mailto() -> str:
    """Optional address for ``List-Unsubscribe: <mailto:...>``; empty: the link only."""
    from .addresses import EmailInputError, clean_address

    address = _value("EMAIL_UNSUBSCRIBE_MAILTO")
    if not address:
        return ""
    try:
        return clean_address(address)
    except EmailInputError as exc:
        raise ImproperlyConfigured(f"EMAIL_UNSUBSCRIBE_MAILTO: {exc}") from None


def message_id_domain() -> str:
    """Right-hand side of the Message-IDs we assign: the sender's domain."""
    configured = _value("EMAIL_MESSAGE_ID_DOMAIN")
    if configured:
        return configured
    _name, address = parseaddr(settings.DEFAULT_FROM_EMAIL)
    return address.rpartition("@")[2] or "au-vlp.local"


def claim_lease_seconds() -> int:
    """How long a batch's claim holds without being renewed.

    A running batch renews its claims every FLUSH_SECONDS from the task's own
    thread while its sending threads wait on the relay, so only a dead batch
    lets its claims lapse; then another task may take them over. No time limit
    is relied on (the email queue's prefork pool enforces the queue's, shorter
    than the lease; at the soft one a batch releases what it has not sent).
    """
    timeout = getattr(settings, "EMAIL_TIMEOUT", None) or 30
    return max(300, 10 * int(timeout))


# SMTP connections each worker process keeps open to the relay. Against a relay
# 50 ms away one connection sends about 20 mails a second (one round trip per
# mail, pipelined); the email queue runs 2 to 8 processes (the queue table), so 8
# per process covers the round trip up to the CPU's limit (B2: about 500/s here).
# Relays limit concurrent connections per account: processes x this stays below it.
DEFAULT_SMTP_CONNECTIONS = 8
MAX_SMTP_CONNECTIONS = 64
# Relays close a session that stayed quiet (often after 30 to 300 s); one idle
# longer than this is reopened before use instead of failing on the first command.
DEFAULT_SMTP_IDLE_SECONDS = 20


def _bounded_int(name: str, default: int, low: int, high: int) -> int:
    raw = _value(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ImproperlyConfigured(f"{name} must be {low}..{high}, got {value}")
    return value


def smtp_connections() -> int:
    return _bounded_int("EMAIL_SMTP_CONNECTIONS", DEFAULT_SMTP_CONNECTIONS, 1, MAX_SMTP_CONNECTIONS)


def smtp_idle_seconds() -> int:
    return _bounded_int("EMAIL_SMTP_IDLE_SECONDS", DEFAULT_SMTP_IDLE_SECONDS, 1, 3600)


def rate_limit() -> str:
    """``EMAIL_RATE_LIMIT`` as written (``14/s``, ``600/m``, ``50 per second``); empty: none."""
    return _value("EMAIL_RATE_LIMIT") or ""
