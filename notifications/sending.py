"""A batch's messages sent over several pooled SMTP connections at once.

One connection to a relay 50 ms away waits a round trip per message even
pipelined, about twenty messages a second; a batch therefore sends on
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
            self._fail(exc)
            return
        try:
            if isinstance(connection, smtp.Connection):
                self._work_pipelined(connection)
            else:
                self._work_django(connection)
        finally:
            checkin(connection)

    def _work_pipelined(self, connection: smtp.Connection) -> None:
        """Each message's start goes out with the previous one's end (``smtp.Connection``)."""
        while True:
            delivery = None if self._stop.is_set() else self._next()
            try:
                if delivery is None:
                    self._record_smtp(connection.finish())
                    return
                envelope_or_result = self._envelope(delivery)
                if isinstance(envelope_or_result, Result):
                    self._record(envelope_or_result)
                    continue
                connection.pause()
                if self._limit and not self._limit.try_take():
                    # The message in flight goes out now, not when the next token
                    # comes: its arrival stays next to its token, so the relay
                    # sees the rate the limiter grants, not a jittered one.
                    self._record_smtp(connection.finish())
                    self._limit.take()
                self._record_smtp(connection.push(envelope_or_result))
            except smtp.Interrupted as exc:
                # Sent again, by this thread after its backoff or by another.
                self._record_smtp(exc.completed)
                self._hand_back(*(e.key for e in exc.envelopes))
            except ratelimit.RateLimited as exc:
                self._hand_back(delivery)
                self.postponed = self.postponed or exc
                self._stop.set()
            except BaseException as exc:
                self._hand_back(
                    delivery, *([connection.in_flight.key] if connection.in_flight else [])
                )
                connection.close()
                self._fail(exc)
                return

    def _work_django(self, connection) -> None:
        """A non-SMTP backend (console, file, locmem, ...): one message at a time."""
        while (delivery := None if self._stop.is_set() else self._next()) is not None:
            try:
                result = self._skipped(delivery)
                if result is None:
                    outgoing = self._composer.compose(delivery)
                    if self._limit:
                        self._limit.take()
                    outgoing.send(connection)
                    result = self._outcome(delivery, None)
            except (EmailInputError, ValueError, *PER_MESSAGE_ANSWERS) as exc:
                result = self._refused(delivery, exc)
            except ratelimit.RateLimited as exc:
                self._hand_back(delivery)
                self.postponed = self.postponed or exc
                self._stop.set()
                return
            except BaseException as exc:
                self._hand_back(delivery)
                self._fail(exc)
                return
            self._record(result)

    def _next(self) -> Delivery | None:
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def _fail(self, exc: BaseException) -> None:
        self.error = self.error or exc
        self._stop.set()

    def _hand_back(self, *deliveries) -> None:
        with self._lock:
            for delivery in reversed([d for d in deliveries if d is not None]):
                self._pending.appendleft(delivery)

    def _record(self, result: Result) -> None:
        with self._lock:
            self._results.append(result)

    def _record_smtp(self, completed) -> None:
        for envelope, refusal in completed:
            self._record(self._outcome(envelope.key, refusal))

    def _skipped(self, delivery: Delivery) -> Result | None:
        reason = self._suppressed.get(delivery.email) if delivery.campaign_id else None
        if reason:
            return Result(delivery.pk, Status.SKIPPED, error=f"suppressed: {reason}")
        return None

    def _envelope(self, delivery: Delivery):
        """The message's ``smtp.Envelope``, or the ``Result`` that ends it unsent."""
        skipped = self._skipped(delivery)
        if skipped:
            return skipped
        try:
            envelope = smtp.Envelope(delivery, *self._composer.compose(delivery).envelope())
            # Checked before anything is written: a pipelined write cannot stop half way.
            envelope.sender.encode("ascii")
            envelope.recipient.encode("ascii")
            return envelope
        except (EmailInputError, ValueError) as exc:
            return self._refused(delivery, exc)

    @classmethod
    def _outcome(cls, delivery: Delivery, refusal: Exception | None) -> Result:
        if refusal is None:
            # At once: a run after a crash must not send this one again (sentlog).
            sentlog.note_sent(delivery.pk)
            return Result(delivery.pk, Status.SENT, 250)
        return cls._refused(delivery, refusal)

    @staticmethod
    def _refused(delivery: Delivery, refusal: Exception) -> Result:
        if isinstance(refusal, EmailInputError):
            return Result(delivery.pk, Status.FAILED, error=str(refusal))
        if not isinstance(refusal, PER_MESSAGE_ANSWERS):
            # Refused by Django, our serialiser or smtplib while building it: nothing went out.
            return Result(delivery.pk, Status.FAILED, error=f"message not sendable: {refusal}")
        code, answer = smtp_answer(refusal)
        if 400 <= code < 500:
            return Result(delivery.pk, Status.DEFERRED, code, answer)
        bounce = isinstance(refusal, smtplib.SMTPRecipientsRefused)
        return Result(delivery.pk, Status.FAILED, code, answer, hard_bounce=bounce)


def _django_connection():
    connection = get_connection(fail_silently=False)
    connection.open()
    return connection


def _close_django_connection(connection) -> None:
    try:
        connection.close()
    except (smtplib.SMTPException, OSError) as exc:
        logger.debug("closing the email backend failed: %s", exc)
