"""Shared pieces of the acknowledgement tests: members and incidents made through the API,
tokens computed for real ledger rows, the app on a real port, a real worker."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient
from kombu import Connection, Queue
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.broker import BEAT_QUEUE, SEND_QUEUE
from app.config import Settings
from app.deliveries.tokens import AckTokenSigner, signer_from_settings
from app.main import create_app
from app.models import Ack, Briefing, CurrentAck, Delivery, Role
from tests.support.factories import declare_body, member_payload
from tests.support.live_server import serve
from tests.support.sinks import SmtpSink
from tests.support.worker import WorkerProcess, worker_environment

# Every test app but the rate-limit ones: far above what a test sends from one address.
NO_LIMIT = "1000000/minute"
DEFAULT_RESPONSES = ["acknowledged", "will_engage", "unavailable", "need_briefing_call"]
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


class HttpResponse(Protocol):
    """What the tests read of a response, from httpx or from the TestClient's httpx."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    @property
    def request(self) -> Any: ...
    def json(self, **kwargs: Any) -> Any: ...


def ack_settings_from(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "ack_rate_limit": NO_LIMIT,
            "ack_link_rate_limit": NO_LIMIT,
            **update,
        }
    )


@pytest.fixture
def ack_settings(settings: Settings) -> Settings:
    return ack_settings_from(settings)


@pytest.fixture
def ack_client(ack_settings: Settings, client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory(base=ack_settings)


# ---------------------------------------------------------------------------- API helpers


def briefing(*languages: str) -> dict[str, Any]:
    return {
        language: {
            "subject": f"Subject ({language})",
            "body": f"Body ({language}).\n\nSecond paragraph.",
            "talking_points": [f"Point one ({language})"],
        }
        for language in languages
    }


@dataclass
class Api:
    """An operator's calls, through any httpx client (a TestClient or a real socket)."""

    client: httpx.Client | TestClient
    headers: dict[str, str]

    def member(
        self, *, webhook_url: str | None = None, email: bool = True, **overrides: Any
    ) -> dict[str, Any]:
        payload = member_payload(
            quiet_hours=None,  # removed: nothing waits for the morning
            email=None if not email else f"m.{uuid.uuid4().hex[:10]}@example.org",
            webhook_url=webhook_url,
            **overrides,
        )
        response = self.client.post("/v1/members", json=payload, headers=self.headers)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def declare(self, members: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
        body = declare_body(
            **{
                "audience": {"member_ids": [m["id"] for m in members]},
                "briefing": briefing("en", "fr", "ar"),
                **overrides,
            }
        )
        response = self.client.post("/v1/incidents", json=body, headers=self.headers)
        assert response.status_code == 202, response.text
        incident: dict[str, Any] = response.json()
        return incident

    def resolve(self, incident_id: str) -> dict[str, Any]:
        response = self.client.post(f"/v1/incidents/{incident_id}/resolve", headers=self.headers)
        assert response.status_code == 202, response.text
        incident: dict[str, Any] = response.json()
        return incident

    def history(self, incident_id: str, member_id: str) -> list[dict[str, Any]]:
        response = self.client.get(
            f"/v1/incidents/{incident_id}/members/{member_id}/acks", headers=self.headers
        )
        assert response.status_code == 200, response.text
        answers: list[dict[str, Any]] = response.json()
        return answers

    def current(self, incident_id: str, **params: Any) -> dict[str, Any]:
        response = self.client.get(
            f"/v1/incidents/{incident_id}/acks", params=params, headers=self.headers
        )
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page


@pytest.fixture
def api(ack_client: TestClient, auth: Callable[[Role], dict[str, str]]) -> Api:
    return Api(ack_client, auth(Role.OPERATOR))


# ---------------------------------------------------------------------------- ledger and tokens


def delivery_of(
    session_factory: sessionmaker[Session],
    incident: dict[str, Any],
    member: dict[str, Any],
    *,
    channel: str = "email",
    version: int = 1,
) -> Delivery:
    with session_factory() as session:
        delivery = session.scalar(
            select(Delivery)
            .join(Briefing, Briefing.id == Delivery.briefing_id)
            .where(
                Delivery.incident_id == uuid.UUID(incident["id"]),
                Delivery.member_id == uuid.UUID(member["id"]),
                Delivery.channel == channel,
                Briefing.version == version,
            )
        )
        assert delivery is not None, (incident["id"], member["id"], channel, version)
        return delivery


def sign(
    settings_or_signer: Settings | AckTokenSigner,
    delivery_id: int,
    expires_at: datetime | None = None,
) -> str:
    signer = (
        settings_or_signer
        if isinstance(settings_or_signer, AckTokenSigner)
        else signer_from_settings(settings_or_signer)
    )
    return signer.sign(delivery_id, expires_at or datetime.now(UTC) + timedelta(days=30))


def token_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def acks_of(session_factory: sessionmaker[Session], member_id: str | None = None) -> list[Ack]:
    """The stored history (a fresh session: no stale snapshot)."""
    with session_factory() as session:
        query = select(Ack).order_by(Ack.id)
        if member_id is not None:
            query = query.where(Ack.member_id == uuid.UUID(member_id))
        return list(session.scalars(query))


def current_of(session_factory: sessionmaker[Session], member_id: str) -> list[CurrentAck]:
    with session_factory() as session:
        return list(
            session.scalars(select(CurrentAck).where(CurrentAck.member_id == uuid.UUID(member_id)))
        )


def count_acks(session_factory: sessionmaker[Session]) -> tuple[int, int]:
    """(rows of history, current answers)."""
    with session_factory() as session:
        history = session.scalar(select(func.count()).select_from(Ack)) or 0
        current = session.scalar(select(func.count()).select_from(CurrentAck)) or 0
        return history, current


# ---------------------------------------------------------------------------- live app, worker


@dataclass
class Live:
    settings: Settings
    url: str


@pytest.fixture
def live(settings: Settings, engine: Any) -> Iterator[Live]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """The app on a real 127.0.0.1 port, its `public_url` pointing there (so the links the
    worker writes into emails and webhooks lead to it)."""
    built: list[Settings] = []

    def make_app(base_url: str) -> Any:
        built.append(ack_settings_from(settings, public_url=base_url))
        return create_app(built[0])

    with serve(make_app) as url:
        yield Live(built[0], url)


@pytest.fixture
def live_api(live: Live, auth: Callable[[Role], dict[str, str]]) -> Iterator[Api]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield Api(client, auth(Role.OPERATOR))


@pytest.fixture
def live_worker(live: Live, smtp: SmtpSink, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A real worker (with beat) whose links point at the live app."""
    with Connection(live.settings.broker_url) as connection:
        for queue in (SEND_QUEUE, BEAT_QUEUE):
            Queue(queue).bind(connection.default_channel).purge()
    env = worker_environment(live.settings, smtp_port=smtp.port, var_dir=tmp_path / "worker")
    process = WorkerProcess(env).start()
    try:
        yield process
    finally:
        process.stop()
