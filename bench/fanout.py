"""Fan-out benchmark: declare one incident to N members and time every email and webhook.

    .venv/bin/python -m bench.fanout [--members N] [--runs 3] [--workers N]
        [--receiver-latency 0.2]
    .venv/bin/python -m bench.fanout \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --broker-url redis://127.0.0.1:6379/3

The real service runs as subprocesses (API, worker, beat) against a fresh database: a SQLite
file and the bundled redis-server on a unix socket in a temp dir by default, or a database
created for the run on the given PostgreSQL server (dropped after) and the given Redis. The
sinks (bench/sinks.py: an SMTP and an HTTP/1.1 peer that count and do not parse) run in
processes of their own, their CPU reported apart.

Each run measures three systems on the same sinks, in an order that rotates from run to
run: the worker (declare, then every delivery at the sinks and none open in the ledger),
the library baseline (aiosmtplib and aiohttp driven by a fixed pool of coroutines) and the
protocol floor (pipelined SMTP, raw HTTP/1.1), both from bench/clients.py, sending the same
messages with the same concurrency. The headline is CPU per delivery, from /proc: the
worker's process tree, the baselines' own process, the run database's PostgreSQL backends.
Medians over the runs, their spread, and the phases during which other processes took more
than 10 % of the machine.

Prints one JSON object. Only 127.0.0.1 traffic; everything started is stopped on exit,
on Ctrl-C and on error; the whole run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.config import Settings
from app.netutil import NotReady, free_port, wait_until
from app.vocabulary import OPEN_DELIVERY_STATUSES

PYTHON = sys.executable
DEFAULTS = Settings.model_fields
CLK_TCK = os.sysconf("SC_CLK_TCK")
GRACE_SECONDS = 10.0
LANGUAGES = (["en"], ["fr"], ["ar"], ["fr", "en"], ["ar", "fr"])


class BenchError(RuntimeError):
    pass


class BenchTimeout(BenchError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu(pid: int) -> float | None:
    """One process's CPU seconds: utime + stime, plus cutime + cstime (its children that
    have exited and been waited for: a pool process replaced mid-run still counts)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(process_cpu(pid) or 0.0 for pid in pids)


def pids_named(name: bytes) -> list[int]:
    """Every process whose command name (comm) is `name`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                head = stat.read(128)
        except OSError:
            continue
        if head[head.find(b"(") + 1 : head.rfind(b")")] == name:
            found.append(int(entry.name))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return (total - idle) / CLK_TCK, total / CLK_TCK


def rollup_kb(pid: int, key: str) -> int:
    """A field of /proc/<pid>/smaps_rollup (Pss: shared pages divided among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class DatabaseCpu:
    """CPU of the PostgreSQL backends serving the run's database, read from /proc (the
    server runs on this machine; other databases' backends, e.g. other test runs, are not
    counted). Backends are listed from pg_stat_activity each sample: one seen at `start`
    counts from its CPU then, one that appears later from zero. A backend that exits
    between two samples loses what it used since the last one (pools keep theirs open)."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self._engine = create_engine(database_url, poolclass=NullPool)
        self._connection = self._engine.connect()
        self._lock = threading.Lock()
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def _backends(self) -> list[int]:
        from sqlalchemy import text

        rows = self._connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        pids = [int(pid) for (pid,) in rows]
        self._connection.rollback()  # no transaction left open between samples
        return pids

    def start(self) -> None:
        with self._lock:
            self._base, self._last = {}, {}
            for pid in self._backends():
                cpu = process_cpu(pid)
                if cpu is not None:
                    self._base[pid] = self._last[pid] = cpu

    def sample(self) -> None:
        with self._lock:
            for pid in self._backends():
                cpu = process_cpu(pid)
                if cpu is not None:
                    self._base.setdefault(pid, 0.0)
                    self._last[pid] = cpu

    def used(self) -> float:
        """CPU seconds since `start`."""
        self.sample()
        with self._lock:
            return sum(self._last[pid] - self._base[pid] for pid in self._last)

    def close(self) -> None:
        self._connection.close()
        self._engine.dispose()


class Sampler(threading.Thread):
    """While a worker phase runs, every 0.5 s: the peak of PSS summed over the worker's
    processes (each shared page divided among the processes mapping it, so a prefork pool
    is not counted N times as a sum of RSS would), the largest single RSS, the process
    count; and on PostgreSQL a sample of the database backends' CPU."""

    def __init__(self, roots: list[int], database: DatabaseCpu | None) -> None:
        super().__init__(name="sampler", daemon=True)
        self.roots = roots
        self.database = database
        self.peak_pss_kb = 0
        self.max_rss_kb = 0
        self.max_processes = 0
        self._stop_event = threading.Event()

    def pids(self) -> list[int]:
        return [pid for root in self.roots for pid in process_tree(root)]

    def sample(self) -> None:
        pids = self.pids()
        self.max_processes = max(self.max_processes, len(pids))
        self.peak_pss_kb = max(self.peak_pss_kb, sum(rollup_kb(pid, "Pss") for pid in pids))
        for pid in pids:
            self.max_rss_kb = max(self.max_rss_kb, status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"))
        if self.database is not None:
            self.database.sample()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()


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

    from tests.support.database import scratch_database

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


def start_sinks(
    children: Children, http: httpx.Client, webhook_latency: float = 0.0, smtp_latency: float = 0.0
) -> Sinks:
    env = dict(os.environ)
    webhook_port, smtp_port, stats_port = free_port(), free_port(), free_port()
    webhook = children.start(
        "webhook-sink",
        [
            PYTHON,
            "-m",
            "bench.sinks",
            "webhook",
            "--port",
            str(webhook_port),
            "--latency",
            str(webhook_latency),
        ],
        env,
    )
    smtp = children.start(
        "smtp-sink",
        [
            PYTHON,
            "-m",
            "bench.sinks",
            "smtp",
            "--port",
            str(smtp_port),
            "--stats-port",
            str(stats_port),
            "--latency",
            str(smtp_latency),
        ],
        env,
    )
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
    backend: Backend, tmp: Path, sinks: Sinks, api_port: int, knobs: dict[str, Any]
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
            "RRMM_WORKER_EVENT_LOOP": str(knobs["event_loop"]),
        }
    )
    return env


def wait_for_worker(
    broker_url: str, children: Children, timeout: float = 60, workers: int = 1
) -> None:
    """Ready = `workers` workers answer a remote-control ping through the broker (consuming,
    not just alive)."""
    from celery import Celery

    app = Celery("bench", broker=broker_url, set_as_current=False)
    try:

        def answers() -> bool:
            children.check_alive()
            return len(app.control.ping(timeout=1.0) or []) >= workers

        wait_until(answers, timeout, "worker ping", interval=0.5)
    finally:
        app.close()


def import_members(
    api: httpx.Client, n: int, webhook_base: str, chunk: int = 2500, *, first: int = 0
) -> int:
    """Import members `first` … `first + n - 1` through the API."""
    created = 0
    for offset in range(0, n, chunk):
        response = api.post(
            "/v1/members/import",
            content=members_csv(first + offset, min(chunk, n - offset), webhook_base),
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
    return sum(by_status.values()) > 0 and not any(by_status.get(s) for s in OPEN_DELIVERY_STATUSES)


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
        argv = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(directory / f"{name}.txt"),
        ]
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
    """Named process trees (a name may have several roots: `--workers N`)."""

    pids: Mapping[str, int | Sequence[int]]

    def roots(self, name: str) -> list[int]:
        pids = self.pids[name]
        return [pids] if isinstance(pids, int) else list(pids)

    def cpu(self) -> dict[str, float]:
        return {
            name: sum(cpu_seconds(process_tree(root)) for root in self.roots(name))
            for name in self.pids
        }


def service_knobs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "worker_concurrency": args.worker_concurrency,
        "webhook_concurrency": args.webhook_concurrency,
        "smtp_connections": args.smtp_connections,
        "delivery_batch_size": args.batch_size,
        "event_loop": args.event_loop,
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
    extra_workers: list[Child] = field(default_factory=list)  # --workers N: the other N-1

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

    sinks = start_sinks(children, http, getattr(args, "receiver_latency", 0.0), _smtp_latency(args))
    api_port = free_port()
    env = service_env(backend, tmp, sinks, api_port, service_knobs(args))
    run_cli(["db", "upgrade"], env)
    key = run_cli(["keys", "create", "--name", "bench", "--role", "operator"], env).strip()
    api_child = start_api(children, env, api_port, api_workers)
    worker = beat = None
    extra_workers: list[Child] = []
    workers = getattr(args, "workers", 1)
    if with_worker:
        worker_argv = [
            PYTHON,
            "-m",
            "app.cli",
            "worker",
            "--concurrency",
            str(args.worker_concurrency),
        ]
        worker = children.start("worker", worker_argv, env)
        # More workers as on other hosts: same database and broker, each its own pool.
        extra_workers = [
            children.start(f"worker-{i + 2}", worker_argv, env) for i in range(workers - 1)
        ]
        beat = children.start("beat", [PYTHON, "-m", "app.cli", "beat"], env)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(300, connect=5),
    )
    wait_for_api(api, children)
    if with_worker:
        wait_for_worker(backend.broker_url, children, workers=workers)
    log("service up")
    return Service(
        backend, sinks, env, api_port, api_workers, api_child, worker, beat, api, extra_workers
    )


SYSTEMS = ("worker", "library_baseline", "protocol_floor")
BUSY_SHARE = 0.10  # other processes above this share of the machine flag a phase


@dataclass
class Meter:
    """CPU of everything a phase involves, read before and after it: the components'
    process trees, this process and the baselines it ran (getrusage), the run database's
    backends (PostgreSQL), and the whole machine (/proc/stat)."""

    components: Components
    database: DatabaseCpu | None

    def read(self) -> dict[str, float]:
        cpu = self.components.cpu()
        own = resource.getrusage(resource.RUSAGE_SELF)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["bench"] = own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
        if self.database is not None:
            cpu["database"] = self.database.used()
        cpu["machine_busy"] = machine_cpu()[0]
        cpu["at"] = time.monotonic()
        return cpu


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Each component's CPU seconds over a phase, what the rest of the machine used
    (`others`: busy minus ours, e.g. other engineers' tests, PostgreSQL's other databases)
    and its share of the machine's capacity over the phase's wall time."""
    used = {
        name: round(after[name] - before[name], 3)
        for name in before
        if name not in ("machine_busy", "at")
    }
    ours = sum(used.values())
    wall = after["at"] - before["at"]
    others = max(after["machine_busy"] - before["machine_busy"] - ours, 0.0)
    share = others / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
    return {
        "cpu_seconds": used,
        "others_cpu_seconds": round(others, 2),
        "others_share": round(share, 3),
        "busy": share > BUSY_SHARE,
    }


def baseline_concurrency(args: argparse.Namespace) -> dict[str, int]:
    """As many in flight as the whole worker side: each of the `--workers` x
    `--worker-concurrency` pool processes runs a batch with the per-batch settings."""
    processes = args.workers * args.worker_concurrency
    return {
        "webhook_concurrency": args.webhook_concurrency * processes,
        "smtp_connections": args.smtp_connections * processes,
    }


def run_client(kind: str, args: argparse.Namespace, sinks: Sinks) -> dict[str, Any]:
    """One baseline (bench/clients.py) in a process of its own; its JSON."""
    concurrency = baseline_concurrency(args)
    argv = [
        PYTHON,
        "-m",
        "bench.clients",
        kind,
        "--webhook-base",
        sinks.webhook_base,
        "--smtp-port",
        str(sinks.smtp_port),
        "--members",
        str(args.members),
        "--webhook-concurrency",
        str(concurrency["webhook_concurrency"]),
        "--smtp-connections",
        str(concurrency["smtp_connections"]),
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=max(args.deadline - time.monotonic(), 1),
        check=False,
        preexec_fn=_die_with_parent,
    )
    if done.returncode != 0:
        raise BenchError(f"baseline {kind} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _sink_check(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "received": stats["count"],
        "distinct_ids": stats["distinct_ids"],
        "duplicates": stats["duplicates"],
        "errors": stats["errors"],
        "connections": stats["connections"],
        "avg_bytes": round(stats["bytes"] / max(stats["count"], 1)),
    }


def _sink_cpu_ms(cpu: dict[str, Any], webhooks: int, emails: int) -> dict[str, float | None]:
    return {
        "smtp_sink": _per_item_ms(cpu["cpu_seconds"]["smtp_sink"], emails),
        "webhook_sink": _per_item_ms(cpu["cpu_seconds"]["webhook_sink"], webhooks),
    }


def baseline_phase(
    kind: str, args: argparse.Namespace, sinks: Sinks, http: httpx.Client, meter: Meter
) -> dict[str, Any]:
    """The same messages to the same sinks without the service: `library` (aiosmtplib,
    aiohttp) or `floor` (the protocol, on asyncio protocols)."""
    sinks.reset(http)
    before = meter.read()
    result = run_client(kind, args, sinks)
    after = meter.read()
    webhook_stats, smtp_stats = sinks.stats(http)
    email, webhook = result["email"], result["webhook"]
    sent = email["ok"] + webhook["ok"]
    seconds = email["seconds"] + webhook["seconds"]
    cpu = cpu_between(before, after)
    for channel, stats in (("email", smtp_stats), ("webhook", webhook_stats)):
        if stats["count"] != result[channel]["ok"] or stats["duplicates"]:
            raise BenchError(f"baseline {kind}: {channel} sent {result[channel]} but {stats}")
    return {
        # Emails, then webhooks, one after the other (per channel CPU); the worker sends
        # both at once, but a client on one event loop is one core either way.
        "seconds": round(seconds, 3),
        "deliveries_per_second": round(sent / seconds, 1) if seconds else 0.0,
        "cpu_ms_per_delivery": _per_item_ms(email["cpu_seconds"] + webhook["cpu_seconds"], sent),
        "by_channel": {
            channel: {
                "sent": result[channel]["ok"],
                "failed": result[channel]["failed"],
                "seconds": result[channel]["seconds"],
                "per_second": round(result[channel]["ok"] / result[channel]["seconds"], 1)
                if result[channel]["seconds"]
                else None,
                "cpu_ms": _per_item_ms(result[channel]["cpu_seconds"], result[channel]["ok"]),
            }
            for channel in ("email", "webhook")
        },
        "sink_cpu_ms_per_delivery": _sink_cpu_ms(cpu, webhook_stats["count"], smtp_stats["count"]),
        "sinks": {"email": _sink_check(smtp_stats), "webhook": _sink_check(webhook_stats)},
        "machine": cpu,
    }


def worker_phase(
    args: argparse.Namespace,
    service: Service,
    http: httpx.Client,
    meter: Meter,
    worker_roots: list[int],
    children: Children,
) -> dict[str, Any]:
    """Declare one incident to the N members, wait until every delivery reached the sinks
    and the ledger has none open; the worker's CPU, memory and timings over that."""
    n: int = args.members
    api, sinks = service.api, service.sinks
    sinks.reset(http)
    sampler = Sampler(worker_roots, meter.database)
    sampler.sample()
    sampler.start()
    before = meter.read()
    log("declaring")
    declare_started = time.monotonic()
    response = api.post("/v1/incidents", json=declare_body())
    declared_at = time.monotonic()
    api_after_declare = meter.components.cpu()["api"]
    if response.status_code != 202:
        sampler.stop()
        raise BenchError(f"declare failed: {response.status_code} {response.text[:2000]}")
    incident = response.json()
    status_url = f"/v1/incidents/{incident['id']}/status"
    log(f"declared in {declared_at - declare_started:.3f}s")

    by_status: dict[str, int] = {}
    status_final_at: float | None = None
    last_status_check = 0.0
    try:
        while True:
            children.check_alive()
            now = time.monotonic()
            if now > args.deadline:
                raise BenchTimeout(
                    f"fan-out not done before the deadline: status {by_status}, sinks "
                    f"{[s['count'] for s in sinks.stats(http)]}"
                )
            webhook_stats, smtp_stats = sinks.stats(http)
            delivered = webhook_stats["count"] >= n and smtp_stats["count"] >= n
            # Often once the sinks have everything: the ledger's last writes follow the sends.
            if now - last_status_check > (0.2 if delivered else 1.0):
                by_status = counts(api.get(status_url).json())
                last_status_check = now
                if is_final(by_status):
                    status_final_at = time.monotonic()
                    break
            time.sleep(0.1)
    finally:
        sampler.stop()
    after = meter.read()  # the worker's CPU includes writing the last outcomes
    webhook_stats, smtp_stats = sinks.stats(http)
    last = max(webhook_stats["last_at"] or declared_at, smtp_stats["last_at"] or declared_at)
    firsts = [s["first_at"] for s in (webhook_stats, smtp_stats) if s["first_at"] is not None]
    fanout_seconds = last - declared_at
    received = webhook_stats["count"] + smtp_stats["count"]
    cpu = cpu_between(before, after)
    used = cpu["cpu_seconds"]
    return {
        "deliveries": {
            "expected": 2 * n,
            "in_ledger": sum(by_status.values()),
            "received": {"email": smtp_stats["count"], "webhook": webhook_stats["count"]},
            "final_status": by_status,
        },
        "declare_latency_s": round(declared_at - declare_started, 3),
        "declare_api_cpu_ms": round(1000 * (api_after_declare - before["api"]), 1),
        "first_delivery_s": round(min(firsts) - declared_at, 3) if firsts else None,
        "by_channel": {
            name: _channel_timing(stats, declared_at)
            for name, stats in (("email", smtp_stats), ("webhook", webhook_stats))
        },
        "fanout_seconds": round(fanout_seconds, 3),
        "status_final_s": round(status_final_at - declared_at, 3) if status_final_at else None,
        "deliveries_per_second": round(received / fanout_seconds, 1) if fanout_seconds else 0.0,
        "cpu_ms_per_delivery": _per_item_ms(used["worker"], received),
        "database_cpu_ms_per_delivery": _per_item_ms(used["database"], received)
        if "database" in used
        else None,
        "api_cpu_ms_per_delivery": _per_item_ms(used["api"], received),
        "sink_cpu_ms_per_delivery": _sink_cpu_ms(cpu, webhook_stats["count"], smtp_stats["count"]),
        "sinks": {"email": _sink_check(smtp_stats), "webhook": _sink_check(webhook_stats)},
        "worker_pss_mb": round(sampler.peak_pss_kb / 1024, 1),
        "worker_max_rss_mb": round(sampler.max_rss_kb / 1024, 1),
        "worker_processes": sampler.max_processes,
        "machine": cpu,
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "max": None, "relative": None}
    middle = statistics.median(values)
    return {
        "min": min(values),
        "max": max(values),
        # (max - min) / median: 0.1 means the runs disagree by 10 % of the typical value.
        "relative": round((max(values) - min(values)) / middle, 3) if middle else None,
    }


def run(
    args: argparse.Namespace, tmp: Path, children: Children, backend_box: list[Backend]
) -> dict[str, Any]:
    n: int = args.members
    load_at_start = round(os.getloadavg()[0], 2)
    knobs = service_knobs(args)
    http = httpx.Client(timeout=30)
    service = start_service(args, tmp, children, backend_box, http)
    backend, sinks, api = service.backend, service.sinks, service.api
    assert service.worker is not None  # with_worker is the default
    assert service.beat is not None
    worker_roots = [child.process.pid for child in (service.worker, *service.extra_workers)]

    started = time.monotonic()
    created = import_members(api, n, sinks.webhook_base)
    import_seconds = time.monotonic() - started
    log(f"imported {created} members in {import_seconds:.1f}s")
    if created != n:
        raise BenchError(f"expected {n} new members, the import created {created}")

    components = Components(
        {
            "worker": worker_roots,
            "api": service.api_child.process.pid,
            "beat": service.beat.process.pid,
            "webhook_sink": sinks.webhook_pid,
            "smtp_sink": sinks.smtp_pid,
            **({"redis": backend.redis_pid} if backend.redis_pid else {}),
        }
    )
    database = None
    if backend.name.startswith("postgresql"):
        database = DatabaseCpu(backend.database_url)
        backend.cleanups.append(database.close)
        database.start()
    meter = Meter(components, database)
    cluster_before = cpu_seconds(pids_named(b"postgres")) if database else 0.0
    runs: list[dict[str, Any]] = []
    for index in range(args.runs):
        # Each system in each position once over three runs: a machine that gets busier
        # or quieter during the benchmark weighs on all three alike.
        order = SYSTEMS[index % 3 :] + SYSTEMS[: index % 3]
        result: dict[str, Any] = {"run": index + 1, "order": list(order)}
        for system in order:
            time.sleep(1)  # let the sinks, the beat and the ledger settle
            log(f"run {index + 1}/{args.runs}: {system}")
            if system == "worker":
                with profiling(
                    args.profile if index == 0 else None,
                    {"worker": service.worker.process.pid, "api": service.api_child.process.pid},
                    args.idle,
                ):
                    result[system] = worker_phase(
                        args, service, http, meter, worker_roots, children
                    )
                log(
                    f"worker: {result[system]['fanout_seconds']}s, "
                    f"{result[system]['cpu_ms_per_delivery']} ms/delivery"
                )
            else:
                kind = "library" if system == "library_baseline" else "floor"
                result[system] = baseline_phase(kind, args, sinks, http, meter)
                log(
                    f"{system}: {result[system]['seconds']}s, "
                    f"{result[system]['cpu_ms_per_delivery']} ms/delivery"
                )
        result["ratio"] = round(
            result["worker"]["deliveries_per_second"]
            / max(result["library_baseline"]["deliveries_per_second"], 1e-9),
            3,
        )
        runs.append(result)
    cluster_used = cpu_seconds(pids_named(b"postgres")) - cluster_before if database else None

    def series(path: tuple[str, ...]) -> list[float]:
        values = []
        for one in runs:
            value: Any = one
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, int | float):
                values.append(float(value))
        return values

    headline = {
        "fanout_seconds": ("worker", "fanout_seconds"),
        "deliveries_per_second": ("worker", "deliveries_per_second"),
        "declare_latency_s": ("worker", "declare_latency_s"),
        "declare_api_cpu_ms": ("worker", "declare_api_cpu_ms"),
        "ratio": ("ratio",),
        "worker_cpu_ms_per_delivery": ("worker", "cpu_ms_per_delivery"),
        "library_baseline_cpu_ms_per_delivery": ("library_baseline", "cpu_ms_per_delivery"),
        "protocol_floor_cpu_ms_per_delivery": ("protocol_floor", "cpu_ms_per_delivery"),
        "database_cpu_ms_per_delivery": ("worker", "database_cpu_ms_per_delivery"),
        "worker_pss_mb": ("worker", "worker_pss_mb"),
        "worker_max_rss_mb": ("worker", "worker_max_rss_mb"),
    }
    medians = {name: _median(series(path)) for name, path in headline.items()}
    worker_cpu = medians["worker_cpu_ms_per_delivery"]
    floor_cpu = medians["protocol_floor_cpu_ms_per_delivery"]
    busy = [
        {
            "run": one["run"],
            "system": system,
            "others_share": one[system]["machine"]["others_share"],
        }
        for one in runs
        for system in SYSTEMS
        if one[system]["machine"]["busy"]
    ]
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_1m_at_start": load_at_start,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            # Phases during which other processes used more than 10 % of the machine.
            "busy_phases": busy,
        },
        "backend": backend.name,
        "members": n,
        "workers": len(worker_roots),
        "receiver_latency_s": {"webhook": args.receiver_latency, "email": _smtp_latency(args)},
        # Medians over the runs.
        "fanout_seconds": medians["fanout_seconds"],
        "deliveries_per_second": medians["deliveries_per_second"],
        "declare_latency_s": medians["declare_latency_s"],
        "declare_api_cpu_ms": medians["declare_api_cpu_ms"],
        "ratio": medians["ratio"],
        "cpu_ms_per_delivery": {
            "worker": worker_cpu,
            "library_baseline": medians["library_baseline_cpu_ms_per_delivery"],
            "protocol_floor": floor_cpu,
            "database": medians["database_cpu_ms_per_delivery"],
        },
        "worker_vs_floor": round(worker_cpu / floor_cpu, 2) if worker_cpu and floor_cpu else None,
        "worker_pss_mb": medians["worker_pss_mb"],
        "worker_max_rss_mb": max(series(("worker", "worker_max_rss_mb")), default=None),
        "spread": {name: _spread(series(path)) for name, path in headline.items()},
        "import_seconds": round(import_seconds, 2),
        # Every postgres process of the machine (other databases too), over all the runs:
        # an upper bound for the server's share; `cpu_ms_per_delivery.database` is ours.
        "database_cluster_cpu_seconds": round(cluster_used, 2) if cluster_used else None,
        "runs": runs,
        "settings": {
            **knobs,
            "baselines": baseline_concurrency(args),
            "worker_pool": "prefork",
            "sweep_interval_seconds": DEFAULTS["sweep_interval_seconds"].default,
        },
    }


def _smtp_latency(args: argparse.Namespace) -> float:
    latency: float | None = getattr(args, "smtp_latency", None)
    return getattr(args, "receiver_latency", 0.0) if latency is None else latency


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
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the worker's event loop (RRMM_WORKER_EVENT_LOOP)",
    )
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
        "--runs", type=int, default=3, help="repeat worker and baselines, rotating the order"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (`rrmm worker`)")
    parser.add_argument(
        "--receiver-latency",
        type=float,
        default=0.0,
        help="seconds the sinks wait before answering a webhook or the end of an email",
    )
    parser.add_argument(
        "--smtp-latency", type=float, help="the SMTP sink's own latency (default: as above)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the worker and the API during the fan-out into DIR"
    )
    parser.add_argument("--idle", action="store_true", help="with --profile: wall time, not CPU")
    args = parser.parse_args(argv)
    check_service_arguments(parser, args)
    if args.members < 1:
        parser.error("--members must be at least 1")
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    if args.receiver_latency < 0 or (args.smtp_latency or 0) < 0:
        parser.error("latencies must not be negative")
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
    except (BenchError, NotReady) as exc:
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
