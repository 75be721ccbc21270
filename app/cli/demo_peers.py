"""The members' side of `rrmm demo`: a newsroom system that receives webhooks and answers
some of them, and a reader who clicks some of the emails' links.

Both run inside the demo process (a thread each), so they end with it: nothing to orphan.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import heapq
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.cli.demo_network import DemoMember

# Members who did not answer the briefing but answer its reminder: the next slice of rolls.
SLOW_SHARE = 0.15
_ACK_LINK = re.compile(r"/ack/([A-Za-z0-9_-]{42})")


def answers_now(member: DemoMember, share: float, kind: str) -> bool:
    """Whether this member answers a message of this kind (briefing or reminder)."""
    if kind == "reminder":
        return share <= member.roll < share + SLOW_SHARE
    return member.roll < share


@dataclass
class NewsroomReceiver:
    """Webhook receivers of the webhook-reached members, on one aiohttp server.

    Every request is verified with the member's `whsec_` secret (`standardwebhooks`); a
    share of the briefings is answered after a short, human-looking delay by POSTing the
    token of the body's `ack` block to its `url`: the machine-ack contract.
    """

    share: float
    delay: tuple[float, float] = (0.5, 4.0)
    seed: int = 2026
    port: int = 0
    members: dict[int, DemoMember] = field(default_factory=dict)
    secrets: dict[int, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 (timing, not a secret)
        self._seen: set[str] = set()
        self._answered: set[tuple[int, str]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="demo-newsroom", daemon=True
        )
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, number: int) -> str:
        return f"http://127.0.0.1:{self.port}/newsroom/{number}"

    def add(self, member: DemoMember, secret: str) -> None:
        self.members[member.number] = member
        self.secrets[member.number] = secret

    def start(self) -> NewsroomReceiver:
        self._thread.start()
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/newsroom/{number:[0-9]+}", self._handle)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])

        async def boot() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            for task in list(self._tasks):
                task.cancel()
            if self._session is not None:
                await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def snapshot(self) -> tuple[Counter[str], int]:
        with self.lock:
            return Counter(self.counts), self.pending

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        number = int(request.match_info["number"])
        secret = self.secrets.get(number)
        if secret is None:
            self._count("unknown")
            return web.Response(status=404)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = Webhook(secret).verify(raw, headers)
        except WebhookVerificationError:
            self._count("rejected")
            return web.Response(status=401, text="bad signature")
        self._count("verified")
        webhook_id = headers.get("webhook-id", "")
        if webhook_id in self._seen:  # a retried send: the same id, already handled
            self._count("duplicates")
            return web.Response(status=200, text="duplicate")
        self._seen.add(webhook_id)
        kind = str(body.get("type", "")).removeprefix("incident.")
        self._count(kind)
        member = self.members[number]
        ack = body.get("data", {}).get("ack") or {}
        if (
            kind in ("declared", "reminder")
            and (number, kind) not in self._answered
            and answers_now(member, self.share, kind)
            and ack.get("token")
            and member.response in ack.get("responses", [])
        ):
            self._answered.add((number, kind))
            with self.lock:
                self.pending += 1
            task = asyncio.create_task(self._answer(ack, member.response))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(status=200, text="ok")

    async def _answer(self, ack: dict[str, Any], response: str) -> None:
        try:
            await asyncio.sleep(self._rng.uniform(*self.delay))
            assert self._session is not None
            async with self._session.post(
                ack["url"],
                json={"token": ack["token"], "response": response, "comment": "auto-answer"},
            ) as answer:
                self._count("answered" if answer.status == 200 else f"answer_{answer.status}")
        except (aiohttp.ClientError, TimeoutError):
            self._count("answer_errors")
        finally:
            with self.lock:
                self.pending -= 1


@dataclass
class MailReader:
    """Reads the SMTP catcher's mailbox and clicks the answer button of a share of the
    messages (a POST to the acknowledgement page, as the page's form does)."""

    mail_dir: Path
    base_url: str
    share: float
    members: dict[str, DemoMember] = field(default_factory=dict)  # by email address
    delay: tuple[float, float] = (1.0, 5.0)
    seed: int = 2026
    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 (timing, not a secret)
        self._seen: set[str] = set()
        self._due: list[tuple[float, str, str]] = []  # (when, token, response)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-mail-reader", daemon=True)

    def add(self, members: Iterable[DemoMember]) -> None:
        for member in members:
            address = member.body.get("email")
            if address:
                self.members[address] = member

    def start(self) -> MailReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def pending(self) -> int:
        """Clicks still to come, counting messages not read yet."""
        files = self._files()
        with self.lock:
            return sum(1 for p in files if p.name not in self._seen) + len(self._due)

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def _files(self) -> list[Path]:
        try:
            return sorted(self.mail_dir.glob("*.eml"))
        except OSError:
            return []

    def _read(self, path: Path) -> tuple[float, str, str] | None:
        """The click this message gets, if any (when, token, response)."""
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subject = str(message.get("Subject", ""))
        address = str(message.get("To", "")).strip().lower()
        kind = "reminder" if "Reminder:" in subject else "declared"
        part = message.get_body(preferencelist=("plain",))
        text = part.get_content() if part is not None else ""
        link = _ACK_LINK.search(text)
        member = self.members.get(address)
        if link and member and answers_now(member, self.share, kind):
            return time.monotonic() + self._rng.uniform(*self.delay), link.group(1), member.response
        return None

    @staticmethod
    def _complete(path: Path) -> bool:
        """The catcher writes a file in one go; a very fresh one may still be growing."""
        try:
            return time.time() - path.stat().st_mtime > 0.2
        except OSError:
            return False

    def _click(self, client: httpx.Client, token: str, response: str) -> None:
        try:
            answer = client.post(f"/ack/{token}", data={"response": response, "comment": ""})
            outcome = "clicked" if answer.status_code == 200 else f"click_{answer.status_code}"
        except httpx.HTTPError:
            outcome = "click_errors"
        with self.lock:
            self.counts[outcome] += 1

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as client:
            while not self._stop.is_set():
                for path in self._files():
                    if path.name in self._seen or not self._complete(path):
                        continue
                    try:
                        click, outcome = self._read(path), "read"
                    except (OSError, ValueError):
                        click, outcome = None, "unreadable"
                    with self.lock:
                        self._seen.add(path.name)
                        self.counts[outcome] += 1
                        if click is not None:
                            heapq.heappush(self._due, click)
                while True:
                    with self.lock:
                        if not self._due or self._due[0][0] > time.monotonic():
                            break
                        _when, token, response = heapq.heappop(self._due)
                    self._click(client, token, response)
                self._stop.wait(0.3)
