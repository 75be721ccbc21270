"""`rrmm watch` against the app on a real socket: the figures it prints are the API's."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from app.acks.service import record
from app.cli.main import cli
from app.cli.watch import Grouping, StatusClient, is_settled
from app.config import Settings
from app.db import session_scope
from app.deliveries import ledger
from app.deliveries.tokens import signer_from_settings
from app.main import create_app
from app.models import Delivery, Role
from app.models.base import utcnow
from app.vocabulary import DeliveryStatus
from tests.support.factories import briefing, declare_body, member_payload
from tests.support.live_server import serve

PEOPLE = [  # (network, country, languages)
    ("editors", "MA", ["ar", "fr"]),
    ("editors", "FR", ["fr"]),
    ("personalities", "GB", ["en"]),
]


@pytest.fixture
def base_url(settings: Settings, engine: Any) -> Iterator[str]:  # noqa: ARG001 (requested for its effect: a migrated database)
    # Quiet: the server runs in this process, and its access log would mix with the output.
    quiet = settings.model_copy(update={"log_level": "WARNING"})
    with serve(lambda _url: create_app(quiet)) as url:
        yield url


@pytest.fixture
def viewer_key(api_keys: dict[Role, str]) -> str:
    return api_keys[Role.VIEWER]


@pytest.fixture
def incident(base_url: str, api_keys: dict[Role, str]) -> dict[str, Any]:
    """An exercise to three email members, with two quotas."""
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {api_keys[Role.OPERATOR]}"}
    ) as api:
        members = []
        for n, (network, country, languages) in enumerate(PEOPLE):
            response = api.post(
                "/v1/members",
                json=member_payload(
                    network=network,
                    country=country,
                    languages=languages,
                    email=f"watch{n}.{uuid.uuid4().hex[:6]}@example.org",
                    quiet_hours=None,
                ),
            )
            assert response.status_code == 201, response.text
            members.append(response.json())
        response = api.post(
            "/v1/incidents",
            json=declare_body(
                mode="exercise",
                audience={"member_ids": [m["id"] for m in members]},
                briefing=briefing(en="", fr="", ar=""),
                followup={
                    "quotas": [
                        {"network": "editors", "responses": ["will_engage"], "min": 1},
                        {"network": "personalities", "responses": ["will_engage"], "min": 1},
                    ]
                },
            ),
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
    body["members"] = members
    return body


def _delivery_id(session: Session, incident: dict[str, Any], member: dict[str, Any]) -> int:
    delivery_id = session.scalar(
        select(Delivery.id).where(
            Delivery.incident_id == uuid.UUID(incident["id"]),
            Delivery.member_id == uuid.UUID(member["id"]),
        )
    )
    assert delivery_id is not None
    return delivery_id


def move(
    session_factory: sessionmaker[Session],
    incident: dict[str, Any],
    member: dict[str, Any],
    to_status: str,
) -> None:
    """What a worker would do: the delivery leaves `pending` (counters follow)."""
    with session_scope(session_factory) as session:
        assert ledger.transition(
            session,
            where=Delivery.id == _delivery_id(session, incident, member),
            from_status=DeliveryStatus.PENDING,
            to_status=to_status,
            values={"sent_at": utcnow()} if to_status == DeliveryStatus.SENT else {},
            now=utcnow(),
        )


def answer(
    session_factory: sessionmaker[Session],
    settings: Settings,
    incident: dict[str, Any],
    member: dict[str, Any],
    response: str,
) -> None:
    signer = signer_from_settings(settings)
    with session_scope(session_factory) as session:
        token = signer.sign(_delivery_id(session, incident, member), utcnow() + timedelta(days=1))
        record(session, signer, token, response=response, comment=None, route="api")


@pytest.fixture
def run() -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
        base: dict[str, str | None] = {"RRMM_API_KEY": None, "RRMM_URL": None, "COLUMNS": "100"}
        return runner.invoke(cli, ["watch", *args], env={**base, **(env or {})})

    return invoke


def squeeze(text: str) -> str:
    """The frame without its box drawing, one space between words."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


# --- one frame -----------------------------------------------------------------------------


def test_once_prints_the_real_figures(
    run, base_url, viewer_key, incident, session_factory, settings
):
    first, second, third = incident["members"]
    move(session_factory, incident, first, DeliveryStatus.SENT)
    move(session_factory, incident, second, DeliveryStatus.SENT)
    move(session_factory, incident, third, DeliveryStatus.FAILED)
    answer(session_factory, settings, incident, first, "will_engage")
    answer(session_factory, settings, incident, second, "acknowledged")

    result = run(
        incident["reference"],
        "--once",
        "--url",
        base_url,
        "--key",
        viewer_key,
        "--by",
        "language",
        "--by",
        "channel",
    )

    assert result.exit_code == 0, (result.stdout, result.stderr)
    shown = squeeze(result.stdout)
    assert incident["reference"] in shown
    assert "EXERCISE" in shown
    assert "targeted 3 " in shown
    assert "status mobilizing" in shown or "status active" in shown
    assert "severity severe" in shown
    # Deliveries: one email each, two sent and one failed, all final.
    assert re.search(r"email (\S+ )?3/3 sent 2 · failed 1", shown), shown
    assert re.search(r"all (\S+ )?3/3 sent 2 · failed 1", shown), shown
    assert "Answers 2/3 ack rate 66.7%" in shown
    assert re.search(r"will_engage 1 ", shown)
    assert re.search(r"acknowledged 1 ", shown)
    # Coverage by language: the language each member was sent (ar, fr, en).
    assert re.search(r"Coverage by language language targeted sent failed answered", shown)
    assert re.search(r" ar 1 1 0 1 ", shown), shown
    assert re.search(r" en 1 0 1 0 ", shown), shown
    assert re.search(r" fr 1 1 0 1 ", shown), shown
    assert re.search(r" email 3 2 1 2 ", shown), shown
    # Quotas: editors will_engage 1/1 met; personalities 0/1 unmet.
    assert re.search(r"editors → will_engage 1/1 (\S+ )?met", shown), shown
    assert re.search(r"personalities → will_engage 0/1 (\S+ )?unmet", shown), shown
    assert "reminders 0 escalations 0" in shown
    assert viewer_key not in result.stdout + result.stderr


def test_an_incident_by_id_and_the_key_from_the_environment(run, base_url, viewer_key, incident):
    result = run(incident["id"], "--once", env={"RRMM_URL": base_url, "RRMM_API_KEY": viewer_key})

    assert result.exit_code == 0, (result.stdout, result.stderr)
    shown = squeeze(result.stdout)
    assert incident["reference"] in shown
    assert "targeted 3 " in shown
    assert re.search(r"all (\S+ )?0/3 pending 3", shown), shown
    assert "no answer yet" in shown
    assert "Coverage by language" in shown  # the default grouping
    assert viewer_key not in result.stdout + result.stderr


def test_a_reference_is_matched_exactly_and_case_insensitively(run, base_url, viewer_key, incident):
    result = run(incident["reference"].lower(), "--once", "--url", base_url, "--key", viewer_key)

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert incident["reference"] in result.stdout


def test_until_settled_returns_once_every_delivery_is_final(
    run, base_url, viewer_key, incident, session_factory
):
    for member in incident["members"]:
        move(session_factory, incident, member, DeliveryStatus.SENT)

    result = run(
        incident["reference"],
        "--until-settled",
        "--interval",
        "0.2",
        "--url",
        base_url,
        "--key",
        viewer_key,
    )

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert re.search(r"all (\S+ )?3/3 sent 3", squeeze(result.stdout))


# --- polling -------------------------------------------------------------------------------


def test_polling_rereads_only_a_changed_status(
    base_url, viewer_key, incident, session_factory, settings
):
    with StatusClient(base_url, viewer_key, groupings=(Grouping.channel,)) as client:
        client.resolve(incident["reference"])
        assert client.incident_id == uuid.UUID(incident["id"])
        assert client.poll() is True  # first read
        assert client.etag
        assert not is_settled(client.status or {})
        etag = client.etag

        assert client.poll() is False  # If-None-Match → 304: nothing changed
        assert client.etag == etag

        first = incident["members"][0]
        move(session_factory, incident, first, DeliveryStatus.SENT)
        answer(session_factory, settings, incident, first, "will_engage")
        assert client.poll() is True
        assert client.etag != etag
        assert client.status is not None
        assert client.status["answers"]["answered"] == 1
        assert client.coverage[Grouping.channel] == [
            {"group": "email", "targeted": 3, "sent": 1, "failed": 0, "answered": 1}
        ]


# --- errors --------------------------------------------------------------------------------


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_refused_key_is_one_clear_line(run, base_url, incident):
    bad = "rrmm_" + "x" * 43
    result = run(incident["reference"], "--once", "--url", base_url, "--key", bad)

    line = one_line_error(result)
    assert result.exit_code == 1
    assert "401" in line
    assert "API key" in line
    assert bad not in result.stdout + result.stderr


def test_no_key_at_all(run, base_url, incident):
    result = run(incident["reference"], "--once", "--url", base_url)

    line = one_line_error(result)
    assert result.exit_code == 2
    assert "API key is required" in line


@pytest.mark.usefixtures("engine")
def test_an_unknown_incident_id_is_a_404(run, base_url, viewer_key):
    missing = str(uuid.uuid4())
    result = run(missing, "--once", "--url", base_url, "--key", viewer_key)

    line = one_line_error(result)
    assert result.exit_code == 1
    assert f"no incident {missing}" in line
    assert "404" in line


@pytest.mark.usefixtures("incident")
def test_an_unknown_reference(run, base_url, viewer_key):
    result = run("RRMM-2099-9999", "--once", "--url", base_url, "--key", viewer_key)

    line = one_line_error(result)
    assert "no incident RRMM-2099-9999" in line


@pytest.mark.usefixtures("engine")
def test_something_that_is_neither_an_id_nor_a_reference(run, base_url, viewer_key):
    result = run("cartoons", "--once", "--url", base_url, "--key", viewer_key)

    line = one_line_error(result)
    assert "neither an incident id" in line


def test_connection_refused(run, viewer_key):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = run(
            "RRMM-2026-0001", "--once", "--url", f"http://127.0.0.1:{port}", "--key", viewer_key
        )

    line = one_line_error(result)
    assert result.exit_code == 1
    assert "connection refused" in line
    assert viewer_key not in result.stdout + result.stderr


@pytest.mark.usefixtures("engine")
def test_a_declaration_waiting_for_approval_shows_as_pending(run, settings, api_keys):
    """Under the two-person rule the watcher shows the pending state, nothing targeted."""
    pending = settings.model_copy(
        update={"log_level": "WARNING", "approval_severities": ["severe", "extreme"]}
    )
    operator = {"Authorization": f"Bearer {api_keys[Role.OPERATOR]}"}
    with (
        serve(lambda _url: create_app(pending)) as url,
        httpx.Client(base_url=url, headers=operator) as api,
    ):
        member = api.post("/v1/members", json=member_payload(quiet_hours=None))
        assert member.status_code == 201, member.text
        response = api.post(
            "/v1/incidents", json=declare_body(audience={"member_ids": [member.json()["id"]]})
        )
        assert response.status_code == 202, response.text
        incident = response.json()
        assert incident["status"] == "pending_approval"
        result = run(incident["reference"], "--once", "--url", url, "--key", api_keys[Role.VIEWER])

    assert result.exit_code == 0, (result.stdout, result.stderr)
    shown = squeeze(result.stdout)
    assert "status pending_approval" in shown
    assert "targeted 0 " in shown
