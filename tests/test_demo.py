"""`rrmm demo` end to end: a real stack in a directory of its own, a synthetic network,
an exercise that settles, and nothing left running afterwards."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import cli
from app.netutil import free_port
from tests.support.processes import alive, descendants, start_time

FINAL = {"sent", "failed", "skipped", "cancelled"}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_the_whole_mechanism_and_stops_everything(tmp_path: Path):
    port = free_port()
    demo_dir = tmp_path / "demo"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "demo",
                "--members",
                "40",
                "--exit",
                "--port",
                str(port),
                "--var",
                str(demo_dir),
                "--reminder-after",
                "5",
                "--timeout",
                "240",
            ],
            cwd=tmp_path,
            env=clean_env(),
            stdout=out_file,
            stderr=err_file,
        )
    seen: set[int] = set()
    started: dict[int, int | None] = {}
    try:
        deadline = time.monotonic() + 420
        while process.poll() is None and time.monotonic() < deadline:
            for pid in descendants(process.pid) - seen:  # every child, grandchild, any moment
                seen.add(pid)
                started[pid] = start_time(pid)
            time.sleep(0.3)
        process.wait(30)
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid):
                os.kill(pid, 9)
            process.kill()
            process.wait()
    out, err = stdout.read_text(), stderr.read_text()

    assert process.returncode == 0, (out[-4000:], err[-4000:])
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert summary["settled"] is True
    assert summary["mode"] == "exercise"
    assert summary["members"] == 40
    assert summary["targeted"] == 40
    assert re.search(r"targeted\s+40\b", out), out
    assert "EXERCISE" in out
    # Every delivery final, at least one per member.
    assert summary["deliveries_in_flight"] == 0
    assert set(summary["deliveries"]) <= FINAL, summary["deliveries"]
    assert sum(summary["deliveries"].values()) >= 40
    assert "all final" in out
    # Answers arrived through the webhooks (the newsroom receiver) and the email links.
    assert summary["answers_by_channel"].get("webhook", 0) > 0, summary
    assert summary["webhook_answers_posted"] == summary["answers_by_channel"]["webhook"]
    assert summary["webhooks_verified"] > 0
    assert summary["webhooks_rejected"] == 0
    assert summary["answered"] == sum(summary["answers_by_response"].values()) > 0
    assert summary["reminders"] == 1
    assert len(summary["quotas"]) == 2
    # The emails are on disk, where the summary says.
    mail = sorted((demo_dir / "mail").glob("*.eml"))
    assert mail
    assert len(mail) == summary["mail_files"]
    assert Path(summary["mail_dir"]) == demo_dir / "mail"
    for path in mail:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert str(message["Subject"]).strip().startswith("[EXERCISE]"), message["Subject"]
    # Where to look next.
    assert f"http://127.0.0.1:{port}/board/incidents/{summary['incident_id']}#key=rrmm_" in out
    assert f"rrmm watch {summary['reference']} --url http://127.0.0.1:{port}" in out
    # No child, grandchild (the worker's pool) or redis-server left behind.
    assert set(summary["children"]) == {"redis", "smtp", "worker", "sweeper", "api"}
    children = set(summary["children"].values())
    assert children <= seen
    assert len(seen) >= 7  # redis, smtp catcher, worker and sweeper (+ their pools), api
    # (A pid the machine has since given to another process is not ours: same start time.)
    assert not [pid for pid in seen if alive(pid) and start_time(pid) == started[pid]]


def test_demo_never_wipes_a_directory_it_did_not_make(tmp_path: Path):
    precious = tmp_path / "var"
    precious.mkdir()
    (precious / "rrmm.db").write_text("real data")

    result = CliRunner().invoke(
        cli, ["demo", "--var", str(precious), "--port", str(free_port())], env=clean_env()
    )

    assert result.exit_code == 1
    assert "not a demo directory" in result.stderr
    assert (precious / "rrmm.db").read_text() == "real data"


def test_demo_says_when_its_port_is_taken(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["demo", "--var", str(tmp_path / "demo"), "--port", str(port)], env=clean_env()
        )

    assert result.exit_code == 1
    assert f"port {port} is in use" in result.stderr
    assert not (tmp_path / "demo").exists()
