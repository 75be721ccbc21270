"""A real Celery worker (with beat) in a subprocess, pointed at the test database and
broker: the same `rrmm worker --beat` that production runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from app.config import Settings

# Short clocks so that leases, retries and sweeps happen within a test's patience.
FAST_CLOCKS = {
    "RRMM_SWEEP_INTERVAL_SECONDS": "0.5",
    "RRMM_REQUEUE_AFTER_SECONDS": "3",
    "RRMM_DELIVERY_LEASE_SECONDS": "8",
    "RRMM_RETRY_BASE_SECONDS": "0.3",
    "RRMM_RETRY_MAX_SECONDS": "1.5",
    "RRMM_WEBHOOK_TIMEOUT_SECONDS": "2",
    "RRMM_WEBHOOK_CONNECT_TIMEOUT_SECONDS": "1",
    "RRMM_SMTP_TIMEOUT_SECONDS": "1.5",
    "RRMM_HEARTBEAT_INTERVAL_SECONDS": "60",
}


def worker_environment(
    settings: Settings, *, smtp_port: int, var_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}
    env.update(FAST_CLOCKS)
    env.update(
        {
            "RRMM_MODE": "production",
            "RRMM_DATABASE_URL": settings.database_url,
            "RRMM_BROKER_URL": settings.broker_url,
            "RRMM_SECRET_KEY": settings.secret,
            "RRMM_SMTP_HOST": "127.0.0.1",
            "RRMM_SMTP_PORT": str(smtp_port),
            "RRMM_PUBLIC_URL": settings.public_url,
            "RRMM_MAIL_FROM": settings.mail_from,
            "RRMM_WEBHOOK_ALLOW_PRIVATE": "true",
            "RRMM_VAR_DIR": str(var_dir),
            "RRMM_LOG_FORMAT": "json",
            # The API processes some tests start declare as the in-process app does.
            "RRMM_APPROVAL_SEVERITIES": ",".join(settings.approval_severities),
        }
    )
    env.update(extra or {})
    return env


class WorkerProcess:
    def __init__(
        self,
        env: Mapping[str, str],
        *,
        beat: bool = True,
        concurrency: int = 2,
        queues: str | None = None,
        sweeper: bool = False,
    ) -> None:
        """`rrmm worker` (on `queues`, by default both), or with `sweeper` `rrmm sweeper`
        (beat's queue alone, one task at a time)."""
        self.env = dict(env)
        self.beat = beat
        self.concurrency = concurrency
        self.queues = queues
        self.sweeper = sweeper
        self.process: subprocess.Popen[bytes] | None = None
        name = "sweeper" if sweeper else "worker"
        self.log_path = Path(self.env["RRMM_VAR_DIR"]) / f"{name}.log"

    def start(self) -> WorkerProcess:
        Path(self.env["RRMM_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "app.cli"]
        if self.sweeper:
            argv.append("sweeper")
        else:
            argv += ["worker", "--concurrency", str(self.concurrency)]
        if self.queues is not None and not self.sweeper:
            argv += ["--queues", self.queues]
        if self.beat:
            argv.append("--beat")
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool): no goodbye, no acks."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
