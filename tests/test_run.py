"""`rrmm run` end to end: a real process tree on the embedded default, stopped by Ctrl-C."""

from __future__ import annotations

import email
import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from app.netutil import free_port, wait_until
from tests.support.processes import alive, descendants

pytestmark = pytest.mark.slow


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
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            "--port",
            str(api_port),
            "--smtp-port",
            str(smtp_port),
            "--concurrency",
            "1",
        ],
        cwd=tmp_path,
        env=embedded_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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

    wait_until(ready, 90, "/readyz 200")
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

    wait_until(heartbeat_recorded, 60, "a worker heartbeat in the database")

    def worker_ready() -> bool:
        return bool(httpx.get(f"{base}/readyz").json()["checks"].get("workers") == "ok")

    wait_until(worker_ready, 30, "/readyz reporting the worker")

    # The local SMTP catcher keeps what it receives.
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message["Subject"] = "caught?"
    message.set_content("hello")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    mailbox = tmp_path / "var" / "mail"
    wait_until(lambda: any(mailbox.glob("*.eml")), 10, "the caught message")
    caught = email.message_from_bytes(next(mailbox.glob("*.eml")).read_bytes())
    assert caught["Subject"] == "caught?"

    # The quick start: a key made by the CLI in the same directory works on the API.
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "me", "--role", "operator"],
        cwd=tmp_path,
        env=embedded_env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    listed = httpx.get(f"{base}/v1/members", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200, listed.text

    children = descendants(process.pid)
    assert len(children) >= 5  # redis, smtp catcher, worker, sweeper (+ their pools), api
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 15, "every child gone")


def test_a_killed_run_takes_its_children_with_it(running):
    process, api_port, _ = running

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 90, "/healthz 200")
    children = descendants(process.pid)
    assert children
    process.kill()  # SIGKILL: no chance to clean up; PR_SET_PDEATHSIG must do it
    process.wait()
    wait_until(lambda: not any(alive(pid) for pid in children), 30, "every orphan gone")
