"""Rate limits behind a reverse proxy: the client address is believed from trusted proxies
only (RRMM_TRUSTED_PROXIES), one flooding address never blocks another member's answer, and
a limiter whose storage is down lets answers through instead of failing them."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app.clientaddr import resolve
from app.config import Settings
from app.main import create_app
from app.models import Role
from app.netutil import free_port
from app.serving import uvicorn_options
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign
from tests.support.factories import assert_problem
from tests.support.forwarding_proxy import forwarding_proxy
from tests.support.live_server import serve

JUNK = "A" * 42
PROXY = "127.0.0.2"
FLOODER = "127.0.0.3"
MEMBER = "127.0.0.4"


def live(settings: Settings) -> Any:
    """The app behind a real uvicorn with the options `rrmm api` uses."""
    return serve(lambda _: create_app(settings), **uvicorn_options(settings))


def from_address(base_url: str, local_address: str) -> httpx.Client:
    """A client whose connections come from `local_address` (any 127/8 is this host)."""
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(base_url=base_url, transport=transport, timeout=30)


def answer(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/acks", json={"token": token, "response": "acknowledged"}, headers=headers
    )


@pytest.fixture
def briefed(
    settings: Settings,
    engine: Any,  # noqa: ARG001 (requested for its effect: a migrated database)
    auth: Callable[[Role], dict[str, str]],
    session_factory: sessionmaker[Session],
) -> str:
    """A valid token: one member's email delivery of a declared incident."""
    with TestClient(create_app(ack_settings_from(settings))) as client:
        api = Api(client, auth(Role.OPERATOR))
        person = api.member()
        incident = api.declare([person])
    return sign(settings, delivery_of(session_factory, incident, person).id)


def test_a_flood_through_the_proxy_blocks_only_its_sender(settings: Settings, briefed: str) -> None:
    behind_proxy = ack_settings_from(
        settings, ack_rate_limit="5/minute", trusted_proxies=[ip_network(f"{PROXY}/32")]
    )
    with (
        live(behind_proxy) as url,
        forwarding_proxy(url, listen=PROXY) as proxy,
        from_address(proxy, FLOODER) as flooder,
        from_address(proxy, MEMBER) as member,
    ):
        for _ in range(5):
            assert answer(flooder, JUNK).status_code == 404
        assert_problem(answer(flooder, JUNK), 429)
        # Whatever the flooder claims to be, the proxy says where it came from.
        spoofed = answer(flooder, JUNK, **{"X-Forwarded-For": MEMBER})
        assert_problem(spoofed, 429)
        assert flooder.get(f"/ack/{JUNK}").status_code == 404  # the page: its own budget

        # Another address behind the same proxy: its own budget, and its answer counts.
        assert answer(member, JUNK).status_code == 404
        recorded = answer(member, briefed)
        assert recorded.status_code == 200, recorded.text
        assert recorded.json()["response"] == "acknowledged"


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(settings: Settings) -> None:
    """No trusted proxy (the default): 127.0.0.1 is not trusted either, so varying
    `X-Forwarded-For` or `Forwarded` does not give one client many budgets (uvicorn alone
    would believe them from 127.0.0.1)."""
    direct = ack_settings_from(settings, ack_rate_limit="5/minute")
    assert direct.trusted_proxies == []
    with live(direct) as url, from_address(url, "127.0.0.1") as client:
        for n in range(5):
            response = answer(client, JUNK, **{"X-Forwarded-For": f"198.51.100.{n}"})
            assert response.status_code == 404
        assert_problem(answer(client, JUNK, **{"X-Forwarded-For": "198.51.100.99"}), 429)
        assert_problem(answer(client, JUNK, Forwarded="for=198.51.100.98"), 429)
        with from_address(url, MEMBER) as other:
            assert answer(other, JUNK).status_code == 404  # a real other address


def test_the_client_is_the_right_most_address_that_is_not_a_trusted_proxy() -> None:
    trusted = [ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]

    def xff(value: str) -> list[tuple[bytes, bytes]]:
        return [(b"x-forwarded-for", value.encode())]

    # The left-most entry is whatever the client wrote; the nearest proxies' are trusted.
    assert resolve("10.0.0.1", xff("6.6.6.6, 203.0.113.7, 10.1.1.1"), trusted) == "203.0.113.7"
    assert resolve("10.0.0.1", xff("203.0.113.7"), trusted) == "203.0.113.7"
    assert resolve("203.0.113.9", xff("6.6.6.6"), trusted) == "203.0.113.9"  # untrusted peer
    assert resolve("10.0.0.1", [], trusted) == "10.0.0.1"
    assert resolve("10.0.0.1", xff("garbage, 203.0.113.7"), trusted) == "203.0.113.7"
    assert resolve("10.0.0.1", xff("203.0.113.7, garbage"), trusted) == "10.0.0.1"
    assert resolve("10.0.0.1", xff("10.2.2.2"), trusted) == "10.2.2.2"  # all proxies
    assert resolve("::ffff:10.0.0.1", xff("203.0.113.7"), trusted) == "203.0.113.7"
    forwarded = [
        (b"forwarded", b'for=6.6.6.6, for="[2001:db8::1]:443";proto=https, for=198.51.100.2:80')
    ]
    assert resolve("2001:db8::5", forwarded, trusted) == "198.51.100.2"
    assert resolve("10.0.0.1", xff("203.0.113.7"), []) == "10.0.0.1"  # nothing trusted


def test_answers_go_through_when_the_limiter_storage_is_down(
    settings: Settings, briefed: str, capfd: pytest.CaptureFixture[str]
) -> None:
    nowhere = ack_settings_from(
        settings,
        ack_rate_limit="2/minute",
        ack_link_rate_limit="2/minute",
        rate_limit_storage=f"redis://127.0.0.1:{free_port()}/0",
    )
    with TestClient(create_app(nowhere), raise_server_exceptions=False) as client:

        def errors_counted() -> float:
            metrics = client.get("/metrics").text
            [line] = [
                x
                for x in metrics.splitlines()
                if x.startswith("rrmm_rate_limit_storage_errors_total ")
            ]
            return float(line.split()[-1])

        before = errors_counted()
        for _ in range(4):  # twice the budget, for a guess and for a valid link
            assert client.post("/v1/acks", json={"token": JUNK, "response": "x"}).status_code == 404
            recorded = client.post("/v1/acks", json={"token": briefed, "response": "acknowledged"})
            assert recorded.status_code == 200, recorded.text
        assert client.get(f"/ack/{briefed}").status_code == 200
        assert errors_counted() == before + 9
    logs = "".join(capfd.readouterr())
    assert logs.count('"event": "rate_limit_storage_unavailable"') == 1  # not one per request
    assert '"level": "warning"' in logs


def test_trusted_proxies_are_read_as_a_list_of_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRMM_TRUSTED_PROXIES", "127.0.0.2/32, 10.0.0.0/8,2001:db8::/32")
    assert [str(n) for n in Settings(mode="embedded").trusted_proxies] == [
        "127.0.0.2/32",
        "10.0.0.0/8",
        "2001:db8::/32",
    ]
    monkeypatch.setenv("RRMM_TRUSTED_PROXIES", '["192.168.0.0/16"]')
    assert [str(n) for n in Settings(mode="embedded").trusted_proxies] == ["192.168.0.0/16"]
    monkeypatch.setenv("RRMM_TRUSTED_PROXIES", "")
    assert Settings(mode="embedded").trusted_proxies == []
    monkeypatch.setenv("RRMM_TRUSTED_PROXIES", "not-a-network")
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(mode="embedded")
    monkeypatch.delenv("RRMM_TRUSTED_PROXIES")
    # uvicorn is told the same list, and believes nobody when it is empty.
    options = uvicorn_options(Settings(mode="embedded", trusted_proxies="127.0.0.2/32"))
    assert options["forwarded_allow_ips"] == ["127.0.0.2/32"]
    assert options["proxy_headers"] is True
    assert uvicorn_options(Settings(mode="embedded"))["proxy_headers"] is False
