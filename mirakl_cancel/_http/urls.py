"""URLs the client builds and the hosts it trusts: one home for both rules.

Ids are percent-encoded as one path segment each, so that no id can reach another
route; plain http (and scaled time) is allowed only towards this machine, where the
simulator lives, so that no token or secret travels in clear text to a remote host.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

from yarl import URL

from ..errors import ValidationError, ValidationIssue

__all__ = ["check_base_url", "encode_segment", "is_loopback_host", "is_loopback_url"]

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine: `localhost` or a loopback IP (not `127.evil.com`)."""
    if host.lower() in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: A segment of unreserved characters only, which `quote(..., safe="")` leaves as it is.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+").fullmatch


def encode_segment(value: str) -> str:
    """Percent-encode one path segment so that no id can reach another route.

    Everything but unreserved characters is encoded, and a segment made only of dots
    is encoded too, since `.` and `..` would otherwise be resolved as path steps.
    """
    if _UNRESERVED(value) is not None and value.strip("."):
        return value  # nothing to encode: the common case, without quote()'s cost
    encoded = quote(value, safe="")
    if encoded and set(encoded) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return encoded


def is_loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (the simulator), where scaled time is allowed."""
    return is_loopback_host(URL(url).host or "")


def check_no_userinfo(url: URL, name: str) -> None:
    """Refuse `user:pass@` in a URL: the password would end up in journals, logs and
    messages. The error does not repeat the URL, so the secret is not echoed either."""
    if url.user is not None or url.password is not None:
        raise ValidationError([ValidationIssue(
            name, "must not contain a user name or password (user:pass@); pass credentials "
                  "with StaticToken or ClientCredentials instead")])


def check_http_url(text: str, name: str, secret: str) -> URL:
    """`text` (the argument `name`) as a URL a secret may be sent to: http(s) with a
    host, no userinfo, and plain http only on loopback, where the simulator lives;
    `secret` says what would travel in clear text otherwise. The one rule for the
    base URL and the token endpoint."""
    try:
        url = URL(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an http(s) URL") from None
    check_no_userinfo(url, name)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name} must be an http(s) URL, not {text!r}")
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise ValueError(f"plain http is only allowed for loopback hosts: {secret} would "
                         f"travel in clear text to {url.host}")
    return url


def check_base_url(base_url: str) -> URL:
    """The API's base URL (`check_http_url`), without a trailing slash."""
    return check_http_url(base_url.rstrip("/"), "base_url", "tokens")
