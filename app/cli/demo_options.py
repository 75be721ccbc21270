"""What `rrmm demo` was asked for, and how it says it cannot go on: shared by the command
(app/cli/demo.py) and what it runs (app/cli/demo_stack.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DemoError(Exception):
    """Why the demo cannot go on, in one line."""


@dataclass(frozen=True)
class Options:
    members: int
    auto_ack: float
    email_ack: float
    port: int
    smtp_port: int
    keep_running: bool
    var: Path
    reminder_after: int
    timeout: float
    seed: int
