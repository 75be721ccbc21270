"""STARTTLS modes of the briefing sender against a real aiosmtpd relay on a real socket,
with a certificate made in the test: `off` never upgrades, `opportunistic` upgrades when
offered and verifies, `required` refuses a relay without STARTTLS; a password only ever
crosses a verified TLS connection (or stays on loopback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.deliveries.transport import (
    EmailRequest,
    SendResult,
    SmtpSender,
    SmtpSettings,
    is_loopback_host,
)
from tests.support.factories import TEST_SECRET_KEY
from tests.support.smtp_tls import Certificates, TlsRelay, make_certificates

USER, PASSWORD = "relay-user", "relay-password-never-in-clear"
MESSAGE = (
    b"From: alerts@rrmm.invalid\r\nTo: member@example.org\r\nSubject: Briefing\r\n\r\nBody.\r\n"
)


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture
def tls_relay(certificates: Certificates) -> Iterator[TlsRelay]:
    relay = TlsRelay(certificates).start()
    yield relay
    relay.stop()


@pytest.fixture
def plain_relay() -> Iterator[TlsRelay]:
    relay = TlsRelay(None).start()
    yield relay
    relay.stop()


def send(relay: TlsRelay, **overrides: object) -> SendResult:
    options: dict[str, object] = {
        "host": relay.host,
        "port": relay.port,
        "timeout": 5.0,
        "connections": 1,
        "username": USER,
        "password": PASSWORD,
        **overrides,
    }
    sender = SmtpSender(SmtpSettings(**options))  # type: ignore[arg-type]

    async def run() -> list[SendResult]:
        try:
            return await sender.send_all(
                [EmailRequest(1, "alerts@rrmm.invalid", "member@example.org", MESSAGE)]
            )
        finally:
            await sender.close()

    [result] = asyncio.run(run())
    return result


def test_off_never_upgrades_even_when_offered(tls_relay: TlsRelay) -> None:
    # The relay offers STARTTLS with a certificate nobody trusts: upgrading would fail.
    result = send(tls_relay, starttls="off")

    assert result.ok, result
    assert [(r.recipients, r.tls) for r in tls_relay.received] == [(["member@example.org"], False)]
    # Loopback: AUTH in clear never leaves the machine, so it is allowed there.
    assert [(a.username, a.tls) for a in tls_relay.auth_attempts] == [(USER, False)]


def test_opportunistic_upgrades_and_verifies(
    tls_relay: TlsRelay, certificates: Certificates
) -> None:
    result = send(tls_relay, starttls="opportunistic", ca_file=str(certificates.ca_file))

    assert result.ok, result
    assert [r.tls for r in tls_relay.received] == [True]
    assert [(a.password, a.tls) for a in tls_relay.auth_attempts] == [(PASSWORD, True)]


def test_an_untrusted_certificate_fails_clearly_and_the_password_is_never_sent(
    tls_relay: TlsRelay,
) -> None:
    # No CA file: the system's store does not know the test CA.
    for mode in ("opportunistic", "required"):
        result = send(tls_relay, starttls=mode)

        assert not result.ok
        assert result.retryable
        assert result.error is not None
        assert "certificate" in result.error, result.error
    assert tls_relay.auth_attempts == []
    assert tls_relay.received == []


def test_a_certificate_for_another_host_is_not_trusted(tmp_path: Path) -> None:
    # Signed by a CA we trust, but made out to another address than the one we dial.
    other = make_certificates(tmp_path, host="127.0.0.2")
    relay = TlsRelay(other).start()
    try:
        result = send(relay, starttls="required", ca_file=str(other.ca_file))
    finally:
        relay.stop()

    assert not result.ok
    assert "certificate" in (result.error or ""), result.error
    assert relay.auth_attempts == []


def test_opportunistic_sends_in_clear_when_starttls_is_not_offered(plain_relay: TlsRelay) -> None:
    result = send(plain_relay, starttls="opportunistic")

    assert result.ok, result
    assert [r.tls for r in plain_relay.received] == [False]


def test_required_refuses_a_relay_that_does_not_offer_starttls(plain_relay: TlsRelay) -> None:
    result = send(plain_relay, starttls="required")

    assert not result.ok
    assert result.error is not None
    assert "STARTTLS required" in result.error
    assert plain_relay.auth_attempts == []
    assert plain_relay.received == []


def test_required_sends_over_a_verified_connection(
    tls_relay: TlsRelay, certificates: Certificates
) -> None:
    result = send(tls_relay, starttls="required", ca_file=str(certificates.ca_file))

    assert result.ok, result
    assert [r.tls for r in tls_relay.received] == [True]
    assert [a.tls for a in tls_relay.auth_attempts] == [True]


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # nothing is sent: UDP connect picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if is_loopback_host(address) else address


def test_auth_in_clear_to_a_relay_off_loopback_is_refused_unless_allowed() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to listen on")
    relay = TlsRelay(None, host=address).start()
    try:
        refused = send(relay, starttls="off")
        no_credentials = send(relay, starttls="off", username=None, password=None)
        allowed = send(relay, starttls="off", allow_plaintext_auth=True)
    finally:
        relay.stop()

    assert not refused.ok
    assert "unencrypted" in (refused.error or "")
    assert no_credentials.ok, no_credentials
    assert allowed.ok, allowed
    assert [a.tls for a in relay.auth_attempts] == [False]  # only the allowed one
    assert len(relay.received) == 2


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("::1")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("192.0.2.10")
    assert not is_loopback_host("smtp.example.org")


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        ("true", "required"),
        ("false", "off"),
        ("True", "required"),
        ("0", "off"),
        ("off", "off"),
        ("opportunistic", "opportunistic"),
        ("required", "required"),
    ],
)
def test_starttls_setting_keeps_the_old_boolean_spellings(
    given: str, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RRMM_SMTP_STARTTLS", given)
    settings = Settings(var_dir=tmp_path, secret_key=TEST_SECRET_KEY)

    assert settings.smtp_starttls == mode
    assert SmtpSettings.from_settings(settings).starttls_mode == mode


def test_an_unknown_starttls_mode_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RRMM_SMTP_STARTTLS", "sometimes")
    with pytest.raises(ValidationError, match="smtp_starttls"):
        Settings(var_dir=tmp_path, secret_key=TEST_SECRET_KEY)
