"""Declaring an incident briefs every member by email and webhook, with a real worker."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from app.models import Delivery, Role
from app.netutil import wait_until
from tests.support.factories import declare_body, make_client, wait_final
from tests.support.worker import WorkerProcess


@pytest.mark.usefixtures("worker")
def test_declare_briefs_every_member_once_per_channel(
    fanout_client, auth, add_member, smtp, receiver, db
):
    members = [add_member(languages=["ar", "en"]) for _ in range(3)]
    members += [add_member(languages=["fr-CA"]), add_member(languages=["de"])]
    operator = auth(Role.OPERATOR)
    response = fanout_client.post(
        "/v1/incidents", json=declare_body(), headers={**operator, "Idempotency-Key": "k1"}
    )
    assert response.status_code == 202, response.text
    incident = response.json()
    assert incident["reference"].startswith("RRMM-")
    assert incident["status"] == "mobilizing"
    assert incident["targeted"] == 5

    state = wait_final(fanout_client, auth(Role.VIEWER), incident["id"])
    assert state["deliveries"]["by_channel"] == {"email": {"sent": 5}, "webhook": {"sent": 5}}

    rows = db.execute(select(Delivery.channel, func.count()).group_by(Delivery.channel)).all()
    assert dict(rows) == {"email": 5, "webhook": 5}
    for member in members:
        mails = smtp.to(member["email"])
        assert len(mails) == 1
        hits = receiver.hits_for(member["hook_path"])
        assert len(hits) == 1
        assert hits[0].verified
        expected = {"ar": "ar", "fr-CA": "fr", "de": "en"}[member["languages"][0]]
        assert hits[0].body["data"]["briefing"]["language"] == expected
        assert hits[0].body["type"] == "incident.declared"
        message = mails[0].message
        assert message["Content-Language"] == expected
        html = message.get_body(("html",)).get_content()
        assert f'lang="{expected}"' in html
        assert ('dir="rtl"' in html) == (expected == "ar")
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["To"] == member["email"]

    # The timeline tells the same story, from the real worker and sweep.
    def timeline() -> list[dict[str, Any]]:
        page = fanout_client.get(f"/v1/incidents/{incident['id']}/timeline", headers=operator)
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    # The sweeper records both, each in its own transaction (the last rows may settle
    # between its activation check and its fan-out check): wait for both.
    wait_until(
        lambda: {"fanout_finished", "activated"} <= {e["kind"] for e in timeline()},
        30,
        "fan-out finished and incident activated",
    )
    events = {e["kind"]: e for e in timeline()}
    assert list(events)[:2] == ["declared", "fanout_started"]
    finished = events["fanout_finished"]["detail"]
    assert finished["outcomes"] == {"sent": 10}
    assert finished["latency_count"] == 10


@pytest.mark.slow
@pytest.mark.usefixtures("engine", "purge_broker", "db")
def test_a_declaration_written_in_chunks_by_the_worker_briefs_everyone_once(
    settings, add_member, auth, worker_env, smtp, receiver
):
    """The request writes 3 members' rows and answers; the real worker writes the other
    chunks and sends each as soon as it is written."""
    members = [add_member(languages=[("fr", "ar", "en-GB")[n % 3]]) for n in range(10)]
    chunked = settings.model_copy(
        update={"webhook_allow_private": True, "targeting_chunk_members": 3}
    )
    process = WorkerProcess({**worker_env, "RRMM_TARGETING_CHUNK_MEMBERS": "3"}).start()
    try:
        with contextmanager(make_client)(chunked) as client:
            response = client.post(
                "/v1/incidents", json=declare_body(), headers=auth(Role.OPERATOR)
            )
            assert response.status_code == 202, response.text
            incident = response.json()
            assert incident["targeted"] == 10
            state = wait_final(client, auth(Role.VIEWER), incident["id"])
            assert state["targeting"] == {"state": "done", "members": 10, "done": 10}
            assert state["deliveries"]["by_channel"] == {
                "email": {"sent": 10},
                "webhook": {"sent": 10},
            }
            wait_until(
                lambda: (
                    client.get(
                        f"/v1/incidents/{incident['id']}/status", headers=auth(Role.VIEWER)
                    ).json()["status"]
                    == "active"
                ),
                30,
                "the incident active once every chunk was written and sent",
            )
            kinds = [
                event["kind"]
                for event in client.get(
                    f"/v1/incidents/{incident['id']}/timeline", headers=auth(Role.OPERATOR)
                ).json()["items"]
            ]
            assert kinds.count("targeted") == 1
            assert kinds.index("declared") < kinds.index("targeted")
    finally:
        process.stop()
    expected = {"fr": "fr", "ar": "ar", "en-GB": "en"}
    for member in members:
        mails = smtp.to(member["email"])
        assert len(mails) == 1
        hits = receiver.hits_for(member["hook_path"])
        assert len(hits) == 1
        assert hits[0].body["data"]["briefing"]["language"] == expected[member["languages"][0]]
