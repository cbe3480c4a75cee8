"""A TCP proxy that delays every byte by a fixed time in each direction.

    python bench/latency_proxy.py --listen 2526 --target 127.0.0.1:2525 --delay-ms 25

Puts a remote relay's round trip (2 x delay) between the senders and an SMTP
sink on this machine, where netem (tc qdisc) is not available. Each chunk read
on one side is written to the other ``delay`` seconds after it was read, in
order, so a request/answer exchange costs one round trip, while pipelined
writes are not delayed one after another (as on a real link, whose bandwidth
is not the limit here). Used by bench/bench_email.py (B2 at 50 ms) and
tests/test_email_relay.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading


class LatencyProxy:
    def __init__(self, target: tuple[str, int], delay: float, listen_port: int = 0):
        self.target = target
        self.delay = delay
        self.listen_port = listen_port
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # --- in a thread of the caller (tests) ---------------------------------------

    def start(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self.run_forever, daemon=True, name="latency")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def run_forever(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.wait(tasks))
            self._loop.close()

    # --- the proxy ------------------------------------------------------------------

    async def _accept(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pipe(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
        )

    async def _pipe(self, reader, writer) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        except ConnectionError:
            pass
        # The far side's close arrives after the delay too, like its bytes.
        queue.put_nowait((loop.time() + self.delay, None))
        await delivering


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP proxy adding latency each way")
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=25.0)
    options = parser.parse_args()
    host, port = options.target.rsplit(":", 1)
    LatencyProxy((host, int(port)), options.delay_ms / 1000, options.listen).run_forever()


if __name__ == "__main__":
    main()
