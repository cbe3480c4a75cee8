"""A development SMTP server that keeps every message as an .eml file.

    python -m notifications.dev_smtp --port 1025 --dir var/mail

The start script runs it when EMAIL_HOST is local and nothing listens there,
so mail sent in development can be opened with any mail client.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller


class AdvertisesPipelining:
    """An aiosmtpd handler mix-in that offers PIPELINING (RFC 2920) in its EHLO answer.

    aiosmtpd reads commands from its stream one after another and answers in
    order, which is all pipelining asks of a server; it just does not say so.
    Relays do (Postfix, the big providers), so the development server and the
    tests' servers do too, and the batches pipeline against them.
    """

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname  # what aiosmtpd does itself without this hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class EmlWriter(AdvertisesPipelining):
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        # Write then rename, so a reader never sees half a message.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".part")
        with os.fdopen(fd, "wb") as handle:
            handle.write(envelope.original_content or envelope.content)
        os.replace(tmp, self.directory / name)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description="Development SMTP server writing .eml files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    options = parser.parse_args()
    controller = Controller(EmlWriter(options.dir), hostname=options.host, port=options.port)
    controller.start()
    print(
        f"dev SMTP server on {options.host}:{options.port}, mail kept in {options.dir}/", flush=True
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
