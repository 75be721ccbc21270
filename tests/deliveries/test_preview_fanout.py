"""A preview says what the fan-out then sends: compared with a real worker's deliveries."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.models import Role
from tests.support.factories import declare_body, wait_final

pytestmark = pytest.mark.slow  # a real worker


def _normalised(body: dict[str, Any]) -> dict[str, Any]:
    """A webhook body without what differs from member to member (the token and page) and
    moment to moment (the deadline counts from the declaration)."""
    data = body["data"]
    return {
        "type": body["type"],
        "briefing": data["briefing"],
        "incident": {k: v for k, v in data["incident"].items() if k not in ("id", "status")},
        "ack": {k: v for k, v in data["ack"].items() if k not in ("page", "token", "deadline")},
    }


@pytest.mark.usefixtures("worker")
def test_preview_matches_what_the_worker_sends(fanout_client, auth, add_member, smtp, receiver):
    members = {lang: add_member(languages=[lang]) for lang in ("ar", "fr", "en")}
    operator = auth(Role.OPERATOR)
    body = declare_body()
    preview = fanout_client.post("/v1/incidents/preview", json=body, headers=operator).json()
    assert preview["by_channel"] == {"email": 3, "webhook": 3}
    placeholder = preview["ack_url_placeholder"]

    response = fanout_client.post("/v1/incidents", json=body, headers=operator)
    assert response.status_code == 202, response.text
    incident = response.json()
    wait_final(fanout_client, auth(Role.VIEWER), incident["id"])

    messages = {m["language"]: m for m in preview["messages"]}
    assert set(messages) == set(members)
    for language, member in members.items():
        sample = messages[language]
        hits = receiver.hits_for(member["hook_path"])
        assert len(hits) == 1
        assert hits[0].verified
        sent = hits[0].body
        assert sent is not None
        expected = json.loads(sample["webhook"]["body"])
        assert _normalised(sent) == _normalised(expected)
        assert sent["data"]["briefing"]["language"] == language

        mail = smtp.to(member["email"])[0].message
        assert mail["Subject"] == sample["email"]["subject"]
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        # The email's own link (its delivery's token), where the preview has the placeholder.
        found = re.search(r"https?://\S+/ack/[A-Za-z0-9._~-]+", text)
        assert found is not None
        link = found.group(0)
        assert text == sample["email"]["text"].replace(placeholder, link)
        assert html == sample["email"]["html"].replace(placeholder, link)
