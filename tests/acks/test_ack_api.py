"""`POST /v1/acks` (the newsroom systems' route, the token as credential) and the
operators' view of the answers: provenance, history, filters, concurrency, limits."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.models import Role
from app.netutil import wait_until
from tests.acks.conftest import (
    DEFAULT_RESPONSES,
    Api,
    Live,
    ack_settings_from,
    acks_of,
    count_acks,
    current_of,
    delivery_of,
    sign,
)
from tests.support.factories import assert_problem, make_client
from tests.support.sinks import WebhookReceiver
from tests.support.worker import WorkerProcess

client_for = contextmanager(make_client)


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def briefed_token(
    api: Api, settings: Settings, session_factory: sessionmaker[Session], **member: Any
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """One member, one incident, the token of the member's email delivery."""
    person = api.member(**member)
    incident = api.declare([person])
    token = sign(settings, delivery_of(session_factory, incident, person).id)
    return incident, person, token


def test_an_answer_is_recorded_with_its_provenance_and_repeating_it_is_harmless(
    ack_client: TestClient,
    api: Api,
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    incident, member, token = briefed_token(
        api, ack_settings, session_factory, languages=["fr-CA", "en"]
    )
    delivery = delivery_of(session_factory, incident, member)
    before = datetime.now(UTC)

    # No API key: the token is the credential.
    first = ack_client.post(
        "/v1/acks", json={"token": token, "response": "will_engage", "comment": "Édito à 8h"}
    )
    assert first.status_code == 200, first.text
    receipt = first.json()
    assert receipt["incident"] == incident["reference"]
    assert (receipt["response"], receipt["late"], receipt["briefing_version"]) == (
        "will_engage",
        False,
        1,
    )
    assert before - timedelta(seconds=1) <= instant(receipt["answered_at"]) <= datetime.now(UTC)
    assert set(receipt) == {"incident", "response", "answered_at", "late", "briefing_version"}

    [answer] = api.history(incident["id"], member["id"])
    assert answer["route"] == "api"
    assert answer["channel"] == "email"
    assert answer["language"] == "fr"  # the language the member was briefed in
    assert answer["briefing_version"] == 1
    assert answer["comment"] == "Édito à 8h"
    assert answer["late"] is False
    assert instant(answer["answered_at"]) == instant(receipt["answered_at"])
    expected_delay = (instant(answer["answered_at"]) - delivery.created_at).total_seconds()
    assert answer["delay_seconds"] == pytest.approx(max(expected_delay, 0.0), abs=0.01)
    assert answer["delay_seconds"] >= 0

    # The same answer again: accepted, kept in the history, still one current answer.
    again = ack_client.post("/v1/acks", json={"token": token, "response": "will_engage"})
    assert again.status_code == 200, again.text
    assert count_acks(session_factory) == (2, 1)
    # A different answer replaces the current one; the history keeps all three.
    changed = ack_client.post("/v1/acks", json={"token": token, "response": "unavailable"})
    assert changed.status_code == 200, changed.text
    history = api.history(incident["id"], member["id"])
    assert [a["response"] for a in history] == ["will_engage", "will_engage", "unavailable"]
    assert [a["id"] for a in history] == sorted(a["id"] for a in history)
    [current] = api.current(incident["id"])["items"]
    assert current["answer"]["id"] == history[-1]["id"]
    assert current["answer"]["response"] == "unavailable"
    assert instant(current["first_answered_at"]) == instant(history[0]["answered_at"])
    assert [c.response for c in current_of(session_factory, member["id"])] == ["unavailable"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"response": "launch_the_campaign"}, "response"),
        ({"response": "Will_Engage"}, "response"),
        ({"response": ""}, "response"),
        ({"response": "x" * 41}, "response"),
        ({}, "response"),
        ({"response": "will_engage", "comment": "x" * 2001}, "comment"),
        ({"response": "will_engage", "member_id": str(uuid.uuid4())}, "member_id"),
    ],
    ids=["unknown", "case", "empty", "too-long", "missing", "comment", "extra-field"],
)
def test_an_answer_the_incident_does_not_allow_is_a_422_naming_the_field(
    ack_client: TestClient,
    api: Api,
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
    body: dict[str, Any],
    field: str,
) -> None:
    _incident, _member, token = briefed_token(api, ack_settings, session_factory)
    response = ack_client.post("/v1/acks", json={"token": token, **body})
    assert_problem(response, 422, field)
    assert count_acks(session_factory) == (0, 0)


def test_an_incidents_own_answers_replace_the_defaults(
    ack_client: TestClient,
    api: Api,
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    member = api.member(languages=["en"])
    incident = api.declare([member], responses=["will_publish", "declined"])
    assert incident["responses"] == ["will_publish", "declined"]
    token = sign(ack_settings, delivery_of(session_factory, incident, member).id)

    page = ack_client.get(f"/ack/{token}")
    assert page.status_code == 200
    assert 'name="response" value="will_publish"' in page.text
    assert 'name="response" value="declined"' in page.text
    assert "Will publish" in page.text
    assert "Declined" in page.text
    assert 'value="will_engage"' not in page.text

    for default in DEFAULT_RESPONSES:
        refused = ack_client.post("/v1/acks", json={"token": token, "response": default})
        assert_problem(refused, 422, "response")
        form = ack_client.post(f"/ack/{token}", data={"response": default})
        assert form.status_code == 422
    assert count_acks(session_factory) == (0, 0)

    accepted = ack_client.post("/v1/acks", json={"token": token, "response": "will_publish"})
    assert accepted.status_code == 200, accepted.text
    form = ack_client.post(f"/ack/{token}", data={"response": "declined"})
    assert form.status_code == 200, form.text
    assert "Declined" in form.text
    history = api.history(incident["id"], member["id"])
    assert [(a["response"], a["route"]) for a in history] == [
        ("will_publish", "api"),
        ("declined", "page"),
    ]


def test_an_answer_after_the_incident_ended_is_kept_and_flagged_late(
    ack_client: TestClient,
    api: Api,
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    incident, member, token = briefed_token(api, ack_settings, session_factory, languages=["en"])
    on_time = ack_client.post("/v1/acks", json={"token": token, "response": "acknowledged"})
    assert on_time.status_code == 200
    assert on_time.json()["late"] is False

    resolved = api.resolve(incident["id"])
    assert resolved["status"] == "resolved"
    assert resolved["ended_at"]

    late = ack_client.post("/v1/acks", json={"token": token, "response": "will_engage"})
    assert late.status_code == 200, late.text
    assert late.json()["late"] is True
    assert late.json()["briefing_version"] == 1
    form = ack_client.post(f"/ack/{token}", data={"response": "unavailable"})
    assert form.status_code == 200, form.text
    assert "The incident had already ended" in form.text

    history = api.history(incident["id"], member["id"])
    assert [(a["response"], a["late"]) for a in history] == [
        ("acknowledged", False),
        ("will_engage", True),
        ("unavailable", True),
    ]
    assert all(instant(a["answered_at"]) >= instant(resolved["ended_at"]) for a in history[1:])
    [current] = api.current(incident["id"])["items"]
    assert (current["answer"]["response"], current["answer"]["late"]) == ("unavailable", True)


def test_operators_filter_and_page_through_the_current_answers(
    ack_client: TestClient,
    api: Api,
    auth: Callable[[Role], dict[str, str]],
    ack_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    people: dict[str, tuple[dict[str, Any], str | None]] = {
        "m1": ({"network": "editors", "country": "MA", "languages": ["ar"]}, "will_engage"),
        "m2": ({"network": "editors", "country": "FR", "languages": ["fr"]}, "unavailable"),
        "m3": ({"network": "personalities", "country": "MA", "languages": ["en"]}, "will_engage"),
        "m4": ({"network": "personalities", "country": "EG", "languages": ["ar"]}, "will_engage"),
        "m5": ({"network": "editors", "country": "TN", "languages": ["fr"]}, "acknowledged"),
        "m6": ({"network": "editors", "country": "MA", "languages": ["en"]}, None),  # silent
    }
    members = {key: api.member(name=key, **fields) for key, (fields, _) in people.items()}
    incident = api.declare(list(members.values()))
    for key, (_, answer) in people.items():
        if answer is None:
            continue
        token = sign(ack_settings, delivery_of(session_factory, incident, members[key]).id)
        # m1 first changes their mind: only the latest answer counts in the filters.
        if key == "m1":
            first = ack_client.post("/v1/acks", json={"token": token, "response": "unavailable"})
            assert first.status_code == 200
        posted = ack_client.post("/v1/acks", json={"token": token, "response": answer})
        assert posted.status_code == 200, posted.text

    def names(**params: Any) -> list[str]:
        return [item["member"]["name"] for item in api.current(incident["id"], **params)["items"]]

    assert sorted(names()) == ["m1", "m2", "m3", "m4", "m5"]
    assert sorted(names(response="will_engage")) == ["m1", "m3", "m4"]
    assert sorted(names(response="unavailable")) == ["m2"]
    assert sorted(names(network="editors")) == ["m1", "m2", "m5"]
    assert sorted(names(country="MA")) == ["m1", "m3"]
    assert sorted(names(language="ar")) == ["m1", "m4"]
    assert sorted(names(language="fr", country="TN")) == ["m5"]
    assert sorted(names(response="will_engage", network="personalities")) == ["m3", "m4"]
    assert names(response="need_briefing_call") == []

    item = api.current(incident["id"], country="EG")["items"][0]
    assert set(item["member"]) == {"id", "name", "network", "country"}  # no contact details
    assert item["answer"]["route"] == "api"
    assert item["answer"]["language"] == "ar"

    # Cursor pagination: every answer once, in order, whatever the page size.
    for limit, params in ((2, {}), (1, {"response": "will_engage"}), (10, {})):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = api.current(
                incident["id"], limit=limit, **params, **({"cursor": cursor} if cursor else {})
            )
            assert len(page["items"]) <= limit
            seen += [item["member"]["name"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(names(**params))
        assert len(seen) == len(set(seen))
        assert pages == max(1, -(-len(seen) // limit))
    bad = ack_client.get(
        f"/v1/incidents/{incident['id']}/acks", params={"cursor": "nope"}, headers=api.headers
    )
    assert bad.status_code == 422

    # Only operators see who answered what.
    url = f"/v1/incidents/{incident['id']}/acks"
    history_url = f"/v1/incidents/{incident['id']}/members/{members['m1']['id']}/acks"
    for path in (url, history_url):
        assert_problem(ack_client.get(path, headers=auth(Role.VIEWER)), 403)
        assert_problem(ack_client.get(path), 401)
        assert ack_client.get(path, headers=auth(Role.ADMIN)).status_code == 200
    assert_problem(ack_client.get(f"/v1/incidents/{uuid.uuid4()}/acks", headers=api.headers), 404)


@pytest.mark.slow
def test_the_webhooks_ack_block_works_end_to_end(
    live: Live,
    live_api: Api,
    live_worker: WorkerProcess,
    receiver: WebhookReceiver,
    session_factory: sessionmaker[Session],
) -> None:
    path = "/hooks/newsroom"
    member = live_api.member(email=False, webhook_url=receiver.url(path), languages=["fr"])
    receiver.set_secret(path, member["webhook_secret"])
    incident = live_api.declare([member])
    wait_until(lambda: receiver.hits_for(path), 60, f"the webhook\n{live_worker.log()}")

    [hit] = receiver.hits_for(path)
    assert hit.verified
    assert hit.body is not None
    block = hit.body["data"]["ack"]
    token = block["token"]
    assert block["url"] == f"{live.url}/v1/acks"
    assert block["page"] == f"{live.url}/ack/{token}"
    assert block["responses"] == DEFAULT_RESPONSES
    assert block["deadline"] is not None
    assert instant(block["deadline"]) == instant(incident["ack_deadline"])
    assert member["id"] not in hit.body["data"]["ack"].values()

    with httpx.Client(timeout=10) as newsroom:
        page = newsroom.get(block["page"])
        assert page.status_code == 200
        assert '<html lang="fr"' in page.text
        answer = newsroom.post(
            block["url"], json={"token": token, "response": "need_briefing_call"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["incident"] == incident["reference"]
        not_allowed = newsroom.post(block["url"], json={"token": token, "response": "maybe"})
        assert_problem(not_allowed, 422, "response")

    delivery = delivery_of(session_factory, incident, member, channel="webhook")
    [ack] = acks_of(session_factory, member["id"])
    assert (ack.route, ack.channel, ack.delivery_id) == ("api", "webhook", delivery.id)
    assert (ack.language, ack.briefing_version, ack.response) == ("fr", 1, "need_briefing_call")
    assert delivery.sent_at is not None
    assert ack.delay_seconds is not None
    assert ack.delay_seconds == pytest.approx(
        (ack.answered_at - delivery.sent_at).total_seconds(), abs=0.01
    )


def test_concurrent_answers_converge_on_the_latest(
    live: Live, live_api: Api, session_factory: sessionmaker[Session]
) -> None:
    member = live_api.member(languages=["en"])
    incident = live_api.declare([member])
    token = sign(live.settings, delivery_of(session_factory, incident, member).id)
    count = 20
    barrier = threading.Barrier(count)
    results: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def answer(n: int) -> None:
        try:
            with httpx.Client(base_url=live.url, timeout=60) as client:
                body = {
                    "token": token,
                    "response": DEFAULT_RESPONSES[n % len(DEFAULT_RESPONSES)],
                    "comment": f"thread {n}",
                }
                barrier.wait(30)
                response = client.post("/v1/acks", json=body)
            with lock:
                results.append((n, response.status_code, response.text))
        except BaseException as exc:  # reported below, in the test's thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=answer, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert sorted(n for n, _, _ in results) == list(range(count))
    failures = [(n, status, text) for n, status, text in results if status != 200]
    assert not failures, failures

    history = acks_of(session_factory, member["id"])
    assert len(history) == count
    assert sorted(a.comment or "" for a in history) == sorted(f"thread {n}" for n in range(count))
    [current] = current_of(session_factory, member["id"])
    latest = max(history, key=lambda a: a.id)
    assert current.ack_id == latest.id
    assert current.response == latest.response
    # Each answer's time is taken before its write waits for the others: the first answer
    # stored is not necessarily the one timed first, but it is one of them.
    assert current.first_answered_at in {a.answered_at for a in history}
    [listed] = live_api.current(incident["id"])["items"]
    assert listed["answer"]["id"] == latest.id


@pytest.mark.usefixtures("engine")
def test_the_json_route_is_rate_limited_per_link_and_guesses_per_address(
    settings: Settings, api: Api, ack_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    _incident, _member, token = briefed_token(api, ack_settings, session_factory)
    limits = {"ack_rate_limit": "5/minute", "ack_link_rate_limit": "5/minute"}
    with client_for(ack_settings_from(settings, **limits)) as client:
        for n in range(5):
            answer = client.post("/v1/acks", json={"token": token, "response": "acknowledged"})
            assert answer.status_code == 200, (n, answer.text)
        limited = client.post("/v1/acks", json={"token": token, "response": "will_engage"})
        assert_problem(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        # One link's budget is its own: guesses from the same address are not refused yet.
        guess = client.post("/v1/acks", json={"token": "A" * 42, "response": "acknowledged"})
        assert_problem(guess, 404)
    assert count_acks(session_factory) == (5, 1)

    with client_for(ack_settings_from(settings, **limits)) as client:
        for _ in range(5):
            guess = client.post("/v1/acks", json={"token": "A" * 42, "response": "acknowledged"})
            assert guess.status_code == 404
        limited = client.post("/v1/acks", json={"token": "B" * 42, "response": "acknowledged"})
        assert_problem(limited, 429)  # guessing is limited per address
        assert int(limited.headers["retry-after"]) >= 1
        # ...and a member's valid link from that same address still gets through.
        answer = client.post("/v1/acks", json={"token": token, "response": "will_engage"})
        assert answer.status_code == 200, answer.text
    assert count_acks(session_factory) == (6, 1)
