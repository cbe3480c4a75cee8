"""Checks on what goes into an email's headers: addresses, display names, subjects.

Everything a caller or an admin user types passes through here before it is
stored or sent, so a bad value is refused with an error that names it, and a
line break can never reach a header (header injection: ``"x\\nBcc: ..."``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formataddr

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from taskcore.base import PermanentError

# RFC 5321 section 4.5.3.1, in octets (UTF-8 for internationalised addresses):
# a path of at most 256 octets, angle brackets included, leaves 254 for the
# address; at most 64 for the local part and 255 for the domain.
MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_DOMAIN_LENGTH = 255
MAX_NAME_LENGTH = 200
MAX_SUBJECT_LENGTH = 300

# "Ada Lovelace <ada@example.org>" or a bare address.
_NAMED_ADDRESS = re.compile(r"^(?P<name>.*?)\s*<(?P<address>[^<>]*)>$", re.DOTALL)
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class EmailInputError(PermanentError, ValueError):
    """A value that must never be sent: bad address, line break in a header, bad template.

    A ``PermanentError`` so a task fails at once (retrying cannot fix the input),
    and a ``ValueError`` so application code can catch it like any bad argument.
    """


@dataclass(frozen=True)
class Recipient:
    email: str  # normalised: stripped and lower-cased, the delivery key
    name: str = ""

    @property
    def display(self) -> str:
        # formataddr quotes a name with commas or quotes and encodes a non-ASCII one.
        return formataddr((self.name, self.email))


def refuse_line_breaks(value: str, what: str) -> str:
    if _LINE_BREAKS.search(value):
        raise EmailInputError(
            f"{what} contains a line break, refused (header injection): {value[:120]!r}"
        )
    return value


def clean_subject(subject: str) -> str:
    # Template files end with a newline; only breaks inside the subject are refused.
    subject = refuse_line_breaks(str(subject).strip(), "subject")
    if not subject:
        raise EmailInputError("subject is empty")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise EmailInputError(f"subject is {len(subject)} characters; at most {MAX_SUBJECT_LENGTH}")
    return subject


def clean_address(address: str) -> str:
    """A bare address, validated and lower-cased (one mailbox, one delivery key)."""
    if not isinstance(address, str):
        raise EmailInputError(f"an email address must be text, got {type(address).__name__}")
    refuse_line_breaks(address, "email address")
    address = address.strip()
    if not address:
        raise EmailInputError("empty email address")
    _refuse_over_rfc5321_lengths(address)
    try:
        validate_email(address)
    except ValidationError:
        raise EmailInputError(f"invalid email address: {address!r}") from None
    return address.lower()


def _refuse_over_rfc5321_lengths(address: str) -> None:
    octets = len(address.encode("utf-8"))
    if octets > MAX_ADDRESS_LENGTH:
        raise EmailInputError(
            f"email address is {octets} octets; at most {MAX_ADDRESS_LENGTH} (RFC 5321): "
            f"{address[:60]!r}..."
        )
    local, at, domain = address.rpartition("@")
    if not at:
        return  # no "@": validate_email names that problem
    for part, octets, limit in (
        ("local part (before the @)", len(local.encode("utf-8")), MAX_LOCAL_PART_LENGTH),
        ("domain", len(domain.encode("utf-8")), MAX_DOMAIN_LENGTH),
    ):
        if octets > limit:
            raise EmailInputError(
                f"email address's {part} is {octets} octets; at most {limit} (RFC 5321): "
                f"{address[:60]!r}..."
            )


def parse_recipient(value: str) -> Recipient:
    """``"ada@example.org"`` or ``"Ada Lovelace <ada@example.org>"`` -> Recipient."""
    if not isinstance(value, str):
        raise EmailInputError(f"a recipient must be text, got {type(value).__name__}")
    refuse_line_breaks(value, "recipient")
    value = value.strip()
    match = _NAMED_ADDRESS.match(value)
    if not match:
        return Recipient(clean_address(value))
    name = match["name"].strip().strip('"').strip()
    if len(name) > MAX_NAME_LENGTH:
        raise EmailInputError(f"recipient name is longer than {MAX_NAME_LENGTH} characters")
    return Recipient(clean_address(match["address"]), name)


def parse_recipients(values: list[str] | tuple[str, ...] | str, *, limit: int) -> list[Recipient]:
    """Parse a few recipients (a notification); duplicates are dropped, order kept."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple):
        raise EmailInputError(
            f"recipients must be a list of addresses, got {type(values).__name__}"
        )
    if not values:
        raise EmailInputError("no recipient given")
    if len(values) > limit:
        raise EmailInputError(f"{len(values)} recipients; at most {limit} per notification")
    return _unique([parse_recipient(value) for value in values])


def parse_audience(text: str) -> list[Recipient]:
    """Parse a campaign audience: one recipient per line, blank lines and ``#`` comments ignored.

    Every bad line is reported at once (with its line number), so an admin user
    fixes a pasted list in one go.
    """
    recipients, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            recipients.append(parse_recipient(line))
        except EmailInputError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        shown = problems[:20]
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise EmailInputError("; ".join(shown) + more)
    if not recipients:
        raise EmailInputError("the audience has no recipients")
    return _unique(recipients)


def _unique(recipients: list[Recipient]) -> list[Recipient]:
    seen: dict[str, Recipient] = {}
    for recipient in recipients:
        seen.setdefault(recipient.email, recipient)
    return list(seen.values())
