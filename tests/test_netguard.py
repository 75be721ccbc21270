"""Which webhook addresses are refused, literal or resolved."""

from __future__ import annotations

import ipaddress

import pytest

from app.netguard import UnsafeURL, check_webhook_url, is_public_address


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "100.64.0.1",
     "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
     "fc00::1", "fd00:ec2::254", "::ffff:10.0.0.1", "2002:7f00:1::1", "::", "198.18.0.1",
     "192.0.2.1", "240.0.0.1"],
)  # fmt: skip
def test_non_public_addresses(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["https://localhost/x", "https://127.0.0.1/x", "https://[::1]/x", "https://10.0.0.1/x",
     "http://93.184.215.14/x", "https://u:p@93.184.215.14/x", "https://93.184.215.14/x#frag",
     "https:///x", "https://93.184.215.14:99999/x", "https://93.184.215.14/a b",
     "https://metadata.google.internal/x", "https://no-such-host.invalid/x", "javascript:alert(1)",
     "https://2130706433/x"],
)  # fmt: skip
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
