"""A batch's messages sent over several pooled SMTP connections at once.

One connection to a relay 50 ms away waits two round trips per message even
pipelined, about ten messages a second; a batch therefore sends on
``EMAIL_SMTP_CONNECTIONS`` connections at once, one thread each (the work is
waiting on sockets; the GIL is free meanwhile). The threads only compose, send
and write the Redis sent-mark; the task's own thread keeps the database work
(claims, outcomes), as before, and may stop them (soft time limit, lost
claims). No thread takes a message once asked to stop; the one in its hands
is finished or handed back.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections import deque
from dataclasses import dataclass

from django.core.mail import get_connection

from . import ratelimit, sentlog, smtp
from .addresses import EmailInputError
from .models import Delivery

logger = logging.getLogger(__name__)
Status = Delivery.Status

# Answers that concern this one message; the connection stays usable after them.
PER_MESSAGE_ANSWERS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
)


@dataclass
class Result:
    delivery_id: int
    status: str
    code: int | None = None
    error: str = ""
    # A 5xx to RCPT: the address goes on the suppression list.
    hard_bounce: bool = False


def smtp_answer(exc: Exception) -> tuple[int, str]:
    """The SMTP code and the server's text of a refusal, e.g. ``(550, "550 5.1.1 ...")``."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
    else:
        code, text = exc.smtp_code, exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return code, f"{code} {text}".strip()


class BatchSender:
    def __init__(self, deliveries: list[Delivery], composer, suppressed: dict[str, str]):
        self._pending = deque(deliveries)
        self._composer = composer
        self._suppressed = suppressed
        self._limit = ratelimit.current()
        self._results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None  # the first thread's fatal error
        self.postponed: ratelimit.RateLimited | None = None

    # --- the task's thread ------------------------------------------------------

    def start(self) -> None:
        if smtp.uses_smtp():
            pool = smtp.pool()
            count = min(pool.size, len(self._pending))
            targets = [(pool.checkout, pool.checkin)] * count
        else:  # console, file, locmem...: Django's backend, one connection
            targets = [(_django_connection, _close_django_connection)]
        for number, (checkout, checkin) in enumerate(targets):
            thread = threading.Thread(
                target=self._work, args=(checkout, checkin), name=f"smtp-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when every thread has finished."""
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                return False
        return True

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def take_results(self) -> list[Result]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def pending_ids(self) -> list[int]:
        with self._lock:
            return [d.pk for d in self._pending]

    def keep_only(self, delivery_ids: set[int]) -> int:
        """Drop pending deliveries not in ``delivery_ids`` (claims lost); return how many."""
        with self._lock:
            before = len(self._pending)
            self._pending = deque(d for d in self._pending if d.pk in delivery_ids)
            return before - len(self._pending)

    # --- the sending threads ------------------------------------------------------

    def _work(self, checkout, checkin) -> None:
        try:
            connection = checkout()
        except BaseException as exc:  # e.g. a backend that cannot open
            self.error = self.error or exc
            self._stop.set()
            return
        try:
            while not self._stop.is_set():
                with self._lock:
                    if not self._pending:
                        return
                    delivery = self._pending.popleft()
                try:
                    result = self._send(delivery, connection)
                except ratelimit.RateLimited as exc:
                    self._hand_back(delivery)
                    self.postponed = self.postponed or exc
                    self._stop.set()
                    return
                except BaseException as exc:
                    self._hand_back(delivery)
                    self.error = self.error or exc
                    self._stop.set()
                    return
                with self._lock:
                    self._results.append(result)
        finally:
            checkin(connection)

    def _hand_back(self, delivery: Delivery) -> None:
        with self._lock:
            self._pending.appendleft(delivery)

    def _send(self, delivery: Delivery, connection) -> Result:
        reason = self._suppressed.get(delivery.email) if delivery.campaign_id else None
        if reason:
            return Result(delivery.pk, Status.SKIPPED, error=f"suppressed: {reason}")
        try:
            outgoing = self._composer.compose(delivery)
            take_token = self._limit.take if self._limit else None
            if isinstance(connection, smtp.Connection):
                connection.send(*outgoing.envelope(), before_attempt=take_token)
            else:
                if take_token:
                    take_token()
                outgoing.send(connection)
        except EmailInputError as exc:
            return Result(delivery.pk, Status.FAILED, error=str(exc))
        except PER_MESSAGE_ANSWERS as exc:
            code, answer = smtp_answer(exc)
            if 400 <= code < 500:
                return Result(delivery.pk, Status.DEFERRED, code, answer)
            bounce = isinstance(exc, smtplib.SMTPRecipientsRefused)
            return Result(delivery.pk, Status.FAILED, code, answer, hard_bounce=bounce)
        except (ValueError, smtplib.SMTPNotSupportedError) as exc:
            # Refused by Django or smtplib while building the message: nothing went out.
            return Result(delivery.pk, Status.FAILED, error=f"message not sendable: {exc}")
        # At once: a run after a crash must not send this one again (sentlog).
        sentlog.note_sent(delivery.pk)
        return Result(delivery.pk, Status.SENT, 250)


def _django_connection():
    connection = get_connection(fail_silently=False)
    connection.open()
    return connection


def _close_django_connection(connection) -> None:
    try:
        connection.close()
    except (smtplib.SMTPException, OSError) as exc:
        logger.debug("closing the email backend failed: %s", exc)
