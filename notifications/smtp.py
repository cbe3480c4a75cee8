"""SMTP for a relay tens of milliseconds away: pipelined commands, connections kept open.

Against a remote relay every SMTP command waits a round trip. smtplib's
``sendmail`` waits four per message (MAIL, RCPT, DATA, the content), and a new
connection costs the greeting, EHLO (STARTTLS, EHLO again, AUTH) and QUIT on
top. Here:

- ``PipeliningSMTP.send_one`` writes MAIL, RCPT and DATA in one packet when the
  server offers PIPELINING (RFC 2920), then the content: two round trips.
- ``ConnectionPool`` keeps each worker process's connections open across
  batches (bounded: ``EMAIL_SMTP_CONNECTIONS``), reopens one that sat idle for
  ``EMAIL_SMTP_IDLE_SECONDS`` (relays close idle sessions) and one the server
  closed.
- ``Connection.send`` backs that one connection off when the relay answers 421
  (closing) or a 4xx to MAIL FROM (slow down), and tries the same message again
  on a fresh session; other connections and the campaign go on.

Opening uses Django's SMTP backend (host, port, STARTTLS/SSL, login, timeout
from the ``EMAIL_*`` settings), so configuration means what it means elsewhere.
"""

from __future__ import annotations

import logging
import os
import random
import re
import smtplib
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.mail.backends.smtp import EmailBackend

from taskcore.base import TransientError

from . import conf

logger = logging.getLogger(__name__)

CRLF = b"\r\n"
_LEADING_DOT = re.compile(rb"(?m)^\.")
# Backoff of one connection after 421 / 4xx to MAIL FROM: 0.5 s doubling to 8 s,
# jittered. Eight refusals in a row (about 30 s) hand the batch back to its task.
BACKOFF_FIRST, BACKOFF_CAP, MAX_REFUSALS = 0.5, 8.0, 8


class PipeliningSMTP(smtplib.SMTP):
    def send_one(self, from_addr: str, to_addr: str, data: bytes) -> None:
        """Send one message to one recipient; raise what ``sendmail`` raises.

        Without PIPELINING on the server this is ``sendmail``.
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("pipelining"):
            self.sendmail(from_addr, [to_addr], data)
            return
        size = f" SIZE={len(data)}" if self.has_extn("size") else ""
        envelope = (
            f"MAIL FROM:{smtplib.quoteaddr(from_addr)}{size}\r\n"
            f"RCPT TO:{smtplib.quoteaddr(to_addr)}\r\nDATA\r\n"
        )
        self.send(envelope.encode("ascii"))
        # Replies come in command order; after a 421 the server hangs up, so
        # stop reading at the first one.
        mail = self._reply_or_close()
        if mail[0] == 421:
            raise smtplib.SMTPSenderRefused(*mail, from_addr)
        rcpt = self._reply_or_close()
        if rcpt[0] == 421:
            raise smtplib.SMTPRecipientsRefused({to_addr: rcpt})
        data_reply = self._reply_or_close()
        if mail[0] != 250 or rcpt[0] not in (250, 251) or data_reply[0] != 354:
            if data_reply[0] == 354:  # a server that took DATA anyway: end it empty
                self.send(b"." + CRLF)
                self.getreply()
            if data_reply[0] != 421:
                self.rset()
            if mail[0] != 250:
                raise smtplib.SMTPSenderRefused(*mail, from_addr)
            if rcpt[0] not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({to_addr: rcpt})
            raise smtplib.SMTPDataError(*data_reply)
        content = _LEADING_DOT.sub(b"..", data)
        if not content.endswith(CRLF):
            content += CRLF
        self.send(content + b"." + CRLF)
        code, message = self._reply_or_close()
        if code != 250:
            raise smtplib.SMTPDataError(code, message)

    def _reply_or_close(self) -> tuple[int, bytes]:
        code, message = self.getreply()
        if code == 421:
            self.close()
        return code, message


class PipeliningSSL(PipeliningSMTP, smtplib.SMTP_SSL):
    pass


class _Backend(EmailBackend):
    """Django's SMTP backend opening our client class."""

    @property
    def connection_class(self):
        return PipeliningSSL if self.use_ssl else PipeliningSMTP


class RelayRefusing(TransientError):
    """One connection was refused this many times in a row: let the task retry later."""


@dataclass
class Connection:
    """One pooled SMTP session and its backoff state; used by one thread at a time."""

    backend: _Backend
    last_used: float = 0.0
    refusals: int = 0  # in a row; reset by a message accepted

    def send(self, from_addr: str, to_addr: str, data: bytes, before_attempt=None) -> None:
        """Send one message; 421 and a 4xx to MAIL FROM back off and try again here.

        ``before_attempt()`` runs before each try (the rate limit's token).
        Per-message refusals (4xx/5xx to RCPT or to the content) are raised for
        the caller to record; they also slow this connection down (a 4xx there
        is often "too fast"), without trying again.
        """
        disconnects = 0
        while True:
            self._pause()
            if before_attempt is not None:
                before_attempt()
            try:
                self._session().send_one(from_addr, to_addr, data)
            except smtplib.SMTPServerDisconnected:
                # Closed while idle (relays drop quiet sessions), or mid-message:
                # once on a fresh session; twice in a row is a real outage.
                self.close()
                disconnects += 1
                if disconnects > 1:
                    raise
                continue
            except (smtplib.SMTPConnectError, smtplib.SMTPSenderRefused) as exc:
                if exc.smtp_code == 421 or (
                    isinstance(exc, smtplib.SMTPSenderRefused) and 400 <= exc.smtp_code < 500
                ):
                    self._refused(exc)
                    continue
                raise
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                code = _code(exc)
                if code == 421:  # the server closed the session: not this message's fault
                    self._refused(exc)
                    continue
                if 400 <= code < 500:
                    self.refusals += 1
                raise
            self.refusals = 0
            self.last_used = time.monotonic()
            return

    def _pause(self) -> None:
        if self.refusals:
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.refusals - 1))
            time.sleep(delay * random.uniform(0.5, 1.0))

    def _refused(self, exc: smtplib.SMTPResponseException) -> None:
        self.close()
        self.refusals += 1
        logger.info("SMTP relay refused (%s); connection backs off", _answer(exc))
        if self.refusals >= MAX_REFUSALS:
            self.refusals = 0
            raise RelayRefusing(
                f"the relay refused {MAX_REFUSALS} times in a row, last: {_answer(exc)}"
            ) from None

    def _session(self) -> PipeliningSMTP:
        idle_for = time.monotonic() - self.last_used
        if self.backend.connection is not None and idle_for > conf.smtp_idle_seconds():
            self.close()  # the relay has probably dropped it; a NOOP would cost the same trip
        if self.backend.connection is None:
            self.backend.open()
            self.last_used = time.monotonic()
        return self.backend.connection

    def close(self) -> None:
        try:
            self.backend.close()
        except (smtplib.SMTPException, OSError) as exc:
            logger.debug("closing an SMTP connection failed: %s", exc)
        self.backend.connection = None


def _code(exc: smtplib.SMTPException) -> int:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))[0]
    return getattr(exc, "smtp_code", 0)


def _answer(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{exc.smtp_code} {text}"


class ConnectionPool:
    """This process's SMTP connections, at most ``size`` of them, reused across batches."""

    def __init__(self, size: int):
        self.size = size
        self._idle: list[Connection] = []
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._settings = _connection_settings()

    def checkout(self) -> Connection:
        self._free.acquire()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Connection(_Backend(fail_silently=False))

    def checkin(self, connection: Connection) -> None:
        with self._lock:
            self._idle.append(connection)
        self._free.release()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _connection_settings() -> tuple:
    return (
        settings.EMAIL_HOST,
        settings.EMAIL_PORT,
        settings.EMAIL_HOST_USER,
        settings.EMAIL_USE_TLS,
        settings.EMAIL_USE_SSL,
        conf.smtp_connections(),
    )


_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def pool() -> ConnectionPool:
    """This process's pool; a new one when the SMTP settings changed (tests, reconfiguration)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._settings != _connection_settings():
            if _pool is not None:
                _pool.close_all()
            _pool = ConnectionPool(conf.smtp_connections())
        return _pool


def uses_smtp() -> bool:
    """Whether EMAIL_BACKEND is Django's SMTP backend (else: console, file, locmem, ...)."""
    from django.utils.module_loading import import_string

    backend = import_string(settings.EMAIL_BACKEND)
    return isinstance(backend, type) and issubclass(backend, EmailBackend)


def _forget_after_fork() -> None:
    # A pool child must not share its parent's sockets (or a lock held at fork).
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
