"""SMTP for a relay tens of milliseconds away: pipelined commands, connections kept open.

Against a remote relay every SMTP command waits a round trip. smtplib's
``sendmail`` waits four per message (MAIL, RCPT, DATA, the content), and a new
connection costs the greeting, EHLO (STARTTLS, EHLO again, AUTH) and QUIT on
top. Here:

- ``PipeliningSMTP.exchange``: when the server offers PIPELINING (RFC 2920),
  one write carries a message's content and the next message's MAIL, RCPT and
  DATA, and one read their answers: one round trip per message. Without it,
  ``sendmail``.
- ``ConnectionPool`` keeps each worker process's connections open across
  batches (bounded: ``EMAIL_SMTP_CONNECTIONS``), reopens one that sat idle for
  ``EMAIL_SMTP_IDLE_SECONDS`` (relays close idle sessions) and one the server
  closed.
- ``Connection`` backs that one connection off when the relay answers 421
  (closing) or a 4xx to MAIL FROM (slow down), and hands the messages back to
  the batch, to go again after the pause on a fresh session; other connections
  and the campaign go on.

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
# jittered. Eight refusals in a row (about 15 to 30 s) end the batch's run: its
# task retries later with the queue's backoff.
BACKOFF_FIRST, BACKOFF_CAP, MAX_REFUSALS = 0.5, 8.0, 8


@dataclass
class Envelope:
    """One message to one recipient, as SMTP takes it; ``key`` is the caller's."""

    key: object
    sender: str
    recipient: str
    data: bytes


# Stands for the answers a closed session never gave.
LOST = (0, b"connection lost")


class PipeliningSMTP(smtplib.SMTP):
    """smtplib with RFC 2920 pipelining of one message's end and the next one's start.

    One write carries the content of the message whose DATA was accepted and
    the MAIL, RCPT and DATA of the next; one read takes all their answers: one
    round trip per message. ``rset_first`` is set after a refused envelope, so
    the next write begins with the RSET that clears it.
    """

    rset_first = False

    def pipelines(self) -> bool:
        self.ehlo_or_helo_if_needed()
        return self.has_extn("pipelining")

    def exchange(self, finishing: Envelope | None, starting: Envelope | None):
        """Write ``finishing``'s content and ``starting``'s envelope; read their answers.

        Returns ``(answer to the content or None, [MAIL, RCPT, DATA answers] or
        None)``. Reading stops at a 421 (the server hangs up after it): the
        answers not read are missing from the result, and the session is closed.
        """
        out = []
        if finishing is not None:
            content = _LEADING_DOT.sub(b"..", finishing.data)
            if not content.endswith(CRLF):
                content += CRLF
            out.append(content + b"." + CRLF)
        rset = self.rset_first and starting is not None
        if rset:
            out.append(b"RSET" + CRLF)
            self.rset_first = False
        if starting is not None:
            size = f" SIZE={len(starting.data)}" if self.has_extn("size") else ""
            out.append(
                f"MAIL FROM:{smtplib.quoteaddr(starting.sender)}{size}\r\n"
                f"RCPT TO:{smtplib.quoteaddr(starting.recipient)}\r\nDATA\r\n".encode("ascii")
            )
        self.send(b"".join(out))
        finished = None
        if finishing is not None:
            finished = self._reply_or_close()
            if finished[0] == 421:
                return finished, None
        if rset and self._reply_or_close()[0] == 421:
            return finished, None
        if starting is None:
            return finished, None
        answers = []
        for _ in range(3):
            try:
                answers.append(self._reply_or_close())
            except smtplib.SMTPServerDisconnected:
                if finishing is None:
                    raise
                # The message before was taken (its answer is read): say so.
                answers.append(LOST)
            if answers[-1][0] in (421, LOST[0]):
                return finished, answers
        if answers[2][0] == 354 and (answers[0][0] != 250 or answers[1][0] not in (250, 251)):
            # A server that took DATA without a sender or recipient: end it empty.
            self.send(b"." + CRLF)
            self.getreply()
        if answers[2][0] != 354:
            self.rset_first = answers[0][0] == 250
        return finished, answers

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


class Interrupted(Exception):
    """The session ended under these messages (421, hung up); send them again later.

    ``completed``: messages finished in the same exchange, with their outcomes.
    """

    def __init__(self, envelopes: list[Envelope], completed=()):
        super().__init__(f"{len(envelopes)} message(s) to send again")
        self.envelopes = envelopes
        self.completed = list(completed)


@dataclass
class Connection:
    """One pooled SMTP session, its message in flight and its backoff; one thread's at a time.

    ``push`` starts a message and returns the messages it completed, each with
    ``None`` (accepted) or the per-message refusal (``SMTPRecipientsRefused``,
    ``SMTPSenderRefused``, ``SMTPDataError``, as ``sendmail`` raises them);
    ``finish`` completes the message in flight. A 421, a 4xx to MAIL FROM or a
    session the server closed raise ``Interrupted`` with the messages to send
    again, after which this connection backs off (``pause``) before its next
    try; ``RelayRefusing`` when that keeps happening.
    """

    backend: _Backend
    last_used: float = 0.0
    refusals: int = 0  # in a row; reset by a message accepted
    disconnects: int = 0  # likewise
    in_flight: Envelope | None = None

    def pause(self) -> None:
        """Wait out this connection's backoff; give up when the relay keeps refusing."""
        if self.disconnects > 1:
            self.disconnects = 0
            raise smtplib.SMTPServerDisconnected("the SMTP relay closed the connection twice")
        if self.refusals >= MAX_REFUSALS:
            self.refusals = 0
            raise RelayRefusing(f"the relay refused {MAX_REFUSALS} times in a row")
        if self.refusals:
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.refusals - 1))
            time.sleep(delay * random.uniform(0.5, 1.0))

    def push(self, envelope: Envelope) -> list[tuple[Envelope, Exception | None]]:
        try:
            session = self._session()
        except Interrupted as exc:  # 421 at the greeting
            raise Interrupted([envelope]) from exc
        if not session.pipelines():
            return [(envelope, self._sendmail(session, envelope))]
        return self._exchange(session, self.in_flight, envelope)

    def finish(self) -> list[tuple[Envelope, Exception | None]]:
        if self.in_flight is None:
            return []
        return self._exchange(self.backend.connection, self.in_flight, None)

    def _exchange(self, session, finishing, starting):
        involved = [e for e in (finishing, starting) if e is not None]
        self.in_flight = None
        try:
            finished, answers = session.exchange(finishing, starting)
        except smtplib.SMTPServerDisconnected:
            self._lost(involved)
        done = []
        if finishing is not None:
            if finished[0] == 421:
                self._refused(finished, involved)
            done.append((finishing, None if finished[0] == 250 else _data_error(finished)))
        if starting is None:
            self._succeeded()
            return done
        if answers and answers[-1] == LOST:
            self._lost([starting], done)
        if not answers or answers[-1][0] == 421:
            self._refused(answers[-1] if answers else (421, b"closed"), [starting], done)
        mail, rcpt, data = answers
        if 400 <= mail[0] < 500:  # "slow down" for the sender: the connection backs off
            self._refused(mail, [starting], done)
        if mail[0] != 250:
            done.append((starting, smtplib.SMTPSenderRefused(*mail, starting.sender)))
        elif rcpt[0] not in (250, 251):
            done.append((starting, smtplib.SMTPRecipientsRefused({starting.recipient: rcpt})))
        elif data[0] != 354:
            done.append((starting, smtplib.SMTPDataError(*data)))
        else:
            self.in_flight = starting
        if any(outcome is None for _, outcome in done) or self.in_flight is not None:
            self._succeeded()
        if 400 <= rcpt[0] < 500:
            self.refusals += 1  # greylisting or "too fast": slow this connection down
        return done

    def _sendmail(self, session, envelope: Envelope) -> Exception | None:
        try:
            session.sendmail(envelope.sender, [envelope.recipient], envelope.data)
        except smtplib.SMTPServerDisconnected:
            self._lost([envelope])
        except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused) as exc:
            code = _code(exc)
            if code == 421 or (isinstance(exc, smtplib.SMTPSenderRefused) and code < 500):
                self._refused((code, b""), [envelope])
            return exc
        except smtplib.SMTPDataError as exc:
            if exc.smtp_code == 421:
                self._refused((421, exc.smtp_error), [envelope])
            return exc
        except smtplib.SMTPNotSupportedError as exc:  # e.g. SMTPUTF8 needed, not offered
            return exc
        self._succeeded()
        return None

    def _succeeded(self) -> None:
        self.refusals = self.disconnects = 0
        self.last_used = time.monotonic()

    def _lost(self, envelopes: list[Envelope], done=()):
        # Closed while idle (relays drop quiet sessions) or under a message: the
        # messages go again on a fresh session; twice in a row is an outage.
        self.close()
        self.disconnects += 1
        raise Interrupted(envelopes, completed=list(done))

    def _refused(self, answer, envelopes: list[Envelope], done=()) -> None:
        """421 or a 4xx to MAIL FROM: back off, hand the messages back (what completed stays)."""
        self.close()
        self.refusals += 1
        text = answer[1].decode("utf-8", errors="replace") if answer[1] else ""
        logger.info("SMTP relay refused (%s %s); connection backs off", answer[0], text)
        raise Interrupted(list(envelopes), completed=list(done))

    def _session(self) -> PipeliningSMTP:
        idle_for = time.monotonic() - self.last_used
        if self.backend.connection is not None and idle_for > conf.smtp_idle_seconds():
            self.close()  # the relay has probably dropped it; a NOOP would cost the same trip
        if self.backend.connection is None:
            try:
                self.backend.open()
            except smtplib.SMTPConnectError as exc:
                if exc.smtp_code == 421:  # "too busy" at the greeting
                    self._refused((421, exc.smtp_error), [])
                raise
            self.last_used = time.monotonic()
        return self.backend.connection

    def close(self) -> None:
        self.in_flight = None
        try:
            self.backend.close()
        except (smtplib.SMTPException, OSError) as exc:
            logger.debug("closing an SMTP connection failed: %s", exc)
        self.backend.connection = None


def _data_error(answer) -> smtplib.SMTPDataError:
    return smtplib.SMTPDataError(*answer)


def _code(exc: smtplib.SMTPException) -> int:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))[0]
    return getattr(exc, "smtp_code", 0)


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
