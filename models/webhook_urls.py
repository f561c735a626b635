"""The SSRF guard of webhook URLs: only http(s) URLs whose host resolves to public addresses.

A webhook URL is the one place where a client of genq makes genq's network send a request, so a
URL naming an address inside genq's network (the metadata service at 169.254.169.254, Redis on
loopback, a private database) is refused. It is checked twice: at submit (a 422 naming the
reason) and at delivery, right before connecting, on the addresses the connection then uses (a
name that resolved to a public address at submit may resolve to a private one later: DNS
rebinding). `GENQ_WEBHOOK_ALLOW_PRIVATE=true` lifts the address rule (tests, private networks).
Nothing here logs or repeats a URL: only its host may be shown (user info may hold credentials).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from models.errors import InvalidRequest
from models.text_rules import is_control

#: a URL longer than this is refused (it is stored on every job that names it)
MAX_URL_LENGTH = 2000
SCHEMES = ("http", "https")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(InvalidRequest):
    """A webhook URL that genq will not call, and why (no URL in the message: only its host);
    at submit it is a 422."""


@dataclass(frozen=True)
class Target:
    """Where a delivery connects: the URL's host and port, and the checked addresses."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def host_of(url: str) -> str:
    """What of a URL may be shown: its host (never its path, query or user info)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def syntax_problem(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL with a host, or None (no network)."""
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(is_control(ch) and not ch.isspace() for ch in url):
        return "contains a control character"  # NUL could not even be stored
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in SCHEMES:
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if any(ch.isspace() for ch in url):
        return "contains whitespace"
    return None


def address_problem(address: Address) -> str | None:
    """Why genq must not connect to `address`, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            problem = address_problem(embedded)
            return f"embeds an IPv4 address that {problem}" if problem else None
    for name, refused in (
        ("is unspecified", address.is_unspecified),
        ("is loopback", address.is_loopback),
        ("is link-local", address.is_link_local),
        ("is multicast", address.is_multicast),
        ("is private", address.is_private),
        ("is reserved", address.is_reserved),
    ):
        if refused:
            return name
    if not address.is_global:  # shared (100.64/10), documentation ranges, …
        return "is not a public address"
    return None


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address `host` resolves to (an IP literal resolves to itself), in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"host {host} does not resolve ({type(exc).__name__})") from None
    return tuple(dict.fromkeys(info[4][0] for info in infos))


def check_url(url: str, *, allow_private: bool) -> Target:
    """The checked target of `url`; UrlRefused naming the reason when genq must not call it.

    Every address the host resolves to must be public (one private answer among public ones
    is refused too: the connection could pick it)."""
    problem = syntax_problem(url)
    if problem:
        raise UrlRefused(f"webhook_url {problem}")
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text.split("%", 1)[0]))
            if problem:
                raise UrlRefused(
                    f"webhook_url host {host} resolves to {text}, which {problem} "
                    "(only public addresses are called; GENQ_WEBHOOK_ALLOW_PRIVATE=true "
                    "lifts this)"
                )
    return Target(scheme=scheme, host=host, port=port, addresses=addresses)
