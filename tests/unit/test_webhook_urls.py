"""The SSRF guard and the delivery policy as tables (no network but loopback name lookups)."""

from __future__ import annotations

import ipaddress

import pytest

from models.webhook_urls import UrlRefused, address_problem, check_url, syntax_problem
from models.webhooks import EXHAUSTED, GONE, OK, RETRY, decide, retry_wait_s


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "is loopback"),
        ("::1", "is loopback"),
        ("10.0.0.1", "is private"),
        ("172.16.5.4", "is private"),
        ("192.168.1.1", "is private"),
        ("fd00::1", "is private"),
        ("169.254.169.254", "is link-local"),
        ("fe80::1", "is link-local"),
        ("224.0.0.1", "is multicast"),
        ("ff02::1", "is multicast"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("240.0.0.1", "is private"),  # 240/4 is both: the first name wins
        ("100.64.0.1", "is not a public address"),
        ("192.0.2.1", "is private"),
        ("::ffff:127.0.0.1", "embeds an IPv4 address that is loopback"),
        ("::ffff:10.0.0.1", "embeds an IPv4 address that is private"),
        ("2002:7f00:1::", "embeds an IPv4 address that is loopback"),
    ],
)
def test_only_public_unicast_addresses_pass(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.com/hook", None),
        ("http://user:pw@example.com:8080/h?x=1", None),
        ("ftp://example.com/", "must be an http:// or https:// URL"),
        ("example.com/hook", "must be an http:// or https:// URL"),
        ("http:///path", "has no host"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http://exa mple.com/", "contains whitespace"),
        ("https://example.com/" + "a" * 2000, "is longer than 2000 characters"),
    ],
)
def test_url_syntax(url, problem):
    assert syntax_problem(url) == problem


def test_a_hostname_resolving_to_loopback_is_refused_and_allowed_with_the_setting():
    with pytest.raises(UrlRefused) as refused:
        check_url("http://localhost:8080/hook", allow_private=False)
    assert "host localhost resolves to" in refused.value.detail
    assert "is loopback" in refused.value.detail
    target = check_url("http://localhost:8080/hook", allow_private=True)
    assert target.port == 8080 and target.host == "localhost"
    assert {"127.0.0.1", "::1"} & set(target.addresses)


def test_credentials_are_never_in_a_refusal():
    with pytest.raises(UrlRefused) as refused:
        check_url("http://admin:s3cret@127.0.0.1/hook?token=abc", allow_private=False)
    assert "s3cret" not in refused.value.detail and "token" not in refused.value.detail
    assert "admin" not in refused.value.detail


def test_decimal_ip_forms_are_resolved_before_the_check():
    with pytest.raises(UrlRefused, match="is loopback"):
        check_url("http://2130706433/", allow_private=False)


@pytest.mark.parametrize(
    ("status", "number", "outcome"),
    [
        (200, 1, OK),
        (204, 8, OK),
        (410, 1, GONE),
        (500, 1, RETRY),
        (302, 1, RETRY),
        (None, 7, RETRY),
        (None, 8, EXHAUSTED),
        (404, 8, EXHAUSTED),
    ],
)
def test_what_an_answer_means(status, number, outcome):
    assert decide(status, number=number, max_attempts=8) == outcome


def test_waits_grow_up_to_the_cap():
    waits = [retry_wait_s(n, base_s=5, max_s=3600) for n in range(1, 8)]
    assert waits == [5, 20, 80, 320, 1280, 3600, 3600]


@pytest.mark.parametrize(
    ("url", "address", "pinned", "host", "sni"),
    [
        (
            "https://hooks.example.com/a?b=1",
            "93.184.216.34",
            "https://93.184.216.34/a?b=1",
            "hooks.example.com",
            "hooks.example.com",
        ),
        (
            "http://hooks.example.com:8080",
            "2606:4700::1",
            "http://[2606:4700::1]:8080/",
            "hooks.example.com:8080",
            None,
        ),
    ],
)
def test_the_request_goes_to_the_checked_address_with_the_urls_name(
    url, address, pinned, host, sni
):
    import httpx

    from models.webhook_urls import Target
    from worker.webhooks import pinned_request

    parts = httpx.URL(url)
    target = Target(
        scheme=parts.scheme,
        host=parts.host,
        port=parts.port or (443 if parts.scheme == "https" else 80),
        addresses=(address,),
    )
    request = pinned_request(httpx.AsyncClient(), url, target, {"webhook-id": "msg_1"}, "{}")
    assert str(request.url) == pinned
    assert request.headers["host"] == host and request.headers["webhook-id"] == "msg_1"
    assert request.extensions.get("sni_hostname") == sni
    assert "authorization" not in request.headers


def test_url_credentials_become_basic_auth_and_leave_the_url():
    import base64

    import httpx

    from models.webhook_urls import Target
    from worker.webhooks import pinned_request

    url = "https://us%40er:p%3Ass@hooks.example.com/h"
    target = Target(
        scheme="https", host="hooks.example.com", port=443, addresses=("93.184.216.34",)
    )
    request = pinned_request(httpx.AsyncClient(), url, target, {}, "{}")
    assert "us" not in str(request.url) and request.headers["host"] == "hooks.example.com"
    assert base64.b64decode(request.headers["authorization"].split()[1]) == b"us@er:p:ss"
