"""Which webhook addresses are refused, literal or resolved."""

from __future__ import annotations

import ipaddress

import pytest

from app.netguard import (
    NonPublicAddress,
    UnsafeURL,
    check_webhook_url,
    client_host,
    is_public_address,
    refuse_non_public,
)
from tests.support.factories import assert_problem, member_payload


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "::",
        "198.18.0.1",
        "192.0.2.1",
        "240.0.0.1",
        "fec0::1",
        "feff::1",
        "::ffff:fec0:1",
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/x",
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://10.0.0.1/x",
        "http://93.184.215.14/x",
        "https://u:p@93.184.215.14/x",
        "https://93.184.215.14/x#frag",
        "https:///x",
        "https://93.184.215.14:99999/x",
        "https://93.184.215.14/a b",
        "https://metadata.google.internal/x",
        "https://no-such-host.invalid/x",
        "javascript:alert(1)",
        "https://2130706433/x",
        # Full-width digits and letters: yarl (hence aiohttp) connects to 127.0.0.1 / localhost.
        "https://１２７.０.０.１/x",
        "https://１２７.０.０.１:8443/x",
        "https://ｌｏｃａｌｈｏｓｔ/x",
        "https://ＭＥＴＡＤＡＴＡ.google.internal/x",
        "https://[fec0::1]/x",
    ],
)
def test_refused_urls(url):
    with pytest.raises(UnsafeURL):
        check_webhook_url(url, allow_private=False)


def test_accepted_public_url():
    url = "https://93.184.215.14:8443/hooks/rrmm?x=1"
    assert check_webhook_url(url, allow_private=False) == url


def test_private_and_http_allowed_only_with_the_setting():
    assert check_webhook_url("http://127.0.0.1:8080/x", allow_private=True)
    assert check_webhook_url("https://localhost/x", allow_private=True)
    with pytest.raises(UnsafeURL):
        check_webhook_url("ftp://127.0.0.1/x", allow_private=True)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://１２７.０.０.１:8443/x", "127.0.0.1"),
        ("https://ｌｏｃａｌｈｏｓｔ./x", "localhost"),
        ("https://EXAMPLE.org/x", "example.org"),
        ("https://bücher.example/x", "xn--bcher-kva.example"),
        ("https://[::FFFF:127.0.0.1]/x", "::ffff:7f00:1"),
    ],
)
def test_the_host_checked_is_the_host_the_client_connects_to(url, host):
    assert client_host(url) == host


def test_the_send_time_refusal_names_the_address():
    with pytest.raises(NonPublicAddress, match=r"non-public address 127\.0\.0\.1$"):
        refuse_non_public(
            [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("127.0.0.1")]
        )
    with pytest.raises(NonPublicAddress, match="fec0::1"):
        refuse_non_public([ipaddress.ip_address("fec0::1")])
    refuse_non_public([ipaddress.ip_address("93.184.215.14")])


@pytest.mark.parametrize(
    "url",
    [
        "https://１２７.０.０.１/hooks",
        "https://ｌｏｃａｌｈｏｓｔ/hooks",
        "https://[fec0::1]/hooks",
    ],
)
def test_the_members_api_refuses_normalised_loopback_urls(client, operator, url):
    created = client.post("/v1/members", json=member_payload(webhook_url=url), headers=operator)
    assert_problem(created, 422, "webhook_url")

    ok = client.post(
        "/v1/members",
        json=member_payload(webhook_url="https://93.184.215.14/hooks"),
        headers=operator,
    )
    assert ok.status_code == 201, ok.text
    changed = client.patch(
        f"/v1/members/{ok.json()['id']}", json={"webhook_url": url}, headers=operator
    )
    assert_problem(changed, 422, "webhook_url")
