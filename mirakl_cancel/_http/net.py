"""How a client reaches its hosts: which proxy (if any) and which TLS settings.

Why not simply `aiohttp.ClientSession(trust_env=True)`? Three reasons:

- aiohttp then looks the environment up on a worker thread for *every* request; here
  the answer is computed once per host and cached, so a proxy costs nothing per cancel;
- a proxy from the environment is never used for a loopback host (the simulator, a
  test server): a developer's or CI runner's `HTTPS_PROXY` must not swallow traffic to
  127.0.0.1 just because `NO_PROXY` forgot it. An explicit `proxy=` is always used;
- `trust_env` also makes aiohttp read `~/.netrc` credentials into requests; the token
  endpoint must receive only what this library sends.

The token fetch (`ClientCredentials`) uses the settings of the client asking for the
token (through a context variable the transport sets around that call), unless the
credentials were given their own.
"""

from __future__ import annotations

import base64
import contextvars
import ssl as ssl_module
import urllib.request
from collections.abc import Mapping
from typing import TypedDict

from yarl import URL

from .urls import is_loopback_host

__all__ = ["Network", "NetworkOptions", "current_network", "network_options_from_env"]

#: The network settings of the client whose coroutine is running (for the token fetch).
current_network: contextvars.ContextVar[Network | None] = contextvars.ContextVar(
    "mirakl_cancel_network", default=None)

#: A proxy URL (without credentials) and the headers that authenticate to it.
_Proxy = tuple[URL | None, Mapping[str, str] | None]
_NO_PROXY: _Proxy = (None, None)


def _split_proxy(value: str | URL) -> _Proxy:
    """A proxy URL and its credentials apart, so that the URL can be shown safely."""
    try:
        url = URL(value)
    except (TypeError, ValueError):
        raise ValueError("proxy must be an http(s) URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        # Never echo the value: it may hold the proxy's password.
        raise ValueError("proxy must be an http(s) URL such as http://proxy.example:3128")
    headers = None
    if url.user is not None:
        # A header rather than aiohttp's BasicAuth (deprecated in aiohttp 3.14).
        pair = f"{url.user}:{url.password or ''}".encode()
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        url = url.with_user(None)
    return url, headers


class Network:
    """A client's proxy and TLS settings; `proxy_for(url)` answers per host, cached."""

    __slots__ = ("_cache", "_proxy", "ssl", "trust_env")

    def __init__(self, *, proxy: str | URL | None = None,
                 ssl: ssl_module.SSLContext | None = None, trust_env: bool = True) -> None:
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError("ssl must be an ssl.SSLContext (e.g. ssl.create_default_context("
                            "cafile=...)); certificate checks cannot be turned off")
        self._proxy = _split_proxy(proxy) if proxy is not None else None
        #: What aiohttp's `ssl=` takes: the caller's context, or True (default checks).
        self.ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self.trust_env = trust_env
        self._cache: dict[tuple[str, str, int | None], _Proxy] = {}

    def __repr__(self) -> str:
        proxy = self._proxy[0] if self._proxy else None  # credentials are never shown
        return f"Network(proxy={str(proxy) if proxy else None!r}, trust_env={self.trust_env})"

    @property
    def proxy(self) -> URL | None:
        """The explicit proxy, without its credentials."""
        return None if self._proxy is None else self._proxy[0]

    def route(self, url: URL, headers: dict[str, str]) -> _Proxy:
        """`proxy_for(url)`, with the proxy's credentials put where aiohttp needs them:
        aiohttp sends `proxy_headers` only on a CONNECT (https), so for a plain-http
        target they go into the request's own `headers`, which a forward proxy reads."""
        proxy, proxy_headers = self.proxy_for(url)
        if proxy_headers is not None and url.scheme == "http":
            headers.update(proxy_headers)
            return proxy, None
        return proxy, proxy_headers

    def proxy_for(self, url: URL) -> _Proxy:
        """The proxy to reach `url` through and its auth headers, or (None, None)."""
        if self._proxy is not None:
            return self._proxy
        if not self.trust_env:
            return _NO_PROXY
        key = (url.scheme, url.host or "", url.explicit_port)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = _env_proxy(url)
        return found


def _env_proxy(url: URL) -> _Proxy:
    """`HTTP(S)_PROXY` / `NO_PROXY` for `url`, as curl and requests read them."""
    host = url.host or ""
    if is_loopback_host(host):
        return _NO_PROXY
    proxies = urllib.request.getproxies()
    candidate = proxies.get(url.scheme)
    if not candidate:
        return _NO_PROXY
    target = host if url.explicit_port is None else f"{host}:{url.explicit_port}"
    if urllib.request.proxy_bypass(target):
        return _NO_PROXY
    try:
        return _split_proxy(candidate)
    except ValueError:
        return _NO_PROXY  # an unusable proxy variable: as curl does, go direct


class NetworkOptions(TypedDict, total=False):
    """Keyword arguments of `MiraklConnectClient` for its network."""

    proxy: str
    ssl: ssl_module.SSLContext


def network_options_from_env(environ: Mapping[str, str]) -> NetworkOptions:
    """The CLI's network settings: `MIRAKL_PROXY`, `MIRAKL_CA_BUNDLE`, and
    `MIRAKL_CLIENT_CERT` (+ `MIRAKL_CLIENT_KEY`) for mutual TLS.

    Returns keyword arguments for `MiraklConnectClient` (empty when none is set);
    `HTTP(S)_PROXY` / `NO_PROXY` need nothing: the client reads them by default.
    """
    options: NetworkOptions = {}
    if environ.get("MIRAKL_PROXY"):
        options["proxy"] = environ["MIRAKL_PROXY"]
        _split_proxy(options["proxy"])  # a bad one is refused here, before any job starts
    cafile = environ.get("MIRAKL_CA_BUNDLE") or None
    cert = environ.get("MIRAKL_CLIENT_CERT") or None
    if cafile or cert:
        try:
            context = ssl_module.create_default_context(cafile=cafile)
        except (OSError, ssl_module.SSLError) as exc:
            raise ValueError(f"MIRAKL_CA_BUNDLE: cannot load {cafile}: {exc}") from None
        if cert:
            try:
                context.load_cert_chain(cert, environ.get("MIRAKL_CLIENT_KEY") or None)
            except (OSError, ssl_module.SSLError) as exc:
                raise ValueError(f"MIRAKL_CLIENT_CERT: cannot load {cert}: {exc}") from None
        options["ssl"] = context
    return options
