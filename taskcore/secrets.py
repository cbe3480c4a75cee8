"""Masking of secrets: no password in a URL is ever printed or logged."""

from __future__ import annotations

import re

MASK = "****"

# scheme://user:password@host  (user may be empty: redis://:password@host)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<secret>[^@\s'\"/]+)(?P<tail>@)"
)
# ?password=... in query strings (sentinel and some DSNs carry it there)
_QUERY_PASSWORD = re.compile(
    r"(?P<head>[?&](?:password|sentinel_password|pass)=)(?P<secret>[^&\s'\"]+)", re.I
)


def mask_url(url: str | None) -> str:
    """Return ``url`` with its password replaced by ``****``.

    ``redis://:s3cret@host:6379/0`` becomes ``redis://:****@host:6379/0``.
    Works for several ``;``-separated URLs (Celery failover lists) too.
    """
    if not url:
        return ""
    return mask_text(url)


def mask_text(text: str) -> str:
    """Mask every URL password found anywhere in free text (log lines, errors)."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], text)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, text)
