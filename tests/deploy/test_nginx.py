"""The nginx example (deploy/nginx/rrmm.conf), run for real: checked by `nginx -t`, then
started on loopback in front of a real API, with TLS, and used as members and dashboards
use it. The client address the ack rate limits see is the real client's, not nginx's.

nginx runs in the foreground with its own prefix and pid file in a temporary directory,
never as a system service and never on port 80.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app
from app.models import Role
from app.netutil import free_port
from app.serving import uvicorn_options
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign
from tests.support.factories import assert_problem
from tests.support.live_server import serve

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (`make deploy-tools` installs Debian's)"
)

CONFIG = Path(__file__).parents[2] / "deploy" / "nginx" / "rrmm.conf"
PROXY = "127.0.0.2"  # nginx listens here and connects to the API from here
FLOODER = "127.0.0.3"
MEMBER = "127.0.0.4"
JUNK = "A" * 42


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for rrmm.example.org and 127.0.0.2, its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rrmm.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("rrmm.example.org"), x509.IPAddress(ipaddress.ip_address(PROXY))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def substitute(text: str, pattern: str, replacement: str) -> str:
    """Replace exactly one match: if the shipped file changes shape, the test says so
    instead of silently testing something else."""
    new, count = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx/rrmm.conf: expected one match of {pattern!r}, got {count}"
    return new


@dataclass(frozen=True)
class Nginx:
    https: str  # https://127.0.0.2:<port>
    http: str  # http://127.0.0.2:<port>
    ca_file: Path
    prefix: Path

    def client(self, local_address: str) -> httpx.Client:
        """A client whose connections come from `local_address`, trusting the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        transport = httpx.HTTPTransport(local_address=local_address, verify=context)
        return httpx.Client(base_url=self.https, transport=transport, timeout=30)


def prepare(prefix: Path, upstream: str) -> tuple[Path, Nginx]:
    """The shipped file with loopback ports, test certificates and a temporary prefix,
    wrapped in a main configuration of our own (foreground, pid and logs in `prefix`)."""
    prefix.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(prefix)
    http_port, https_port = free_port(PROXY), free_port(PROXY)
    site = CONFIG.read_text()
    site = substitute(
        site,
        r"^    server 10\.0\.1\.10:8000;\n    server 10\.0\.1\.11:8000;$",
        f"    server {upstream};",
    )
    site = substitute(site, r"^    listen 80;$", f"    listen {PROXY}:{http_port};")
    site = substitute(site, r"^    listen \[::\]:80;\n", "")
    site = substitute(
        site, r"^    listen 443 ssl http2;$", f"    listen {PROXY}:{https_port} ssl http2;"
    )
    site = substitute(site, r"^    listen \[::\]:443 ssl http2;\n", "")
    site = substitute(site, r"/etc/letsencrypt/live/rrmm\.example\.org/fullchain\.pem", str(cert))
    site = substitute(site, r"/etc/letsencrypt/live/rrmm\.example\.org/privkey\.pem", str(key))
    site = substitute(site, r"/var/log/nginx/rrmm\.access\.log", str(prefix / "access.log"))
    (prefix / "rrmm.conf").write_text(site)
    # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's 0700
    # temporary directories; as anyone else the directive is ignored.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = prefix / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"{temp}\n"
        # Connections to the API leave from the proxy's own address, the one that
        # RRMM_TRUSTED_PROXIES lists (not 127.0.0.1, which everything on the host shares).
        f"    proxy_bind {PROXY};\n"
        f"    include {prefix / 'rrmm.conf'};\n"
        "}\n"
    )
    return main, Nginx(f"https://{PROXY}:{https_port}", f"http://{PROXY}:{http_port}", cert, prefix)


def nginx_argv(main: Path, prefix: Path, *extra: str) -> list[str]:
    assert NGINX is not None
    return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(main), *extra]


@contextmanager
def running(main: Path, nginx: Nginx) -> Iterator[Nginx]:
    """nginx in the foreground until the block ends (stopped by its own pid)."""
    log = (nginx.prefix / "stderr.log").open("wb")
    process = subprocess.Popen(nginx_argv(main, nginx.prefix), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (nginx.prefix / "stderr.log").read_text()
            try:
                with socket.create_connection((PROXY, int(nginx.https.rsplit(":", 1)[1])), 1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield nginx
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def live_api(settings: Settings) -> Any:
    """The app behind a real uvicorn with the options `rrmm api` uses."""
    return serve(lambda _: create_app(settings), **uvicorn_options(settings))


@dataclass(frozen=True)
class Briefed:
    incident: dict[str, Any]
    token: str
    viewer: dict[str, str]


@pytest.fixture
def briefed(
    settings: Settings,
    engine: Any,  # noqa: ARG001 (requested for its effect: a migrated database)
    auth: Callable[[Role], dict[str, str]],
    session_factory: sessionmaker[Session],
) -> Briefed:
    """One member's email delivery of a declared incident, and its ack token."""
    with TestClient(create_app(ack_settings_from(settings))) as client:
        api = Api(client, auth(Role.OPERATOR))
        person = api.member()
        incident = api.declare([person])
    token = sign(settings, delivery_of(session_factory, incident, person).id)
    return Briefed(incident, token, auth(Role.VIEWER))


def behind_nginx(settings: Settings, **update: Any) -> Settings:
    return ack_settings_from(settings, trusted_proxies=[ip_network(f"{PROXY}/32")], **update)


def test_nginx_accepts_the_shipped_configuration(tmp_path: Path) -> None:
    main, nginx = prepare(tmp_path / "nginx", "127.0.0.1:8000")
    result = subprocess.run(
        nginx_argv(main, nginx.prefix, "-t"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "test is successful" in result.stderr


def test_members_and_dashboards_reach_the_api_through_nginx(
    settings: Settings, briefed: Briefed, tmp_path: Path
) -> None:
    incident_id = briefed.incident["id"]
    with live_api(behind_nginx(settings)) as url:
        main, nginx = prepare(tmp_path / "nginx", url.removeprefix("http://"))
        with running(main, nginx), nginx.client(MEMBER) as member:
            # Plain HTTP only redirects to HTTPS.
            with httpx.Client(transport=httpx.HTTPTransport(local_address=MEMBER)) as plain:
                redirect = plain.get(f"{nginx.http}/ack/{briefed.token}")
            assert redirect.status_code == 301
            assert redirect.headers["location"].startswith("https://")

            page = member.get(f"/ack/{briefed.token}")
            assert page.status_code == 200, page.text
            assert briefed.incident["reference"] in page.text
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            answered = member.post(f"/ack/{briefed.token}", data={"response": "will_engage"})
            assert answered.status_code == 200, answered.text
            assert briefed.incident["reference"] in answered.text

            board = member.get(f"/board/incidents/{incident_id}")
            assert board.status_code == 200
            assert "text/html" in board.headers["content-type"]
            status = member.get(f"/v1/incidents/{incident_id}/status", headers=briefed.viewer)
            assert status.status_code == 200, status.text
            assert status.json()["answers"]["by_response"] == {"will_engage": 1}

            # The event stream is not buffered: its first event arrives while it stays open.
            with member.stream(
                "GET", f"/v1/incidents/{incident_id}/events", headers=briefed.viewer
            ) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("event:")) == "event: status"

            # /metrics is for Prometheus on the private network, not the public side.
            assert member.get("/metrics").status_code == 404
        access_log = (nginx.prefix / "access.log").read_text()
    assert access_log.count(MEMBER) >= 5
    assert briefed.token not in access_log  # no ack token in nginx's log


def test_the_ack_rate_limits_see_the_real_client_through_nginx(
    settings: Settings, briefed: Briefed, tmp_path: Path
) -> None:
    with live_api(behind_nginx(settings, ack_rate_limit="5/minute")) as url:
        main, nginx = prepare(tmp_path / "nginx", url.removeprefix("http://"))
        with running(main, nginx), nginx.client(FLOODER) as flooder, nginx.client(MEMBER) as member:
            for _ in range(5):
                junk = flooder.post("/v1/acks", json={"token": JUNK, "response": "acknowledged"})
                assert junk.status_code == 404, junk.text
            assert_problem(
                flooder.post("/v1/acks", json={"token": JUNK, "response": "acknowledged"}), 429
            )
            # nginx appends the real peer to whatever the flooder claims: still the flooder.
            spoofed = flooder.post(
                "/v1/acks",
                json={"token": JUNK, "response": "acknowledged"},
                headers={"X-Forwarded-For": MEMBER},
            )
            assert_problem(spoofed, 429)
            # Another client of the same nginx has its own budget: nginx's address is not
            # everyone's address.
            other = member.post("/v1/acks", json={"token": JUNK, "response": "acknowledged"})
            assert other.status_code == 404, other.text
            recorded = member.post(
                "/v1/acks", json={"token": briefed.token, "response": "acknowledged"}
            )
            assert recorded.status_code == 200, recorded.text
