"""The benchmark's peers, each run in a process of its own (so its CPU shows up apart):

    python -m bench.sinks webhook --port P          # POST anything -> 200; GET /_stats
    python -m bench.sinks smtp --port P --stats-port S

Both count what they receive and remember when (time.monotonic(), which on Linux is one
clock for every process of the machine, so the orchestrator can compare it with its own).
`GET /_stats` returns the counters as JSON, `POST /_reset` zeroes them. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


@dataclass
class Counters:
    count: int = 0
    bytes: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def hit(self, size: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.count += 1
        self.bytes += size


def _stats_routes(app: web.Application, counters: Counters) -> None:
    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**asdict(counters), "pid": os.getpid()})

    async def reset(_request: web.Request) -> web.Response:
        counters.__init__()  # type: ignore[misc]
        return web.json_response({"ok": True})

    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)


async def _serve_webhooks(port: int) -> None:
    counters = Counters()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        counters.hit(len(body))
        return web.Response(status=200)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    _stats_routes(app, counters)
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=4096).start()
    await _until_terminated()
    await runner.cleanup()


class _MailHandler:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.counters.hit(len(envelope.content))
        return "250 Message accepted"


async def _serve_smtp(port: int, stats_port: int) -> None:
    from aiosmtpd.smtp import SMTP

    counters = Counters()
    handler = _MailHandler(counters)
    loop = asyncio.get_running_loop()
    # A fixed hostname: the default looks up the machine's FQDN (DNS) for every session.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.bench.invalid", decode_data=False),
        HOST,
        port,
        backlog=1024,
    )
    app = web.Application()
    _stats_routes(app, counters)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, stats_port).start()
    await _until_terminated()
    server.close()
    await runner.cleanup()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sinks")
    parser.add_argument("kind", choices=("webhook", "smtp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-port", type=int, help="smtp only: port of /_stats")
    args = parser.parse_args()
    # The sinks should not be what limits the rate: the faster event loop if there is one.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.kind == "webhook":
        asyncio.run(_serve_webhooks(args.port))
    else:
        if args.stats_port is None:
            parser.error("smtp needs --stats-port")
        asyncio.run(_serve_smtp(args.port, args.stats_port))


if __name__ == "__main__":
    main()
