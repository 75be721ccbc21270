"""Rotating RRMM_SECRET_KEY: RRMM_SECRET_KEY_PREVIOUS keeps old webhook secrets readable and
old ack links valid, `rrmm secrets rotate` moves every stored secret to the new key, and
dropping the previous key afterwards breaks nothing but the old links."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from app.cli.main import cli
from app.config import Settings, get_settings
from app.deliveries.tokens import AckTokenSigner, InvalidToken
from app.models import AuditEntry, Member, Role
from app.security import SecretBox
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign
from tests.support.factories import (
    PUBLIC_WEBHOOK,
    TEST_SECRET_KEY,
    declare_body,
    make_client,
    member_payload,
    wait_final,
)
from tests.support.sinks import SmtpSink, WebhookReceiver
from tests.support.worker import WorkerProcess, worker_environment

OLD_KEY = TEST_SECRET_KEY  # what the test app encrypts and signs with
NEW_KEY = secrets.token_hex(32)

Run = Callable[..., Result]
client_for = contextmanager(make_client)


def rotating(settings: Settings, **update: Any) -> Settings:
    """The settings of step 1 of the rotation: the new key, the old one as previous."""
    return settings.model_copy(
        update={
            "secret_key": SecretStr(NEW_KEY),
            "secret_key_previous": SecretStr(OLD_KEY),
            **update,
        }
    )


def rotated(settings: Settings, **update: Any) -> Settings:
    """After the rotation: the new key alone."""
    return rotating(settings, secret_key_previous=None, **update)


def stored_secrets(session_factory: sessionmaker[Session]) -> dict[str, bytes]:
    with session_factory() as session:
        rows = session.execute(
            select(Member.id, Member.webhook_secret_encrypted).where(
                Member.webhook_secret_encrypted.is_not(None)
            )
        )
        return {str(member_id): bytes(token or b"") for member_id, token in rows}


# ---------------------------------------------------------------------------- the pieces


def test_a_secret_under_the_old_key_decrypts_while_rotating_and_new_ones_use_the_new_key():
    old_token = SecretBox(OLD_KEY).encrypt("whsec_old")
    box = SecretBox(NEW_KEY, previous_key=OLD_KEY)

    assert box.decrypt(old_token) == "whsec_old"
    assert not box.is_current(old_token)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(NEW_KEY).decrypt(old_token)
    # Written while rotating: under the new key only.
    new_token = box.encrypt("whsec_new")
    assert SecretBox(NEW_KEY).decrypt(new_token) == "whsec_new"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(OLD_KEY).decrypt(new_token)
    # Rotation moves the old one over.
    moved = box.rotate(old_token)
    assert SecretBox(NEW_KEY).decrypt(moved) == "whsec_old"
    assert box.is_current(moved)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        box.rotate(SecretBox(secrets.token_hex(32)).encrypt("whsec_stranger"))


def test_ack_tokens_signed_under_the_old_key_verify_only_while_it_is_the_previous_key():
    expires = datetime.now(UTC) + timedelta(days=1)
    old_token = AckTokenSigner(OLD_KEY).sign(42, expires)
    while_rotating = AckTokenSigner(NEW_KEY, previous_secret_key=OLD_KEY)

    assert while_rotating.verify(old_token).delivery_id == 42
    new_token = while_rotating.sign(43, expires)
    assert AckTokenSigner(NEW_KEY).verify(new_token).delivery_id == 43  # signed with the new
    with pytest.raises(InvalidToken):
        AckTokenSigner(NEW_KEY).verify(old_token)
    with pytest.raises(InvalidToken):
        AckTokenSigner(OLD_KEY).verify(new_token)
    # Key ids still apply under the previous root: a retired id stays retired.
    retired = AckTokenSigner(OLD_KEY, current_key_id=7).sign(44, expires)
    with pytest.raises(InvalidToken):
        while_rotating.verify(retired)
    both_ids = AckTokenSigner(NEW_KEY, accepted_key_ids=(7,), previous_secret_key=OLD_KEY)
    assert both_ids.verify(retired).delivery_id == 44


@pytest.mark.parametrize("placeholder", ["changeme", "secret", "x" * 40, "short"])
def test_a_placeholder_previous_key_is_refused_without_echoing_it(tmp_path, placeholder):
    with pytest.raises(ValidationError) as caught:
        Settings(
            mode="production", var_dir=tmp_path, secret_key=NEW_KEY, secret_key_previous=placeholder
        )
    assert "RRMM_SECRET_KEY_PREVIOUS" in str(caught.value)
    assert NEW_KEY not in str(caught.value)


def test_the_previous_key_is_read_from_the_environment_and_empty_means_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("RRMM_SECRET_KEY", NEW_KEY)
    monkeypatch.setenv("RRMM_SECRET_KEY_PREVIOUS", OLD_KEY)
    settings = Settings(mode="production", var_dir=tmp_path)
    assert settings.previous_secret == OLD_KEY
    assert OLD_KEY not in repr(settings)
    old_token = SecretBox(OLD_KEY).encrypt("whsec_x")
    assert SecretBox.from_settings(settings).decrypt(old_token) == "whsec_x"

    monkeypatch.setenv("RRMM_SECRET_KEY_PREVIOUS", "")
    assert Settings(mode="production", var_dir=tmp_path).previous_secret is None


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def run(engine, settings: Settings) -> Iterator[Run]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """`rrmm ARGS…` in-process, its settings read afresh from the environment given."""
    runner = CliRunner()
    base = {
        "RRMM_MODE": "production",
        "RRMM_DATABASE_URL": settings.database_url,
        "RRMM_BROKER_URL": settings.broker_url,
        "RRMM_VAR_DIR": str(settings.var_dir),
    }

    def invoke(*args: str, env: Mapping[str, str | None]) -> Result:
        get_settings.cache_clear()
        try:
            return runner.invoke(cli, list(args), env={**base, **env})
        finally:
            get_settings.cache_clear()

    yield invoke
    get_settings.cache_clear()


def test_secrets_rotate_moves_every_webhook_secret_to_the_new_key(
    run: Run, client: TestClient, operator: dict[str, str], session_factory
):
    # Made by the app under the old key: webhook members (more than one batch) and one
    # without a webhook.
    created = {}
    for n in range(5):
        body = member_payload(email=f"rot{n}@example.org", webhook_url=f"{PUBLIC_WEBHOOK}/{n}")
        response = client.post("/v1/members", json=body, headers=operator)
        assert response.status_code == 201, response.text
        created[response.json()["id"]] = response.json()["webhook_secret"]
    no_hook = member_payload(email="plain@example.org")
    assert client.post("/v1/members", json=no_hook, headers=operator).status_code == 201
    with session_factory() as session:
        untouched = {m.id: m.updated_at for m in session.scalars(select(Member))}
    before = stored_secrets(session_factory)
    assert set(before) == set(created)
    for token in before.values():
        with pytest.raises(ValueError, match="cannot be decrypted"):
            SecretBox(NEW_KEY).decrypt(token)

    rotating_env = {"RRMM_SECRET_KEY": NEW_KEY, "RRMM_SECRET_KEY_PREVIOUS": OLD_KEY}
    result = run("secrets", "rotate", "--batch-size", "2", env=rotating_env)

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.strip() == "re-encrypted 5 of 5 webhook secrets"
    after = stored_secrets(session_factory)
    for member_id, secret in created.items():
        assert after[member_id] != before[member_id]
        assert SecretBox(NEW_KEY).decrypt(after[member_id]) == secret  # the new key alone
    with session_factory() as session:
        # Re-encrypting is no edit of the member.
        assert {m.id: m.updated_at for m in session.scalars(select(Member))} == untouched
        audit = list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == "secrets.rotate"))
        )
    assert sum(entry.details["re_encrypted"] for entry in audit) == 5
    assert all(entry.actor == "cli" for entry in audit), [e.actor for e in audit]

    # Idempotent: nothing left to do, nothing rewritten.
    again = run("secrets", "rotate", env=rotating_env)
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert again.stdout.strip() == "re-encrypted 0 of 5 webhook secrets"
    assert stored_secrets(session_factory) == after
    # And the previous key can go: the new key alone reads everything.
    alone = run("secrets", "rotate", env={"RRMM_SECRET_KEY": NEW_KEY})
    assert alone.exit_code == 0, (alone.stdout, alone.stderr)
    assert alone.stdout.strip() == "re-encrypted 0 of 5 webhook secrets"


def test_secrets_rotate_without_the_previous_key_reports_what_it_cannot_read(
    run: Run, client: TestClient, operator: dict[str, str], session_factory
):
    body = member_payload(email="lost@example.org", webhook_url=PUBLIC_WEBHOOK)
    response = client.post("/v1/members", json=body, headers=operator)
    assert response.status_code == 201, response.text
    before = stored_secrets(session_factory)

    result = run("secrets", "rotate", env={"RRMM_SECRET_KEY": NEW_KEY})

    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout.strip() == "re-encrypted 0 of 1 webhook secrets"
    assert "cannot be decrypted" in result.stderr
    assert response.json()["id"] in result.stderr  # an opaque id, never the secret
    assert response.json()["webhook_secret"] not in result.stdout + result.stderr
    assert stored_secrets(session_factory) == before  # nothing was destroyed


def test_secrets_rotate_refuses_a_placeholder_previous_key(run: Run):
    result = run(
        "secrets",
        "rotate",
        env={"RRMM_SECRET_KEY": NEW_KEY, "RRMM_SECRET_KEY_PREVIOUS": "changeme"},
    )
    assert result.exit_code == 2
    assert "RRMM_SECRET_KEY_PREVIOUS" in result.stderr
    assert NEW_KEY not in result.stderr


# ---------------------------------------------------------------------------- the real API


@pytest.mark.usefixtures("engine")
def test_an_old_ack_link_is_accepted_while_the_previous_key_is_set_and_refused_after(
    settings: Settings, auth: Callable[[Role], dict[str, str]], session_factory
):
    old_settings = ack_settings_from(settings)
    with client_for(old_settings) as client:
        api = Api(client, auth(Role.OPERATOR))
        member = api.member()
        incident = api.declare([member])
    delivery = delivery_of(session_factory, incident, member)
    old_link = sign(old_settings, delivery.id)  # as sent in the briefing, before the rotation
    new_link = sign(rotating(old_settings), delivery.id)
    answer = {"token": old_link, "response": "will_engage"}

    with client_for(rotating(old_settings)) as client:
        accepted = client.post("/v1/acks", json=answer)
        assert accepted.status_code == 200, accepted.text
        assert client.get(f"/ack/{old_link}").status_code == 200

    with client_for(rotated(old_settings)) as client:
        refused = client.post("/v1/acks", json=answer)
        assert refused.status_code == 404, refused.text
        assert client.get(f"/ack/{old_link}").status_code == 404
        # Links signed since the rotation began keep working.
        fresh = client.post("/v1/acks", json={"token": new_link, "response": "unavailable"})
        assert fresh.status_code == 200, fresh.text


# ---------------------------------------------------------------------------- the worker


@pytest.mark.slow
@pytest.mark.usefixtures("engine")
def test_a_worker_signs_webhooks_with_secrets_stored_under_the_previous_key(
    settings: Settings,
    auth: Callable[[Role], dict[str, str]],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
    tmp_path: Path,
):
    """Members made before the rotation, a worker started after it: the receiver verifies
    every delivery with the secret it was given at creation."""
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    paths = []
    with client_for(settings.model_copy(update={"webhook_allow_private": True})) as client:
        for n in range(3):
            path = f"/hooks/rot-{n}"
            body = member_payload(email=None, webhook_url=receiver.url(path), quiet_hours=None)
            response = client.post("/v1/members", json=body, headers=operator)
            assert response.status_code == 201, response.text
            receiver.set_secret(path, response.json()["webhook_secret"])
            paths.append(path)

    env = worker_environment(rotating(settings), smtp_port=smtp.port, var_dir=tmp_path / "w")
    env["RRMM_SECRET_KEY_PREVIOUS"] = OLD_KEY
    worker = WorkerProcess(env).start()
    try:
        with client_for(rotating(settings, webhook_allow_private=True)) as client:
            declared = client.post("/v1/incidents", json=declare_body(), headers=operator)
            assert declared.status_code == 202, declared.text
            state = wait_final(client, viewer, declared.json()["id"])
    finally:
        worker.stop()

    by_status = {k: v for k, v in state["deliveries"]["by_status"].items() if v}
    assert by_status == {"sent": 3}, state
    for path in paths:
        (hit,) = receiver.hits_for(path)
        assert hit.verified, path
