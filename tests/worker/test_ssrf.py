"""The webhook SSRF guard at its resolve-and-connect step (worker.webhooks.UrlPolicy.pin): a refused URL raises
before any connection is made, so these tests send no packet anywhere. Host names that must resolve to private
addresses are given a resolver that answers as a hostile DNS server would; every other name is looked up for real
(only `localhost`, answered from the hosts file)."""

import socket

import pytest

from squeezer.store.settings import Settings
from squeezer.worker.webhooks import MAX_URL_CHARS, UrlPolicy, UrlRefused

REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (carrier NAT)
    "169.254.169.254",  # cloud metadata
    "100.100.100.200",  # Alibaba Cloud metadata
    "0.0.0.0",
    "224.0.0.251",
    "239.255.255.250",
    "255.255.255.255",
    "::1",
    "::",
    "fd00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
]


def answering(*addresses: str):
    """A resolver that answers every name with `addresses` (what a hostile or rebinding DNS server can do)."""

    def resolve(host, port, type=0):
        return [
            (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in addresses
        ]

    return resolve


def policy(**settings) -> UrlPolicy:
    return UrlPolicy.from_settings(Settings(**settings))


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_addresses_that_are_not_public_are_refused_as_literals(address):
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(UrlRefused, match="loopback, private"):
        policy().pin(f"https://{literal}/hook")


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_names_that_resolve_to_them_are_refused(address):
    with pytest.raises(UrlRefused, match="hooks.example.com resolves to"):
        policy().pin("https://hooks.example.com/hook", resolve=answering(address))


def test_a_name_is_refused_when_any_of_its_addresses_is():
    with pytest.raises(UrlRefused):
        policy().pin("https://hooks.example.com/", resolve=answering("93.184.216.34", "10.0.0.7"))


def test_localhost_is_refused_by_the_real_resolver():
    with pytest.raises(UrlRefused, match="localhost resolves to"):
        policy().pin("https://localhost:8443/hook")


def test_a_public_address_is_the_one_connected_to_with_the_name_kept_for_host_and_tls():
    target = policy().pin("https://Hooks.Example.com:8443/a/b?c=d", resolve=answering("93.184.216.34"))
    assert str(target.url) == "https://93.184.216.34:8443/a/b?c=d"
    assert (target.host_header, target.tls_name) == ("hooks.example.com:8443", "hooks.example.com")
    default_port = policy().pin("https://hooks.example.com/", resolve=answering("2606:2800:220:1::1"))
    assert str(default_port.url) == "https://[2606:2800:220:1::1]/"
    assert default_port.host_header == "hooks.example.com"


def test_the_resolver_is_asked_once():
    asked = []

    def resolve(host, port, type=0):
        asked.append(host)
        return answering("93.184.216.34")(host, port, type)

    policy().pin("https://hooks.example.com/", resolve=resolve)
    assert asked == ["hooks.example.com"]


@pytest.mark.parametrize(
    "allowed, url, address",
    [
        ("127.0.0.1", "http://127.0.0.1:9000/hook", "127.0.0.1"),
        ("hooks.internal", "http://hooks.internal/hook", "10.1.2.3"),
        ("10.1.0.0/16", "http://anything.internal/hook", "10.1.200.3"),
        ("fd00::/8, other.internal", "http://v6.internal/hook", "fd12::5"),
    ],
)
def test_allowed_hosts_and_networks_pass(allowed, url, address):
    target = policy(webhook_allowed_hosts=allowed, webhook_allow_http=True).pin(url, resolve=answering(address))
    assert target.address.compressed == address


def test_an_allowed_network_does_not_allow_its_neighbours():
    with pytest.raises(UrlRefused):
        policy(webhook_allowed_hosts="10.1.0.0/16").pin("https://x.internal/", resolve=answering("10.2.0.1"))


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://93.184.216.34/hook", "must be https"),
        ("ftp://93.184.216.34/hook", "must be https"),
        ("https://user:secret@93.184.216.34/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://93.184.216.34/" + "a" * MAX_URL_CHARS, "longer than"),
    ],
)
def test_malformed_and_plain_http_urls_are_refused(url, reason):
    with pytest.raises(UrlRefused, match=reason):
        policy().pin(url, resolve=answering("93.184.216.34"))


def test_plain_http_is_allowed_only_when_configured():
    target = policy(webhook_allow_http=True).pin("http://93.184.216.34/hook", resolve=answering("93.184.216.34"))
    assert target.url.scheme == "http"


def test_a_name_that_does_not_resolve_is_refused():
    def fails(host, port, type=0):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UrlRefused, match="does not resolve"):
        policy().pin("https://nowhere.example/", resolve=fails)
