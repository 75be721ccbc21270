"""Contact details, keys and secrets never reach the logs."""

from __future__ import annotations

import structlog

from app.logging import redact
from tests.support.factories import PUBLIC_WEBHOOK, member_payload


def test_requests_log_no_contact_details_keys_or_secrets(client, operator, capfd):
    email = "very.private.person@example.org"
    created = client.post(
        "/v1/members",
        json=member_payload(email=email, webhook_url=PUBLIC_WEBHOOK),
        headers=operator,
    )
    assert created.status_code == 201
    secret = created.json()["webhook_secret"]
    client.get(f"/v1/members?q={email}", headers=operator)
    client.post("/v1/members", json=member_payload(email=email), headers=operator)  # 409
    client.post("/v1/members", json=member_payload(email="bad@@x"), headers=operator)  # 422
    client.get("/v1/members", headers={"Authorization": "Bearer rrmm_wrong-key"})  # 401
    out, err = capfd.readouterr()
    logs = out + err
    assert '"path": "/v1/members"' in logs  # the access log did run
    for needle in (
        email,
        "very.private",
        PUBLIC_WEBHOOK,
        "93.184.215.14",
        secret,
        operator["Authorization"].split()[1],
        "rrmm_wrong-key",
        "bad@@x",
    ):
        assert needle not in logs, needle


def test_sensitive_keys_are_redacted_whoever_logs_them(capfd):
    event = redact(None, "info", {"event": "x", "email": "a@b.org", "token": "t", "count": 3})
    assert event == {"event": "x", "email": "[redacted]", "token": "[redacted]", "count": 3}
    structlog.get_logger("test").info("member_touched", email="a@b.org", webhook_url="https://h/")
    _out, err = capfd.readouterr()
    assert "member_touched" in err
    assert "a@b.org" not in err
    assert "https://h/" not in err


def test_access_log_shows_route_templates_not_tokens(client, capfd):
    token = "A" * 42
    response = client.get(f"/ack/{token}")
    assert response.status_code == 404
    out, err = capfd.readouterr()
    logs = out + err
    assert '"path": "/ack/{token}"' in logs
    assert token not in logs
