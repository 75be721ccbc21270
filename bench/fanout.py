"""Fan-out benchmark: declare one incident to N members and time every email and webhook.

    .venv/bin/python -m bench.fanout [--members N]
    .venv/bin/python -m bench.fanout \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --broker-url redis://127.0.0.1:6379/3

The real service runs as subprocesses (API, worker, beat) against a fresh database: a SQLite
file and the bundled redis-server on a unix socket in a temp dir by default, or a database
created for the run on the given PostgreSQL server (dropped after) and the given Redis. The
webhook receiver and the SMTP sink run in processes of their own (bench/sinks.py). Before the
service, a bare client (no database, no queue) sends as many webhooks and emails to the same
sinks with the same concurrency, which gives the transport's own rate on this machine.

Prints one JSON object. Only 127.0.0.1 traffic; everything started is stopped on exit,
on Ctrl-C and on error; the whole run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import aiosmtplib
import httpx

from app.config import Settings

PYTHON = sys.executable
DEFAULTS = Settings.model_fields
CLK_TCK = os.sysconf("SC_CLK_TCK")
GRACE_SECONDS = 10.0
OPEN_STATUSES = ("pending", "sending", "retrying")
LANGUAGES = (["en"], ["fr"], ["ar"], ["fr", "en"], ["ar", "fr"])


class BenchError(RuntimeError):
    pass


class BenchTimeout(BenchError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise BenchError(f"{what}: not within {timeout:.0f}s")


# ----------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the bench dies, even by SIGKILL (Linux)."""
    with suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Children:
    """Every process the bench starts; each in its own session, stopped in reverse order."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path)
        self.started.append(child)
        log(f"started {name} (pid {process.pid})")
        return child

    def check_alive(self) -> None:
        for child in self.started:
            if child.process.poll() is not None:
                raise BenchError(
                    f"{child.name} exited with {child.process.returncode}:\n{tail(child.log_path)}"
                )

    def stop(self, child: Child) -> None:
        """Stop one child now (the rest keep running)."""
        _stop(child)
        self.started.remove(child)
        log(f"stopped {child.name}")

    def stop_all(self) -> None:
        for child in reversed(self.started):
            _stop(child)
        self.started.clear()


def _stop(child: Child) -> None:
    process = child.process
    if process.poll() is None:
        # The whole group: the worker's pool processes go with it.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log(f"killing {child.name} (pid {process.pid})")
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Pool processes left behind by a parent that died first.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_die_with_parent,
    )
    if done.returncode != 0:
        raise BenchError(f"`rrmm {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    return done.stdout


# ----------------------------------------------------------------------------- /proc


def _ppids() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    parents = _ppids()
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return [pid for pid in tree if pid in parents]


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return (total - idle) / CLK_TCK, total / CLK_TCK


class RssSampler(threading.Thread):
    """Keeps the peak of the sum of VmRSS over a process tree, sampled every 100 ms."""

    def __init__(self, root: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = root
        self.peak_kb = 0
        self.max_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            pids = process_tree(self.root)
            self.max_processes = max(self.max_processes, len(pids))
            self.peak_kb = max(self.peak_kb, sum(status_kb(pid, "VmRSS") for pid in pids))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)


# ----------------------------------------------------------------------------- backends


@dataclass
class Backend:
    name: str
    database_url: str
    broker_url: str
    redis_pid: int | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # report, and go on cleaning up the rest
                log(f"cleanup failed: {type(exc).__name__}: {exc}")
        self.cleanups.clear()


def embedded_backend(tmp: Path, children: Children) -> Backend:
    from app.cli.supervisor import redis_answers, redis_server_argv

    socket_path = tmp / "redis.sock"
    redis_child = children.start("redis", redis_server_argv(socket_path, tmp), env=dict(os.environ))
    wait_until(lambda: redis_answers(socket_path), 20, "bundled redis-server")
    return Backend(
        "sqlite+bundled-redis",
        f"sqlite:///{tmp / 'rrmm.db'}",
        f"redis+socket://{socket_path}",
        redis_pid=redis_child.process.pid,
    )


def server_backend(database_url: str, broker_url: str) -> Backend:
    import contextlib

    import redis
    from sqlalchemy.engine import make_url

    from app.db import scratch_database

    if not broker_url.startswith("redis"):
        raise BenchError("--broker-url must be a redis:// URL")
    broker = redis.Redis.from_url(broker_url)
    db_number = broker.connection_pool.connection_kwargs.get("db", 0)
    if int(db_number) == 0:
        raise BenchError("use a Redis database other than 0 (e.g. redis://127.0.0.1:6379/3)")
    keys_before = set(broker.keys("*"))
    if keys_before:
        log(f"note: Redis db {db_number} already holds {len(keys_before)} key(s); left alone")
    backend = Backend("postgresql+redis", "", broker_url)

    def forget_keys() -> None:
        created = set(broker.keys("*")) - keys_before
        if created:
            broker.delete(*created)
        broker.close()

    backend.cleanups.append(forget_keys)
    if make_url(database_url).get_backend_name() != "postgresql":
        raise BenchError("--database-url must be a postgresql URL")
    database = contextlib.ExitStack()
    backend.database_url = database.enter_context(scratch_database(database_url, "rrmm_bench"))
    log(f"created database {make_url(backend.database_url).database}")
    backend.cleanups.append(database.close)
    return backend


# ----------------------------------------------------------------------------- content

BRIEFING = {
    "en": {
        "subject": "Tension after the cartoon publication",
        "body": "A cartoon published this morning is circulating widely and reactions are "
        "escalating online. Please avoid amplifying the image itself; focus on calm, "
        "factual context and on voices of dialogue.\n\nWe will share an update within "
        "two hours. " * 2,
        "talking_points": [
            "Freedom of expression and respect for beliefs are not opposed.",
            "Report facts, not rumours; quote verified sources only.",
            "Give space to voices of dialogue from every community.",
        ],
    },
    "fr": {
        "subject": "Tensions après la publication de la caricature",
        "body": "Une caricature publiée ce matin circule largement et les réactions "
        "s'intensifient en ligne. Merci d'éviter d'amplifier l'image elle-même ; "
        "privilégiez un contexte calme et factuel et les voix du dialogue.\n\nNous "
        "partagerons une mise à jour d'ici deux heures. " * 2,
        "talking_points": [
            "La liberté d'expression et le respect des croyances ne s'opposent pas.",
            "Rapportez des faits, pas des rumeurs ; citez des sources vérifiées.",
            "Donnez la parole aux voix du dialogue de toutes les communautés.",
        ],
    },
    "ar": {
        "subject": "توتر بعد نشر الرسم الكاريكاتوري",
        "body": "ينتشر رسم كاريكاتوري نُشر هذا الصباح على نطاق واسع وتتصاعد ردود الفعل "
        "على الإنترنت. يرجى تجنب تضخيم الصورة نفسها والتركيز على سياق هادئ وواقعي "
        "وعلى أصوات الحوار.\n\nسنشارك تحديثاً خلال ساعتين. " * 2,
        "talking_points": [
            "حرية التعبير واحترام المعتقدات لا يتعارضان.",
            "انقلوا الحقائق لا الشائعات، واستشهدوا بمصادر موثوقة فقط.",
            "أفسحوا المجال لأصوات الحوار من جميع المجتمعات.",
        ],
    },
}


def members_csv(first: int, count: int, webhook_base: str) -> bytes:
    lines = ["network,name,country,languages,email,webhook_url,consent_given_at,consent_method"]
    for i in range(first, first + count):
        languages = ";".join(LANGUAGES[i % len(LANGUAGES)])
        lines.append(
            f"editors,Member {i},MA,{languages},member{i}@bench.example.org,"
            f"{webhook_base}/h/{i},2026-01-15T10:00:00+00:00,written"
        )
    return ("\n".join(lines) + "\n").encode()


def declare_body() -> dict[str, Any]:
    return {
        "title": "Tension after the cartoon publication",
        "severity": "severe",
        "urgency": "immediate",
        "mode": "exercise",
        "countries": ["MA"],
        "themes": ["religious-hatred"],
        "audience": {"networks": ["editors"]},
        "briefing": BRIEFING,
    }


def raw_email_bytes() -> bytes:
    """One multipart/alternative message like the service's (text + HTML, base64)."""
    entry = BRIEFING["fr"]
    text = f"{entry['body']}\n\n" + "\n".join(f"- {p}" for p in entry["talking_points"])
    message = EmailMessage()
    message["From"] = "RRMM <alerts@rrmm.invalid>"
    message["To"] = "member@bench.example.org"
    message["Subject"] = str(entry["subject"])
    message["Message-ID"] = "<rrmm.delivery.1@rrmm.invalid>"
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = "fr"
    message.set_content(text + "\n\nhttp://127.0.0.1:8000/ack/" + "x" * 120, cte="base64")
    html = "<html><body><p>" + text.replace("\n", "<br>") + "</p></body></html>"
    message.add_alternative(html * 3, subtype="html", cte="base64")
    return message.as_bytes()


def raw_webhook() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "type": "incident.declared",
            "timestamp": "2026-01-15T10:00:00Z",
            "data": {
                "incident": {
                    "id": str(uuid.uuid4()),
                    "reference": "RRMM-2026-0001",
                    "title": "Tension after the cartoon publication",
                    "severity": "severe",
                    "urgency": "immediate",
                    "mode": "exercise",
                    "countries": ["MA"],
                    "themes": ["religious-hatred"],
                    "declared_at": "2026-01-15T10:00:00+00:00",
                },
                "briefing": {"language": "fr", **BRIEFING["fr"]},
                "ack": {
                    "url": "http://127.0.0.1:8000/v1/acks",
                    "page": "http://127.0.0.1:8000/ack/" + "x" * 120,
                    "token": "x" * 120,
                    "deadline": None,
                    "responses": ["acknowledged", "will_engage", "unavailable"],
                },
            },
        },
        ensure_ascii=False,
    ).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "RRMM-Webhooks/1",
        "webhook-id": "rrmm_dlv_1",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1," + "A" * 44,
    }
    return body, headers


# ----------------------------------------------------------------------------- raw transport


async def _raw_webhooks(base: str, n: int, concurrency: int) -> tuple[int, float]:
    body, headers = raw_webhook()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    ok = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal ok
            async with gate, session.post(f"{base}/raw/{i}", data=body, headers=headers) as r:
                await r.content.read(16 * 1024)
                ok += r.status == 200

        await asyncio.gather(*(one(i) for i in range(n)))
    return ok, time.monotonic()


async def _raw_emails(port: int, n: int, connections: int) -> tuple[int, float]:
    message = raw_email_bytes()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ok = 0

    async def connection() -> None:
        nonlocal ok
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        try:
            while not queue.empty():
                i = queue.get_nowait()
                errors, _ = await client.sendmail(
                    "alerts@rrmm.invalid", [f"member{i}@bench.example.org"], message
                )
                ok += not errors
        finally:
            await client.quit()

    await asyncio.gather(*(connection() for _ in range(min(connections, n))))
    return ok, time.monotonic()


async def _raw_both(
    webhook_base: str, smtp_port: int, n: int, concurrency: int, connections: int
) -> dict[str, Any]:
    start = time.monotonic()
    (webhooks_ok, webhooks_end), (emails_ok, emails_end) = await asyncio.gather(
        _raw_webhooks(webhook_base, n, concurrency), _raw_emails(smtp_port, n, connections)
    )
    seconds = max(webhooks_end, emails_end) - start
    return {
        "seconds": round(seconds, 3),
        "sent": {"email": emails_ok, "webhook": webhooks_ok},
        "email_per_second": round(emails_ok / (emails_end - start), 1),
        "webhook_per_second": round(webhooks_ok / (webhooks_end - start), 1),
        "deliveries_per_second": round((emails_ok + webhooks_ok) / seconds, 1),
    }


def measure_raw(
    webhook_base: str, smtp_port: int, n: int, concurrency: int, connections: int
) -> dict[str, Any]:
    """Same sinks, same concurrency, no database and no queue: the transport's own rate."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before, _ = machine_cpu()
    result = asyncio.run(_raw_both(webhook_base, smtp_port, n, concurrency, connections))
    busy_after, _ = machine_cpu()
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["client_cpu_seconds"] = round(used, 2)
    result["machine_busy_cpu_seconds"] = round(busy_after - busy_before, 2)
    return result


# ----------------------------------------------------------------------------- the run


@dataclass
class Sinks:
    webhook_port: int
    smtp_port: int
    smtp_stats_port: int
    webhook_pid: int
    smtp_pid: int

    @property
    def webhook_base(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    def stats(self, http: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
        webhook = http.get(f"{self.webhook_base}/_stats").json()
        smtp = http.get(f"http://127.0.0.1:{self.smtp_stats_port}/_stats").json()
        return webhook, smtp

    def reset(self, http: httpx.Client) -> None:
        http.post(f"{self.webhook_base}/_reset").raise_for_status()
        http.post(f"http://127.0.0.1:{self.smtp_stats_port}/_reset").raise_for_status()


def start_sinks(children: Children, http: httpx.Client) -> Sinks:
    env = dict(os.environ)
    webhook_port, smtp_port, stats_port = free_port(), free_port(), free_port()
    webhook = children.start(
        "webhook-sink",
        [PYTHON, "-m", "bench.sinks", "webhook", "--port", str(webhook_port)],
        env,
    )
    smtp = children.start(
        "smtp-sink",
        [PYTHON, "-m", "bench.sinks", "smtp", "--port", str(smtp_port),
         "--stats-port", str(stats_port)],
        env,
    )  # fmt: skip
    sinks = Sinks(webhook_port, smtp_port, stats_port, webhook.process.pid, smtp.process.pid)

    def up() -> bool:
        children.check_alive()
        try:
            sinks.stats(http)
        except httpx.HTTPError:
            return False
        return True

    wait_until(up, 20, "sinks")
    return sinks


def service_env(
    backend: Backend, tmp: Path, sinks: Sinks, api_port: int, knobs: dict[str, int]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}
    env.update(
        {
            "RRMM_MODE": "production",
            "RRMM_DATABASE_URL": backend.database_url,
            "RRMM_BROKER_URL": backend.broker_url,
            "RRMM_SECRET_KEY": secrets.token_hex(32),
            "RRMM_VAR_DIR": str(tmp / "var"),
            "RRMM_SMTP_HOST": "127.0.0.1",
            "RRMM_SMTP_PORT": str(sinks.smtp_port),
            "RRMM_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "RRMM_WEBHOOK_ALLOW_PRIVATE": "true",
            "RRMM_LOG_FORMAT": "json",
            "RRMM_MAX_IMPORT_BYTES": str(64 * 1024 * 1024),
            "RRMM_WEBHOOK_CONCURRENCY": str(knobs["webhook_concurrency"]),
            "RRMM_SMTP_CONNECTIONS": str(knobs["smtp_connections"]),
            "RRMM_DELIVERY_BATCH_SIZE": str(knobs["delivery_batch_size"]),
        }
    )
    return env


def wait_for_worker(broker_url: str, children: Children, timeout: float = 60) -> None:
    """Ready = answers a remote-control ping through the broker (consuming, not just alive)."""
    from celery import Celery

    app = Celery("bench", broker=broker_url, set_as_current=False)
    try:

        def answers() -> bool:
            children.check_alive()
            return bool(app.control.ping(timeout=1.0))

        wait_until(answers, timeout, "worker ping", every=0.5)
    finally:
        app.close()


def import_members(api: httpx.Client, n: int, webhook_base: str, chunk: int = 2500) -> int:
    created = 0
    for first in range(0, n, chunk):
        response = api.post(
            "/v1/members/import",
            content=members_csv(first, min(chunk, n - first), webhook_base),
            headers={"content-type": "text/csv"},
        )
        if response.status_code != 200:
            raise BenchError(f"import failed: {response.status_code} {response.text[:2000]}")
        result = response.json()
        created += result["created"]
        if len(result["webhook_secrets"]) != result["created"]:
            raise BenchError("import returned fewer webhook secrets than members created")
    return created


def counts(status: dict[str, Any]) -> dict[str, int]:
    by_status: dict[str, int] = status["deliveries"]["by_status"]
    return by_status


def is_final(by_status: dict[str, int]) -> bool:
    return sum(by_status.values()) > 0 and not any(by_status.get(s) for s in OPEN_STATUSES)


@contextmanager
def profiling(directory: Path | None, targets: dict[str, int], idle: bool) -> Iterator[None]:
    """py-spy (if asked for, and installed) on each target's process tree while in the block:
    collapsed stacks in <directory>/<name>.txt (flamegraph.pl / speedscope read them)."""
    if directory is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in targets.items():
        argv = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                "--format", "raw", "--output", str(directory / f"{name}.txt")]  # fmt: skip
        if idle:
            argv.append("--idle")
        with (directory / f"{name}.py-spy.log").open("ab") as out:
            spy = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        spies.append(spy)
    time.sleep(1)  # attached before the work starts
    try:
        yield
    finally:
        for spy in spies:
            with suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        log(f"profiles in {directory}")


@dataclass
class Components:
    pids: dict[str, int]

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(process_tree(pid)) for name, pid in self.pids.items()}


def service_knobs(args: argparse.Namespace) -> dict[str, int]:
    return {
        "worker_concurrency": args.worker_concurrency,
        "webhook_concurrency": args.webhook_concurrency,
        "smtp_connections": args.smtp_connections,
        "delivery_batch_size": args.batch_size,
    }


@dataclass
class Service:
    """The real service started for a run, with the sinks it delivers to."""

    backend: Backend
    sinks: Sinks
    env: dict[str, str]
    api_port: int
    api_workers: int
    api_child: Child
    worker: Child | None
    beat: Child | None
    api: httpx.Client  # authenticated with an operator key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def create_key(self, role: str) -> str:
        """A new API key of `role` (operator, viewer, admin), through the CLI."""
        return run_cli(
            ["keys", "create", "--name", f"bench-{role}", "--role", role], self.env
        ).strip()

    def restart_api(self, children: Children) -> None:
        """A fresh API process on the same port, once it answers."""
        children.stop(self.api_child)
        self.api_child = start_api(children, self.env, self.api_port, self.api_workers)
        wait_for_api(self.api, children)


def start_api(children: Children, env: dict[str, str], port: int, workers: int) -> Child:
    argv = [PYTHON, "-m", "app.cli", "api", "--port", str(port)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    return children.start("api", argv, env)


def wait_for_api(api: httpx.Client, children: Children) -> None:
    def api_up() -> bool:
        children.check_alive()
        try:
            return api.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(api_up, 60, "API /readyz")


def start_service(
    args: argparse.Namespace,
    tmp: Path,
    children: Children,
    backend_box: list[Backend],
    http: httpx.Client,
    *,
    api_workers: int = 1,
    with_worker: bool = True,
) -> Service:
    """Backend, sinks, migrations, an operator key, the API (`rrmm api`, `api_workers`
    server processes) and, `with_worker`, a worker and beat; returns once all answer."""
    if args.database_url:
        backend = server_backend(args.database_url, args.broker_url)
    else:
        backend = embedded_backend(tmp, children)
    backend_box.append(backend)

    sinks = start_sinks(children, http)
    api_port = free_port()
    env = service_env(backend, tmp, sinks, api_port, service_knobs(args))
    run_cli(["db", "upgrade"], env)
    key = run_cli(["keys", "create", "--name", "bench", "--role", "operator"], env).strip()
    api_child = start_api(children, env, api_port, api_workers)
    worker = beat = None
    if with_worker:
        worker = children.start(
            "worker",
            [PYTHON, "-m", "app.cli", "worker", "--concurrency", str(args.worker_concurrency)],
            env,
        )
        beat = children.start("beat", [PYTHON, "-m", "app.cli", "beat"], env)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(300, connect=5),
    )
    wait_for_api(api, children)
    if with_worker:
        wait_for_worker(backend.broker_url, children)
    log("service up")
    return Service(backend, sinks, env, api_port, api_workers, api_child, worker, beat, api)


def run(
    args: argparse.Namespace, tmp: Path, children: Children, backend_box: list[Backend]
) -> dict[str, Any]:
    n: int = args.members
    load_at_start = round(os.getloadavg()[0], 2)
    knobs = service_knobs(args)
    http = httpx.Client(timeout=30)
    service = start_service(args, tmp, children, backend_box, http)
    backend, sinks, api, api_child = service.backend, service.sinks, service.api, service.api_child
    worker, beat = service.worker, service.beat
    assert worker is not None  # started: with_worker is the default
    assert beat is not None
    sampler = RssSampler(worker.process.pid)
    sampler.start()

    started = time.monotonic()
    created = import_members(api, n, sinks.webhook_base)
    import_seconds = time.monotonic() - started
    log(f"imported {created} members in {import_seconds:.1f}s")
    if created != n:
        raise BenchError(f"expected {n} new members, the import created {created}")

    log(f"raw transport: {n} webhooks + {n} emails")
    raw = measure_raw(
        sinks.webhook_base, sinks.smtp_port, n, args.webhook_concurrency, args.smtp_connections
    )
    raw_webhook_stats, raw_smtp_stats = sinks.stats(http)
    raw["avg_bytes"] = {
        "email": round(raw_smtp_stats["bytes"] / max(raw_smtp_stats["count"], 1)),
        "webhook": round(raw_webhook_stats["bytes"] / max(raw_webhook_stats["count"], 1)),
    }
    log(f"raw: {raw['deliveries_per_second']}/s")
    sinks.reset(http)
    time.sleep(1)  # let the sinks and the beat settle

    components = Components(
        {
            "worker": worker.process.pid,
            "api": api_child.process.pid,
            "beat": beat.process.pid,
            "webhook_sink": sinks.webhook_pid,
            "smtp_sink": sinks.smtp_pid,
            **({"redis": backend.redis_pid} if backend.redis_pid else {}),
        }
    )
    with profiling(
        args.profile, {"worker": worker.process.pid, "api": api_child.process.pid}, args.idle
    ):
        result = fan_out(args, api, http, sinks, components, children)
    sampler.stop()
    received = sum(result["deliveries"]["received"].values())
    worker_pids = process_tree(worker.process.pid)
    hwm_kb = sum(status_kb(pid, "VmHWM") for pid in worker_pids)
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_1m_at_start": load_at_start,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "backend": backend.name,
        "members": n,
        **result,
        "import_seconds": round(import_seconds, 2),
        "raw_deliveries_per_second": raw["deliveries_per_second"],
        "ratio": round(
            result["deliveries_per_second"] / max(raw["deliveries_per_second"], 1e-9), 3
        ),
        "raw": raw,
        # Less sensitive to the rest of the machine than the rates: CPU per delivery.
        "cpu_ms_per_delivery": {
            "worker": _per_item_ms(result["cpu_seconds_during_fanout"]["worker"], received),
            "raw_client": _per_item_ms(raw["client_cpu_seconds"], sum(raw["sent"].values())),
        },
        "worker_peak_rss_mb": round(sampler.peak_kb / 1024, 1),
        "worker_vmhwm_sum_mb": round(hwm_kb / 1024, 1),
        "worker_processes": sampler.max_processes,
        "settings": {
            **knobs,
            "worker_pool": "prefork",
            "sweep_interval_seconds": DEFAULTS["sweep_interval_seconds"].default,
        },
    }


def fan_out(
    args: argparse.Namespace,
    api: httpx.Client,
    http: httpx.Client,
    sinks: Sinks,
    components: Components,
    children: Children,
) -> dict[str, Any]:
    """Declare, then wait for every delivery at the sinks (and in the ledger)."""
    n: int = args.members
    idle_rss_kb = sum(status_kb(pid, "VmRSS") for pid in process_tree(components.pids["worker"]))
    cpu_before = components.cpu()
    busy_before, _ = machine_cpu()
    log("declaring")
    declare_started = time.monotonic()
    response = api.post("/v1/incidents", json=declare_body())
    declared_at = time.monotonic()
    if response.status_code != 202:
        raise BenchError(f"declare failed: {response.status_code} {response.text[:2000]}")
    incident = response.json()
    status_url = f"/v1/incidents/{incident['id']}/status"
    expected_by_channel = counts(api.get(status_url).json())
    expected = sum(expected_by_channel.values())
    log(f"declared in {declared_at - declare_started:.3f}s, {expected} deliveries")

    deadline = args.deadline
    webhook_stats, smtp_stats = sinks.stats(http)
    last_status_check = 0.0
    by_status: dict[str, int] = {}
    status_final_at: float | None = None
    while True:
        children.check_alive()
        now = time.monotonic()
        if now > deadline:
            raise BenchTimeout(
                f"fan-out not done before the deadline: webhooks {webhook_stats['count']}, "
                f"emails {smtp_stats['count']}, status {by_status}"
            )
        webhook_stats, smtp_stats = sinks.stats(http)
        if now - last_status_check > 1.0:
            by_status = counts(api.get(status_url).json())
            last_status_check = now
            if status_final_at is None and is_final(by_status):
                status_final_at = time.monotonic()
        if webhook_stats["count"] >= n and smtp_stats["count"] >= n:
            break
        if status_final_at is not None:
            break  # everything final, some deliveries failed: stop waiting for them
        time.sleep(0.1)
    cpu_after = components.cpu()
    busy_after, _ = machine_cpu()
    # The ledger is written after the sends: keep polling until nothing is open.
    while status_final_at is None and time.monotonic() < deadline:
        by_status = counts(api.get(status_url).json())
        if is_final(by_status):
            status_final_at = time.monotonic()
        else:
            time.sleep(0.2)
    webhook_stats, smtp_stats = sinks.stats(http)
    last = max(webhook_stats["last_at"] or declared_at, smtp_stats["last_at"] or declared_at)
    firsts = [s["first_at"] for s in (webhook_stats, smtp_stats) if s["first_at"] is not None]
    fanout_seconds = last - declared_at
    received = webhook_stats["count"] + smtp_stats["count"]
    cpu_used = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}
    cpu_used["machine_busy"] = round(busy_after - busy_before, 2)
    cpu_used["not_ours"] = round(
        cpu_used["machine_busy"] - sum(v for k, v in cpu_used.items() if k != "machine_busy"), 2
    )
    return {
        "deliveries": {
            "expected": 2 * n,
            "in_ledger": expected,
            "received": {"email": smtp_stats["count"], "webhook": webhook_stats["count"]},
            "final_status": by_status,
            "avg_bytes": {
                "email": round(smtp_stats["bytes"] / max(smtp_stats["count"], 1)),
                "webhook": round(webhook_stats["bytes"] / max(webhook_stats["count"], 1)),
            },
        },
        "worker_rss_before_declare_mb": round(idle_rss_kb / 1024, 1),
        "declare_latency_s": round(declared_at - declare_started, 3),
        "first_delivery_s": round(min(firsts) - declared_at, 3) if firsts else None,
        "by_channel": {
            name: _channel_timing(stats, declared_at)
            for name, stats in (("email", smtp_stats), ("webhook", webhook_stats))
        },
        "fanout_seconds": round(fanout_seconds, 3),
        "status_final_s": round(status_final_at - declared_at, 3) if status_final_at else None,
        "deliveries_per_second": round(received / fanout_seconds, 1) if fanout_seconds else 0.0,
        # "not_ours": the rest of the machine (PostgreSQL too) during the fan-out.
        "cpu_seconds_during_fanout": cpu_used,
    }


def _per_item_ms(seconds: float, items: int) -> float | None:
    return round(1000 * seconds / items, 3) if items else None


def _channel_timing(stats: dict[str, Any], declared_at: float) -> dict[str, Any]:
    """When a channel's first and last delivery reached its sink, after the declare answer."""
    if not stats["count"]:
        return {"count": 0}
    last = stats["last_at"] - declared_at
    return {
        "first_s": round(stats["first_at"] - declared_at, 3),
        "last_s": round(last, 3),
        "per_second": round(stats["count"] / last, 1) if last > 0 else None,
    }


@contextmanager
def signals_as_exceptions(timeout: float) -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C; SIGALRM (the overall timeout) raises BenchTimeout."""

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise BenchTimeout(f"overall timeout of {timeout:.0f}s reached")

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
        signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm),
        # Even when started in the background, where SIGINT comes ignored.
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    signal.alarm(int(timeout))
    try:
        yield
    finally:
        signal.alarm(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the service under test, shared by the benchmarks."""
    parser.add_argument("--database-url", help="a PostgreSQL server (a database is created)")
    parser.add_argument("--broker-url", help="a Redis URL with a db number other than 0")
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument(
        "--webhook-concurrency", type=int, default=DEFAULTS["webhook_concurrency"].default
    )
    parser.add_argument(
        "--smtp-connections", type=int, default=DEFAULTS["smtp_connections"].default
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["delivery_batch_size"].default)
    parser.add_argument("--timeout", type=float, default=600, help="overall limit, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")


def check_service_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.database_url) != bool(args.broker_url):
        parser.error("give both --database-url and --broker-url, or neither")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--members", type=int, default=10_000)
    add_service_arguments(parser)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the worker and the API during the fan-out into DIR"
    )
    parser.add_argument("--idle", action="store_true", help="with --profile: wall time, not CPU")
    args = parser.parse_args(argv)
    check_service_arguments(parser, args)
    if args.members < 1:
        parser.error("--members must be at least 1")
    return args


Body = Callable[[argparse.Namespace, Path, Children, list[Backend]], dict[str, Any]]


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


def run_bench(
    args: argparse.Namespace, body: Body, emit: Callable[[dict[str, Any]], None] = print_json
) -> int:
    """Run `body` in a temp dir under --timeout, emit its result; whatever happens, stop
    every child, close the backends and remove the temp dir (unless --keep)."""
    args.deadline = time.monotonic() + args.timeout - 15  # leave time to clean up
    tmp = Path(tempfile.mkdtemp(prefix="rrmm-bench-"))
    (tmp / "logs").mkdir()
    children = Children(tmp / "logs")
    backend_box: list[Backend] = []
    code = 1
    try:
        with signals_as_exceptions(args.timeout):
            result = body(args, tmp, children, backend_box)
        emit(result)
        code = 0
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    except BenchError as exc:
        log(f"failed: {exc}")
        for child in children.started:
            log(f"--- {child.name} log tail:\n{tail(child.log_path, 15)}")
    finally:
        # Not interruptible by the alarm any more; a second Ctrl-C still is, so be quick.
        children.stop_all()
        for backend in backend_box:
            backend.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
