"""The direct MIME serialiser (notifications.mime) against Django's own messages.

Each case builds one message both ways and compares what a mail client reads:
headers (decoded), parts, content types, transfer encodings and bodies.
"""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from django.core import mail
from django.core.mail import get_connection

from notifications import mime
from notifications.composing import Outgoing

LONG_UNSUBSCRIBE = (
    "<https://volunteers.example.org/notifications/unsubscribe/"
    + "eyJhbGciOiJIUzI1NiJ9" * 6
    + "/>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
)
CAMPAIGN_HEADERS = {
    "Message-ID": "<170.1.2@volunteers.example.org>",
    "List-Unsubscribe": LONG_UNSUBSCRIBE,
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}

CASES = {
    "ascii campaign": Outgoing(
        "News for ada@example.org",
        "Hello Ada,\n\nthe volunteer news of the month.\n",
        "<p>Hello Ada,</p><p>the volunteer news.</p>",
        "Ada Lovelace",
        "ada@example.org",
        dict(CAMPAIGN_HEADERS),
    ),
    "non-ASCII subject, name and bodies": Outgoing(
        "Nouvelles pour Zoë, décembre à Genève",
        "Bonjour Zoë,\r\n\r\nles nouvelles.\r",
        "<p>Bonjour Zoë &amp; co</p>",
        'Zoë "Zed" Ng, jr',
        "zoe@example.org",
        dict(CAMPAIGN_HEADERS),
    ),
    "long subject": Outgoing(
        "A long subject " + "about volunteering " * 12,
        "text",
        "<p>html</p>",
        "",
        "bob@example.org",
        {"Message-ID": "<1@example.org>"},
    ),
    "line over 998 octets": Outgoing(
        "Long lines",
        "start " + "é" * 700 + "\nand a short line\n",
        "<p>" + "x" * 1200 + "</p>",
        "Ann",
        "ann@example.org",
        {"Message-ID": "<2@example.org>"},
    ),
    "text only, dots at line starts": Outgoing(
        "Plain",
        "one\n.\n..two\nlast line without break",
        "",
        "",
        "carl@example.org",
        {"Message-ID": "<3@example.org>"},
    ),
}


def what_a_client_reads(data: bytes) -> dict:
    message = message_from_bytes(data, policy=policy.default)
    parts = message.walk() if message.is_multipart() else [message]
    return {
        # Django's folding leaves a leading space on some long encoded values.
        "headers": [
            (name, str(value).strip())
            for name, value in message.items()
            if name not in ("Date", "Content-Type")
        ],
        "type": message.get_content_type(),
        "parts": [
            (part.get_content_type(), part["Content-Transfer-Encoding"], part.get_content())
            for part in parts
            if not part.is_multipart()
        ],
    }


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_direct_serialisation_reads_like_djangos_message(case):
    outgoing = CASES[case]
    ours = outgoing.as_bytes()
    django_bytes = outgoing.django_message().message().as_bytes(linesep="\r\n")

    assert what_a_client_reads(ours) == what_a_client_reads(django_bytes)
    assert message_from_bytes(ours, policy=policy.default)["Date"].datetime is not None


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_line_ends_in_crlf_and_stays_within_998_octets(case):
    data = CASES[case].as_bytes()
    assert data.endswith(b"\r\n") or case == "text only, dots at line starts"
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= mime.MAX_LINE_OCTETS


def test_headers_are_folded_at_whitespace_to_78_characters():
    data = CASES["ascii campaign"].as_bytes()
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    # Only a single word longer than a line (the signed unsubscribe URL) may exceed it.
    too_long = [line for line in head if len(line) > mime.FOLD_AT]
    assert too_long == [b" " + LONG_UNSUBSCRIBE.split(" ")[0].encode()]


def test_a_line_over_998_octets_switches_that_part_to_quoted_printable():
    parts = what_a_client_reads(CASES["line over 998 octets"].as_bytes())["parts"]
    assert [(kind, encoding) for kind, encoding, _ in parts] == [
        ("text/plain", "quoted-printable"),
        ("text/html", "quoted-printable"),
    ]
    assert parts[0][2].startswith("start " + "é" * 700)


@pytest.mark.parametrize(
    "field, value",
    [("subject", "Hello\nBcc: victim@example.org"), ("List-Unsubscribe", "<x>\r\nBcc: v@x.org")],
)
def test_a_line_break_in_a_header_is_refused(field, value):
    arguments = dict(
        sender="AU-VLP <no-reply@example.org>",
        recipient_name="",
        recipient_address="ada@example.org",
        subject="Hello",
        date="Wed, 02 Dec 2026 04:27:59 -0000",
        message_id="<1@x>",
        text="text",
    )
    if field == "subject":
        arguments["subject"] = value
    else:
        arguments["extra_headers"] = {field: value}
    with pytest.raises(ValueError, match="line break"):
        mime.serialise(**arguments)


def test_a_non_ascii_address_is_left_to_django_which_encodes_the_domain():
    outgoing = Outgoing("Hi", "text", "", "", "zoe@bücher.example", {"Message-ID": "<4@x>"})
    assert (
        mime.serialise(
            sender="a@example.org",
            recipient_name="",
            recipient_address=outgoing.address,
            subject="Hi",
            date="Wed, 02 Dec 2026 04:27:59 -0000",
            message_id="<4@x>",
            text="text",
        )
        is None
    )
    assert b"To: zoe@xn--bcher-kva.example" in outgoing.as_bytes()


def test_a_backend_other_than_smtp_gets_a_django_message():
    connection = get_connection("django.core.mail.backends.locmem.EmailBackend")
    mail.outbox = []
    CASES["ascii campaign"].send(connection)
    (sent,) = mail.outbox
    assert sent.to == ["Ada Lovelace <ada@example.org>"]
    assert sent.alternatives[0][1] == "text/html"
    assert sent.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
