"""Settings (secret key policy, embedded defaults, environment) and key material."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.security import (
    API_KEY_PREFIX,
    WEBHOOK_SECRET_PREFIX,
    SecretBox,
    hash_api_key,
    new_api_key,
    new_webhook_secret,
)

GOOD_KEY = "3f9a1c7e5b2d4086af1e9c3b7d5a2f4e8c1b6d9a0e3f7c2b5a8d1e4f7a0c3b6d"


@pytest.fixture(autouse=True)
def _no_rrmm_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings read the environment: start each test from none of ours, in an empty cwd."""
    for name in list(os.environ):
        if name.startswith("RRMM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_production_mode_requires_a_secret_key(tmp_path):
    with pytest.raises(ValidationError, match="RRMM_SECRET_KEY"):
        Settings(mode="production", var_dir=tmp_path / "var")

    assert not (tmp_path / "var" / "secret_key").exists()


def test_a_configured_database_means_production_mode(tmp_path):
    with pytest.raises(ValidationError, match="RRMM_SECRET_KEY"):
        Settings(var_dir=tmp_path, database_url="postgresql+psycopg://rrmm@db.internal/rrmm")

    settings = Settings(
        var_dir=tmp_path, database_url="postgresql+psycopg://rrmm@db/rrmm", secret_key=GOOD_KEY
    )
    assert settings.mode == "production"
    assert not (tmp_path / "secret_key").exists()


def test_a_database_url_from_the_environment_needs_a_secret_key(monkeypatch, tmp_path):
    monkeypatch.setenv("RRMM_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RRMM_DATABASE_URL", "postgresql+psycopg://rrmm@db.internal/rrmm")

    with pytest.raises(ValidationError, match="RRMM_SECRET_KEY"):
        Settings()


def test_no_configuration_at_all_is_the_embedded_mode(tmp_path):
    settings = Settings(var_dir=tmp_path / "var")

    assert settings.mode == "embedded"
    assert (tmp_path / "var" / "secret_key").read_text().strip() == settings.secret


@pytest.mark.parametrize(
    "placeholder",
    [
        "changeme",
        "secret",
        "x" * 40,
        "short-but-random-7f3a",
        "change-me-please-xxxxxxxxxxxxxxxxxxxxx",
        "CHANGEME",
        "your-secret-key-goes-here-0123456789abcdef",
        "<paste a real secret key here, 32 characters or more>",
        "abababababababababababababababababababab",
    ],
)
def test_placeholder_secret_keys_are_refused(placeholder, tmp_path):
    with pytest.raises(ValidationError, match="RRMM_SECRET_KEY"):
        Settings(mode="production", var_dir=tmp_path, secret_key=placeholder)


@pytest.mark.parametrize("mode", ["production", "embedded"])
def test_a_random_hex_key_is_accepted(mode, tmp_path):
    settings = Settings(mode=mode, var_dir=tmp_path / "var", secret_key=GOOD_KEY)

    assert settings.secret == GOOD_KEY
    assert GOOD_KEY not in repr(settings)
    # An explicit key is never written to disk.
    assert not (tmp_path / "var" / "secret_key").exists()


def test_a_generated_key_is_accepted(tmp_path):
    key = secrets.token_hex(32)

    assert Settings(var_dir=tmp_path, secret_key=key).secret == key


def test_embedded_mode_creates_and_keeps_a_private_key(tmp_path):
    var_dir = tmp_path / "var"

    first = Settings(mode="embedded", var_dir=var_dir)

    key_file = var_dir / "secret_key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.secret
    assert len(first.secret) >= 32
    assert len(set(first.secret)) >= 8

    second = Settings(mode="embedded", var_dir=var_dir)
    assert second.secret == first.secret

    other = Settings(mode="embedded", var_dir=tmp_path / "other")
    assert other.secret != first.secret


def test_embedded_defaults_live_under_var_dir(tmp_path):
    var_dir = tmp_path / "var"

    settings = Settings(mode="embedded", var_dir=var_dir)

    assert settings.database_url == f"sqlite:///{var_dir / 'rrmm.db'}"
    assert settings.is_sqlite
    assert settings.broker_url == f"redis+socket://{var_dir / 'redis.sock'}"
    assert settings.webhook_allow_private is False


def test_default_var_dir_is_var_in_the_working_directory(tmp_path):
    settings = Settings(mode="embedded")

    assert settings.var_dir == (tmp_path / "var").resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'rrmm.db'}"
    assert (tmp_path / "var" / "secret_key").is_file()


def test_production_defaults(tmp_path):
    settings = Settings(mode="production", var_dir=tmp_path, secret_key=GOOD_KEY)

    assert settings.mode == "production"
    assert settings.database_url == f"sqlite:///{tmp_path / 'rrmm.db'}"
    assert settings.broker_url == f"redis+socket://{tmp_path / 'redis.sock'}"
    assert settings.webhook_allow_private is False


def test_settings_are_read_from_rrmm_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("RRMM_MODE", "production")
    monkeypatch.setenv("RRMM_SECRET_KEY", GOOD_KEY)
    monkeypatch.setenv("RRMM_VAR_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("RRMM_DATABASE_URL", "postgresql+psycopg://rrmm@db.internal/rrmm")
    monkeypatch.setenv("RRMM_BROKER_URL", "redis://broker.internal:6379/0")
    monkeypatch.setenv("RRMM_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("RRMM_SMTP_PORT", "2525")
    # Without the prefix, a variable is not ours.
    monkeypatch.setenv("SMTP_HOST", "ignored.example")

    settings = Settings()

    assert settings.mode == "production"
    assert settings.secret == GOOD_KEY
    assert settings.var_dir == tmp_path / "elsewhere"
    assert settings.database_url == "postgresql+psycopg://rrmm@db.internal/rrmm"
    assert not settings.is_sqlite
    assert settings.broker_url == "redis://broker.internal:6379/0"
    assert settings.webhook_allow_private is True
    assert settings.smtp_port == 2525
    assert settings.smtp_host == "127.0.0.1"


def test_a_placeholder_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RRMM_SECRET_KEY", "changeme")

    with pytest.raises(ValidationError, match="placeholder"):
        Settings()


def test_secret_box_round_trips():
    box = SecretBox(GOOD_KEY)
    plaintext = new_webhook_secret()

    token = box.encrypt(plaintext)

    assert plaintext.encode() not in token
    assert box.decrypt(token) == plaintext
    # Same key, new box (a restart): still decrypts.
    assert SecretBox(GOOD_KEY).decrypt(token) == plaintext


def test_secret_box_with_another_key_cannot_decrypt():
    token = SecretBox(GOOD_KEY).encrypt("whsec_abc")

    with pytest.raises(ValueError, match="RRMM_SECRET_KEY"):
        SecretBox(secrets.token_hex(32)).decrypt(token)


def test_secret_box_keys_are_per_purpose():
    token = SecretBox(GOOD_KEY, purpose="one").encrypt("whsec_abc")

    with pytest.raises(ValueError):
        SecretBox(GOOD_KEY, purpose="two").decrypt(token)


def test_secret_box_refuses_a_tampered_token():
    box = SecretBox(GOOD_KEY)
    token = bytearray(box.encrypt("whsec_abc"))
    token[-5] = ord("A") if token[-5] != ord("A") else ord("B")

    with pytest.raises(ValueError):
        box.decrypt(bytes(token))


def test_webhook_secrets_are_32_random_bytes():
    first, second = new_webhook_secret(), new_webhook_secret()

    assert first.startswith(WEBHOOK_SECRET_PREFIX)
    assert WEBHOOK_SECRET_PREFIX == "whsec_"
    raw = base64.b64decode(first.removeprefix("whsec_"), validate=True)
    assert len(raw) == 32
    assert first != second


def test_hash_api_key_is_a_deterministic_sha256():
    key = new_api_key()

    digest = hash_api_key(key)

    assert key.startswith(API_KEY_PREFIX)
    assert digest == hash_api_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert hash_api_key(new_api_key()) != digest
