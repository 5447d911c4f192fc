"""A TCP proxy that makes a link long: every byte is delayed by half the round trip each way.

The kernel here has no netem, so the tests put this in front of etcd to play a member in another
region. It models a link of constant latency and ample bandwidth:
- the upstream connection opens 1.5 round trips after the client's (the TCP handshake that the
  local accept() skipped), so a client's first reply comes 2 round trips after its connect(),
  as on a real link;
- every chunk read from one side is written to the other half a round trip after it arrived,
  in order; an EOF (half-close) travels the same way.
`silent` (in-process only) plays a member that stopped answering without a reset: bytes that
arrive are dropped, new connections are accepted but never answered.

As a program (to run inside a lab namespace):
    python3 delayproxy.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT RTT_MS
prints "listening HOST:PORT" once it accepts connections and runs until SIGTERM/SIGINT.
In-process: `with DelayProxy(("127.0.0.1", 0), upstream, rtt_s=0.5) as p: p.address`.
"""
from __future__ import annotations

import asyncio
import signal
import sys
import threading

CHUNK_BYTES = 1 << 16


class _Link:
    """One proxied connection: two directions, each delayed by half the round trip."""

    def __init__(self, upstream: tuple[str, int], rtt_s: float, silent: threading.Event):
        self.upstream = upstream
        self.rtt_s = rtt_s
        self.silent = silent

    async def run(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        u_writer: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(1.5 * self.rtt_s)       # the handshake accept() did not pay for
            while self.silent.is_set():                 # a silent member never answers
                await asyncio.sleep(0.05)
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            half = self.rtt_s / 2
            await asyncio.gather(self._pump(c_reader, u_writer, half),
                                 self._pump(u_reader, c_writer, half))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if data and self.silent.is_set():
                    continue                            # dropped, as by a blackhole
                queue.put_nowait((loop.time() + delay_s, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()


async def _serve(listen: tuple[str, int], upstream: tuple[str, int], rtt_s: float,
                 silent: threading.Event, started: asyncio.Future, stop: asyncio.Event) -> None:
    tasks: set[asyncio.Task] = set()

    async def handle(reader, writer):
        task = asyncio.current_task()
        tasks.add(task)
        try:
            await _Link(upstream, rtt_s, silent).run(reader, writer)
        except asyncio.CancelledError:
            pass                        # shutting down; asyncio would log a cancelled handler
        finally:
            tasks.discard(task)

    try:
        server = await asyncio.start_server(handle, *listen, reuse_address=True)
    except OSError as e:
        started.set_exception(e)
        return
    started.set_result(server.sockets[0].getsockname()[:2])
    await stop.wait()
    server.close()
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


class DelayProxy:
    """The proxy on a thread of this process; `address` is where clients connect."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], rtt_s: float):
        self._args = (listen, upstream, rtt_s)
        self.silent = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="delayproxy", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.address: tuple[str, int] = ("", 0)

    def _run(self) -> None:
        async def main():
            self._stop = asyncio.Event()
            started = self._loop.create_future()
            task = asyncio.ensure_future(_serve(*self._args, self.silent, started, self._stop))
            self.address = await started
            self._ready.set()
            await task
            # a connection accepted just before the server closed has a handler task that had not
            # started when _serve cancelled the others: end it here, before the loop closes
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        try:
            self._loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 - handed to start()'s caller
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.address[1]:
            raise RuntimeError(f"delay proxy did not start: {self._error!r}")
        return self

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: delayproxy.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT RTT_MS", file=sys.stderr)
        return 2
    listen, upstream, rtt_s = _hostport(argv[0]), _hostport(argv[1]), float(argv[2]) / 1000.0

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started = loop.create_future()
        task = asyncio.ensure_future(_serve(listen, upstream, rtt_s, threading.Event(), started, stop))
        host, port = await started
        print(f"listening {host}:{port}", flush=True)
        await task
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
