"""`rrmm run` end to end: a real process tree on the embedded default, stopped by Ctrl-C."""

from __future__ import annotations

import email
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children start their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with its pid, it names one
    process even after the pid is reused."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def embedded_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}
    env["RRMM_HEARTBEAT_INTERVAL_SECONDS"] = "1"
    return env


@pytest.fixture
def running(
    tmp_path: Path, embedded_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    api_port, smtp_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--port", str(api_port),
         "--smtp-port", str(smtp_port), "--concurrency", "1"],
        cwd=tmp_path,
        env=embedded_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process, api_port, smtp_port
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()


def test_run_starts_everything_and_ctrl_c_stops_every_child(tmp_path, running, embedded_env):
    process, api_port, smtp_port = running
    base = f"http://127.0.0.1:{api_port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 90, "/readyz 200")
    body = httpx.get(f"{base}/readyz").json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "ok"

    # Beat and the sweeper run: the heartbeat went beat → redis → the sweeper (the consumer
    # of beat's queue, apart from the send worker's pool) → SQLite.
    database = tmp_path / "var" / "rrmm.db"

    def heartbeat_recorded() -> bool:
        with sqlite3.connect(database) as connection:
            rows = connection.execute("SELECT worker FROM worker_heartbeats").fetchall()
            return any(worker.startswith("sweeper@") for (worker,) in rows)

    wait_for(heartbeat_recorded, 60, "a worker heartbeat in the database")

    def worker_ready() -> bool:
        return bool(httpx.get(f"{base}/readyz").json()["checks"].get("workers") == "ok")

    wait_for(worker_ready, 30, "/readyz reporting the worker")

    # The local SMTP catcher keeps what it receives.
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message["Subject"] = "caught?"
    message.set_content("hello")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    mailbox = tmp_path / "var" / "mail"
    wait_for(lambda: any(mailbox.glob("*.eml")), 10, "the caught message")
    caught = email.message_from_bytes(next(mailbox.glob("*.eml")).read_bytes())
    assert caught["Subject"] == "caught?"

    # The quick start: a key made by the CLI in the same directory works on the API.
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "me", "--role", "operator"],
        cwd=tmp_path, env=embedded_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip()
    listed = httpx.get(f"{base}/v1/members", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200, listed.text

    children = descendants(process.pid)
    assert len(children) >= 5  # redis, smtp catcher, worker, sweeper (+ their pools), api
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    wait_for(lambda: not any(alive(pid) for pid in children), 15, "every child gone")


def test_a_killed_run_takes_its_children_with_it(running):
    process, api_port, _ = running

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 90, "/healthz 200")
    children = descendants(process.pid)
    assert children
    process.kill()  # SIGKILL: no chance to clean up; PR_SET_PDEATHSIG must do it
    process.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), 30, "every orphan gone")
