"""Nothing secret in the logs, even when a request fails inside the database: our error
log and uvicorn's own "Exception in ASGI application" record carry the route template,
never the ack token, the comment, the member's email or the client's address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.logging import scrub_text
from app.main import create_app
from app.models import Role
from app.serving import uvicorn_options
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign
from tests.support.live_server import serve

CLIENT = "127.0.0.5"  # a distinctive client address, to look for in the logs


@contextmanager
def acks_table_missing(engine: Engine) -> Iterator[None]:
    """The table an answer is written to is gone (in this run's own scratch database)."""
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE acks RENAME TO acks_elsewhere"))
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE acks_elsewhere RENAME TO acks"))


def test_a_database_error_on_an_ack_route_logs_no_token_comment_or_address(
    settings: Settings,
    engine: Engine,
    auth: Callable[[Role], dict[str, str]],
    session_factory: sessionmaker[Session],
    capfd: pytest.CaptureFixture[str],
) -> None:
    app_settings = ack_settings_from(settings)
    with TestClient(create_app(app_settings)) as client:
        api = Api(client, auth(Role.OPERATOR))
        person = api.member()
        incident = api.declare([person])
    token = sign(settings, delivery_of(session_factory, incident, person).id)
    comment = f"private-comment-{uuid.uuid4().hex}"
    capfd.readouterr()

    transport = httpx.HTTPTransport(local_address=CLIENT)
    with (
        serve(lambda _: create_app(app_settings), **uvicorn_options(app_settings)) as url,
        httpx.Client(base_url=url, transport=transport, timeout=30) as http,
        acks_table_missing(engine),
    ):
        # One connection per request: uvicorn closes a connection whose request raised.
        close = {"Connection": "close"}
        form = http.post(
            f"/ack/{token}", data={"response": "acknowledged", "comment": comment}, headers=close
        )
        api_answer = http.post(
            "/v1/acks",
            json={"token": token, "response": "acknowledged", "comment": comment},
            headers=close,
        )
    assert form.status_code == 500
    assert api_answer.status_code == 500
    assert api_answer.headers["content-type"] == "application/problem+json"

    logs = "".join(capfd.readouterr())
    # The failures were logged, by us and by uvicorn, with their tracebacks...
    assert '"event": "unhandled_error"' in logs
    assert '"path": "/ack/{token}"' in logs
    assert '"path": "/v1/acks"' in logs
    assert "Exception in ASGI application" in logs
    assert "no such table: acks" in logs or 'relation \\"acks\\" does not exist' in logs
    assert "Traceback" in logs
    # ...and nothing that identifies the member or opens their link.
    for needle in (token, token[:20], comment, person["email"], CLIENT):
        assert needle not in logs, needle


def test_free_text_in_logs_loses_tokens_keys_and_sql_parameters() -> None:
    token = "b" * 21 + "C" * 21
    line = (
        f"GET /ack/{token}?x=1 failed; key rrmm_{'k' * 43}; bare {token}.\n"
        "[SQL: INSERT INTO acks (comment) VALUES (?)]\n[parameters: ('my secret comment',)]"
    )
    scrubbed = scrub_text(line)
    assert token not in scrubbed
    assert "rrmm_kkkk" not in scrubbed
    assert "my secret comment" not in scrubbed
    assert "/ack/{token}?x=1" in scrubbed
    assert "INSERT INTO acks" in scrubbed  # the statement itself stays: it is the clue


@pytest.mark.usefixtures("engine")
def test_comment_rules_are_the_same_on_the_page_and_the_json_route(
    settings: Settings,
    auth: Callable[[Role], dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    with TestClient(create_app(ack_settings_from(settings))) as client:
        api = Api(client, auth(Role.OPERATOR))
        person = api.member()
        incident = api.declare([person])
        token = sign(settings, delivery_of(session_factory, incident, person).id)
        for bad in ("nul \x00 byte", "bell \x07", "escape \x1b[31m"):
            page = client.post(f"/ack/{token}", data={"response": "acknowledged", "comment": bad})
            assert page.status_code == 422, page.text
            assert page.headers["content-type"].startswith("text/html")
            # The reason sits next to the comment field, which is marked invalid.
            assert 'id="comment-error"' in page.text
            assert "comment: must not contain control characters" in page.text
            assert 'aria-describedby="comment-error"' in page.text
            posted = client.post(
                "/v1/acks", json={"token": token, "response": "acknowledged", "comment": bad}
            )
            assert posted.status_code == 422, posted.text
            assert posted.json()["errors"][0]["field"] == "body.comment"
        # Line breaks are not control characters here: a comment may have paragraphs.
        fine = client.post(
            f"/ack/{token}", data={"response": "acknowledged", "comment": "line one\r\nline two"}
        )
        assert fine.status_code == 200, fine.text
        # A bad comment with an invalid link: the invalid-link page, not a 500.
        invalid = client.post(f"/ack/{'A' * 42}", data={"response": "x", "comment": "\x00"})
        assert invalid.status_code == 404


@pytest.mark.usefixtures("engine")
def test_rrmm_api_logs_no_raw_path_query_or_peer_address(
    settings: Settings, tmp_path: Path
) -> None:
    """`rrmm api` as deployed: uvicorn's own access lines (raw path, query string, peer
    address) are replaced by ours, and its records are rendered like ours."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}
    env |= {
        "RRMM_MODE": "production",
        "RRMM_DATABASE_URL": settings.database_url,
        "RRMM_BROKER_URL": settings.broker_url,
        "RRMM_SECRET_KEY": settings.secret,
        "RRMM_VAR_DIR": str(tmp_path),
        "RRMM_LOG_FORMAT": "json",
    }
    token = sign(settings, 123456)
    email = f"hidden.{uuid.uuid4().hex[:8]}@example.org"
    api = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        transport = httpx.HTTPTransport(local_address=CLIENT, retries=0)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "rrmm api did not start"
                    time.sleep(0.1)
            assert http.get(f"/ack/{token}?email={email}").status_code == 404
            assert http.get(f"/v1/members?q={email}").status_code == 401
    finally:
        api.terminate()
        output, _ = api.communicate(timeout=30)
    logs = output.decode()
    assert '"path": "/ack/{token}"' in logs  # our access log ran
    assert "Uvicorn running on" in logs  # uvicorn's records come through, as JSON
    for needle in (token, email, CLIENT, "?email", "?q="):
        assert needle not in logs, needle
