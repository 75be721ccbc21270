"""What `rrmm demo` runs: the embedded stack in a directory of its own, the synthetic
network, the exercise, the live view and the summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from app import migrate
from app.auth.service import create_key
from app.cli.demo_network import DemoMember, briefing, build_network
from app.cli.demo_options import DemoError, Options
from app.cli.demo_peers import MailReader, NewsroomReceiver
from app.cli.supervisor import (
    Supervisor,
    embedded_environment,
    redis_socket_path,
    start_redis,
    start_workers,
)
from app.cli.watch import Grouping, StatusClient, WatchError, frame, in_flight, is_settled
from app.config import Settings, default_database_url
from app.db import create_session_factory, engine_from_settings, session_scope
from app.logging import configure_logging
from app.models import Role
from app.netutil import free_port
from app.principal import Principal

log = structlog.get_logger("rrmm.demo")
MARKER = ".rrmm-demo"
# What the demo's own children need on top of `rrmm run`'s environment: local webhook
# receivers (http://127.0.0.1), links pointing at this API, no per-address limit on the
# answers (every member answers from 127.0.0.1 here), and quick clocks.
DEMO_SETTINGS = {
    "RRMM_WEBHOOK_ALLOW_PRIVATE": "true",
    "RRMM_ACK_RATE_LIMIT": "100000/minute",
    "RRMM_HEARTBEAT_INTERVAL_SECONDS": "1",
    "RRMM_SWEEP_INTERVAL_SECONDS": "1",
    "RRMM_RETRY_BASE_SECONDS": "1",
    "RRMM_RETRY_MAX_SECONDS": "10",
    "RRMM_LOG_FORMAT": "json",
}


# ---------------------------------------------------------------------------- the stack


def prepare_directory(directory: Path) -> None:
    """A fresh demo directory. One that holds something else is never wiped."""
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise DemoError(
            f"{directory} exists and is not a demo directory: choose another with --var"
        )
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `rrmm demo`; deleted by the next run\n")
    (directory / "logs").mkdir()


def check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(
                f"port {port} is in use (is `rrmm run` running?): choose another with --port"
            ) from exc


@contextmanager
def _without_rrmm_environment() -> Iterator[None]:
    """The demo ignores the caller's RRMM_* settings (a real database, a real relay...)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RRMM_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def _quiet_logging(path: Path) -> None:
    """This process's own log lines (the supervisor's) go to a file, not the terminal."""
    configure_logging("INFO", "json")
    handle = path.open("a", buffering=1)
    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(handle))


def run_demo(options: Options, console: Console) -> int:
    """Everything, then the summary; every child is stopped on the way out (also on
    Ctrl-C or SIGTERM). Returns the exit code."""
    check_port_free(options.port)
    directory = options.var
    prepare_directory(directory)
    _quiet_logging(directory / "logs" / "demo.log")
    smtp_port = options.smtp_port or free_port()
    with _without_rrmm_environment():
        settings = Settings(
            mode="embedded",
            var_dir=directory,
            database_url=default_database_url(directory),
            public_url=f"http://127.0.0.1:{options.port}",
        )
        env = embedded_environment(settings, smtp_port)
    env.update(DEMO_SETTINGS)
    env["RRMM_PUBLIC_URL"] = settings.public_url
    supervisor = Supervisor(env=env, log_dir=directory / "logs")
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    python = [sys.executable, "-m", "app.cli"]
    story: Story | None = None
    try:
        say(console, f"demo directory {directory} (a fresh SQLite database)")
        socket_path = redis_socket_path(settings.broker_url)
        assert socket_path is not None
        start_redis(supervisor, socket_path, directory)
        migrate.upgrade(settings.database_url)
        engine = engine_from_settings(settings)
        try:
            with session_scope(create_session_factory(engine)) as session:
                _, operator_key = create_key(
                    session, name="demo operator", role=Role.OPERATOR, actor=Principal.cli()
                )
                _, viewer_key = create_key(
                    session, name="demo board", role=Role.VIEWER, actor=Principal.cli()
                )
        finally:
            engine.dispose()
        mail_dir = directory / "mail"
        supervisor.start(
            "smtp",
            [*python, "smtp-catcher", "--port", str(smtp_port), "--dir", str(mail_dir)],
        )
        start_workers(supervisor, python, 2)
        supervisor.start(
            "api", [*python, "api", "--host", "127.0.0.1", "--port", str(options.port)]
        )
        say(
            console,
            "started redis-server, the SMTP catcher, a worker, the sweeper with beat and the API",
        )
        base_url = settings.public_url
        wait_ready(base_url, supervisor, timeout=120)
        say(console, f"API ready at {base_url} (worker heartbeat seen)")
        story = Story(options, console, supervisor, base_url, mail_dir, operator_key, viewer_key)
        return story.play()
    except KeyboardInterrupt:
        # Outside a terminal the live view leaves its last line open.
        console.print("stopping…" if console.is_terminal else "\nstopping…")
        return 130
    finally:
        if story is not None:
            story.stop_peers()
        supervisor.stop()
        signal.signal(signal.SIGTERM, previous)


def say(console: Console, message: str) -> None:
    console.print(Text("· ", style="dim") + Text(message), soft_wrap=True)


def wait_ready(base_url: str, supervisor: Supervisor, *, timeout: float) -> None:
    """Until `/readyz` reports the database, the broker and a worker; a child that dies
    meanwhile ends the demo with the name of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_children(supervisor)
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=2)
            if response.status_code == 200 and response.json()["checks"].get("workers") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise DemoError(f"the stack was not ready within {timeout:.0f}s (see the logs)")


def check_children(supervisor: Supervisor) -> None:
    exited = supervisor.first_exited()
    if exited is not None:
        where = f"; see {supervisor.log_dir / f'{exited.name}.log'}" if supervisor.log_dir else ""
        raise DemoError(f"{exited.name} stopped (exit code {exited.process.returncode}){where}")


# ---------------------------------------------------------------------------- the story


class Story:
    """Members, the exercise, the live view, the summary."""

    def __init__(
        self,
        options: Options,
        console: Console,
        supervisor: Supervisor,
        base_url: str,
        mail_dir: Path,
        operator_key: str,
        viewer_key: str,
    ) -> None:
        self.options = options
        self.console = console
        self.supervisor = supervisor
        self.base_url = base_url
        self.mail_dir = mail_dir
        self.operator_key = operator_key
        self.viewer_key = viewer_key
        self.network: list[DemoMember] = []
        self.coverage: dict[Grouping, list[dict[str, Any]]] = {}
        self.receiver = NewsroomReceiver(share=options.auto_ack, seed=options.seed)
        self.reader = MailReader(mail_dir, base_url, options.email_ack, seed=options.seed)

    def stop_peers(self) -> None:
        self.reader.stop()
        self.receiver.stop()

    def play(self) -> int:
        self.receiver.start()
        self.reader.start()
        with httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.operator_key}"},
            timeout=30,
        ) as api:
            self.create_members(api)
            incident = self.declare(api)
        settled, status = self.follow(incident)
        summary = self.summary(incident, status, settled)
        (self.options.var / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.print_summary(summary)
        if self.options.keep_running:
            self.console.print("\nThe stack keeps running: press Ctrl-C to stop it.")
            try:
                while True:
                    check_children(self.supervisor)
                    time.sleep(0.5)
            except KeyboardInterrupt:  # the expected way out here
                self.console.print("stopping…")
        return 0 if settled else 1

    def create_members(self, api: httpx.Client) -> None:
        self.network = build_network(
            self.options.members, webhook_url=self.receiver.url, seed=self.options.seed
        )
        progress = Progress(
            TextColumn("· creating members"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.console,
            transient=True,
        )
        with progress:
            task = progress.add_task("members", total=len(self.network))
            for member in self.network:
                response = api.post("/v1/members", json=member.body)
                if response.status_code != 201:
                    raise DemoError(
                        f"creating member {member.number} failed: {response.status_code} "
                        f"{response.text[:200]}"
                    )
                if member.webhook:
                    self.receiver.add(member, response.json()["webhook_secret"])
                progress.advance(task)
        self.reader.add(self.network)
        by_hook = sum(1 for m in self.network if m.webhook)
        languages = {
            lang: sum(1 for m in self.network if m.language == lang) for lang in ("en", "ar", "fr")
        }
        say(
            self.console,
            f"created {len(self.network)} members ({languages['en']} English, "
            f"{languages['ar']} Arabic, {languages['fr']} French names): {by_hook} reached by "
            f"webhook, {len(self.network) - by_hook} by email",
        )

    def quotas(self) -> list[dict[str, Any]]:
        """One quota the answers will likely meet, one they will likely not."""
        arab_editors = sum(
            1 for m in self.network if m.network == "editors" and "ar" in m.body["languages"][:1]
        )
        personalities = sum(1 for m in self.network if m.network == "personalities")
        quotas = []
        if arab_editors:
            quotas.append(
                {
                    "network": "editors",
                    "languages": ["ar"],
                    "responses": ["will_engage", "acknowledged"],
                    "min": max(1, round(arab_editors * 0.25)),
                }
            )
        if personalities:
            quotas.append(
                {
                    "network": "personalities",
                    "responses": ["will_engage"],
                    "min": max(1, round(personalities * 0.5)),
                }
            )
        return quotas

    def declare(self, api: httpx.Client) -> dict[str, Any]:
        body = {
            "title": "Tension after the cartoon publication (demo)",
            "severity": "severe",
            "urgency": "immediate",
            "mode": "exercise",
            "countries": sorted({m.body["country"] for m in self.network})[:20],
            "themes": ["religious-hatred", "intercultural-dialogue"],
            "audience": {"networks": ["editors", "personalities"], "tags": ["demo"]},
            "briefing": briefing(),
            "followup": {
                "ack_deadline_seconds": max(600, self.options.reminder_after * 4),
                "reminders": 1,
                "reminder_interval_seconds": self.options.reminder_after,
                "quotas": self.quotas(),
            },
        }
        response = api.post(
            "/v1/incidents", json=body, headers={"Idempotency-Key": f"demo-{uuid.uuid4()}"}
        )
        if response.status_code not in (200, 202):
            raise DemoError(f"declaring failed: {response.status_code} {response.text[:300]}")
        incident: dict[str, Any] = response.json()
        say(
            self.console,
            f"declared {incident['reference']} (EXERCISE, severe) to {incident['targeted']} "
            f"members; silent ones are reminded after {self.options.reminder_after}s",
        )
        return incident

    def _peers_line(self) -> RenderableType:
        hooks, answering = self.receiver.snapshot()
        mail = self.reader.snapshot()
        text = Text()
        text.append("Demo peers ", style="bold")
        text.append(
            f"newsroom receiver: {hooks['verified']} webhooks verified, "
            f"{hooks['rejected']} rejected, {hooks['answered']} answered"
            + (f" ({answering} on the way)" if answering else "")
        )
        text.append(
            f"\n           mailbox: {mail['read']} emails read, {mail['clicked']} links clicked"
        )
        return text

    def follow(self, incident: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """The live view until every delivery is final, the reminder went out and nobody
        is about to answer (or the timeout)."""
        client = StatusClient(
            self.base_url, self.viewer_key, groupings=(Grouping.language, Grouping.channel)
        )
        deadline = time.monotonic() + self.options.timeout
        quiet_since: float | None = None
        settled = False
        try:
            client.resolve(incident["id"])
            client.poll()

            def view() -> RenderableType:
                return Group(frame(client), self._peers_line())

            with Live(view(), console=self.console, auto_refresh=False) as live:
                while time.monotonic() < deadline:
                    check_children(self.supervisor)
                    client.poll()
                    live.update(view(), refresh=True)
                    status = client.status
                    assert status is not None
                    _, answering = self.receiver.snapshot()
                    calm = (
                        is_settled(status)
                        and status["followup"]["reminders"]
                        and not answering
                        and not self.reader.pending()
                    )
                    if calm:
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since >= 2:
                            settled = True
                            break
                    else:
                        quiet_since = None
                    time.sleep(1)
            if not self.console.is_terminal:
                self.console.line()
            client.poll()
        except WatchError as exc:
            raise DemoError(str(exc)) from exc
        finally:
            client.close()
        if not settled:
            self.console.print(
                f"stopped waiting after {self.options.timeout:.0f}s: not everything settled",
                style="yellow",
            )
        assert client.status is not None
        self.coverage = client.coverage
        return settled, client.status

    def summary(
        self, incident: dict[str, Any], status: dict[str, Any], settled: bool
    ) -> dict[str, Any]:
        hooks, _ = self.receiver.snapshot()
        mail = self.reader.snapshot()
        by_channel = {g["group"]: g["answered"] for g in self.coverage.get(Grouping.channel, [])}
        reference = incident["reference"]
        return {
            "reference": reference,
            "incident_id": incident["id"],
            "mode": status["mode"],
            "settled": settled,
            "members": len(self.network),
            "members_by_webhook": sum(1 for m in self.network if m.webhook),
            "targeted": status["targeted"],
            "deliveries": status["deliveries"]["by_status"],
            "deliveries_in_flight": in_flight(status),
            "answered": status["answers"]["answered"],
            "answers_by_response": status["answers"]["by_response"],
            "answers_by_channel": by_channel,
            "ack_rate": status["answers"]["ack_rate"],
            "reminders": len(status["followup"]["reminders"]),
            "quotas": [
                {
                    "segment": q.get("network"),
                    "answered": q["answered"],
                    "min": q["min"],
                    "met": q["met"],
                }
                for q in status["quotas"]
            ],
            "webhooks_verified": hooks["verified"],
            "webhooks_rejected": hooks["rejected"],
            "webhook_answers_posted": hooks["answered"],
            "emails_read": mail["read"],
            "email_links_clicked": mail["clicked"],
            "mail_dir": str(self.mail_dir),
            "mail_files": len(list(self.mail_dir.glob("*.eml"))),
            "logs": str(self.options.var / "logs"),
            "children": {c.name: c.process.pid for c in self.supervisor.children},
            "board_url": f"{self.base_url}/board/incidents/{incident['id']}#key={self.viewer_key}",
            "watch": f"RRMM_API_KEY={self.viewer_key} rrmm watch {reference} --url {self.base_url}",
        }

    def print_summary(self, s: dict[str, Any]) -> None:
        deliveries = s["deliveries"]
        total = sum(deliveries.values())
        states = ", ".join(f"{k} {v}" for k, v in sorted(deliveries.items()))
        final = (
            "all final"
            if not s["deliveries_in_flight"]
            else f"{s['deliveries_in_flight']} in flight"
        )
        channels = ", ".join(f"{k} {v}" for k, v in sorted(s["answers_by_channel"].items()))
        responses = ", ".join(
            f"{k} {v}" for k, v in sorted(s["answers_by_response"].items(), key=lambda i: -i[1])
        )
        quotas = "; ".join(
            f"{q['segment'] or 'all'} {q['answered']}/{q['min']} {'met' if q['met'] else 'unmet'}"
            for q in s["quotas"]
        )
        rate = f"{s['ack_rate'] * 100:.1f}%" if s["ack_rate"] is not None else "—"
        lines = [
            ("incident", f"{s['reference']} ({s['mode'].upper()})"),
            (
                "members",
                f"{s['members']}: {s['members_by_webhook']} by webhook, "
                f"{s['members'] - s['members_by_webhook']} by email",
            ),
            ("targeted", str(s["targeted"])),
            ("deliveries", f"{total}, {final} ({states})"),
            ("answers", f"{s['answered']} ({rate}) by channel: {channels or '—'}; {responses}"),
            (
                "webhooks",
                f"{s['webhooks_verified']} verified, {s['webhooks_rejected']} rejected, "
                f"{s['webhook_answers_posted']} answered by the newsroom receiver",
            ),
            (
                "emails",
                f"{s['mail_files']} in {s['mail_dir']} ({s['email_links_clicked']} links clicked)",
            ),
            ("reminders", str(s["reminders"])),
            ("quotas", quotas or "—"),
            ("logs", s["logs"]),
            ("board", s["board_url"]),
            ("watch", s["watch"]),
        ]
        self.console.print()
        self.console.print(Text("Summary", style="bold"))
        for label, value in lines:
            self.console.print(Text(f"  {label:<11}", style="dim") + Text(value), soft_wrap=True)
        if not self.options.keep_running:
            self.console.print(
                Text(
                    "  The stack stops now; `rrmm demo --keep-running` keeps it up for the "
                    "board and `rrmm watch`.",
                    style="dim",
                ),
                soft_wrap=True,
            )
