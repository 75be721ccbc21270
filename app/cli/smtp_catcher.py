"""A local SMTP server that keeps every message as a `.eml` file (the embedded mode's
mailbox, so a newcomer can read what members would receive)."""

from __future__ import annotations

import email
import email.policy
import itertools
import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.controller import Controller

log = structlog.get_logger("rrmm.smtp_catcher")


class MailboxHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        number = next(self.counter)
        path = self.directory / f"{time.strftime('%Y%m%dT%H%M%S')}-{number:06d}.eml"
        content: bytes = envelope.content
        path.write_bytes(content)
        message = email.message_from_bytes(content, policy=email.policy.default)
        # The subject is the briefing's, not a contact detail; recipients are not logged.
        log.info("mail_caught", file=str(path), subject=str(message.get("Subject", "")))
        return "250 Message accepted for delivery"


def serve(host: str, port: int, directory: Path) -> None:
    """Run until SIGTERM/SIGINT."""
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(MailboxHandler(directory), hostname=host, port=port)
    controller.start()
    log.info("smtp_catcher_started", host=host, port=port, directory=str(directory))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()
