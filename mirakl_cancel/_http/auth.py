"""Bearer tokens: a fixed one, or OAuth2 client credentials fetched and cached.

Secrets never leave these objects except in the one place they must: the token
request's form body and the `Authorization` header. Their reprs hide them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl as ssl_module
from typing import Protocol, runtime_checkable

import aiohttp
from yarl import URL

from .._clock import SYSTEM_CLOCK, Clock, current_clock
from .._constants import (
    DEFAULT_TOKEN_LIFETIME,
    DEFAULT_TOKEN_URL,
    MAX_TOKEN_ANSWER_BYTES,
    MAX_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME,
    TOKEN_REFRESH_MARGIN,
    TOKEN_REQUEST_TIMEOUT,
)
from .._serde import AnswerTooLarge, loads, read_bounded
from ..errors import AuthenticationError, ServerError, TransportError, api_error_class
from .net import Network, current_network
from .urls import check_http_url

__all__ = ["Auth", "ClientCredentials", "StaticToken", "credential_identity"]

logger = logging.getLogger("mirakl_cancel")

def token_lifetime(expires_in: object) -> float:
    """Seconds a fetched token is used, from the answer's `expires_in` (default 1 h),
    clamped to [MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME]; unreadable values give 1 h."""
    if isinstance(expires_in, bool):
        return DEFAULT_TOKEN_LIFETIME
    try:
        lifetime = float(expires_in)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float: "forever"
        lifetime = MAX_TOKEN_LIFETIME
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME
    if lifetime != lifetime:  # NaN
        return DEFAULT_TOKEN_LIFETIME
    return min(max(lifetime, MIN_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME)


@runtime_checkable
class Auth(Protocol):
    """What the transport needs from an authentication scheme."""

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A bearer token that is valid now (fetching one if needed)."""
        ...

    def invalidate(self, token: str) -> bool:
        """Forget `token` after a 401; True when a fresh token can be obtained."""
        ...


class StaticToken:
    """A token you already have (e.g. from your own secret store); it is never refreshed."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("StaticToken needs a non-empty token")
        self._token = token

    async def token(self, session: aiohttp.ClientSession) -> str:
        """The token given at construction."""
        return self._token

    def cached_token(self) -> str:
        """`token()` without awaiting (the transport's fast path)."""
        return self._token

    def invalidate(self, token: str) -> bool:
        """A static token cannot be renewed: a 401 is final."""
        return False

    def __repr__(self) -> str:
        return "StaticToken(token='***')"

    __str__ = __repr__


def _usable_token(token: str) -> bool:
    return 0 < len(token) <= 16384 and token.isascii() and token.isprintable() \
        and token.strip() == token


def _digest(*parts: str) -> str:
    """A one-way name for a credential: it tells credentials apart, and reveals none."""
    hasher = hashlib.sha256(b"mirakl-cancel credential\0")
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return hasher.hexdigest()[:32]


def credential_identity(auth: Auth) -> str:
    """Which credential `auth` is, for sharing the polling ceiling between clients.

    The API counts reads per credential, so two clients with the same token (or the
    same OAuth client) share one ceiling. Only a hash is kept, never the secret; an
    Auth of your own is its own identity (per object) unless it has an `identity`.
    """
    if isinstance(auth, StaticToken):
        return _digest("static", auth._token)
    if isinstance(auth, ClientCredentials):
        return _digest("client-credentials", auth.token_url, auth.client_id)
    identity = getattr(auth, "identity", None)
    if isinstance(identity, str) and identity:
        return _digest("custom", identity)
    return f"object-{id(auth):x}"


def _check_token_url(token_url: str) -> None:
    """Refuse a token endpoint the client secret would reach in clear text.

    The base URL gets the same rule (`check_http_url`); the token URL carries an even
    more precious secret, so plain http is allowed only on loopback (the simulator).
    """
    check_http_url(token_url, "token_url", "the client secret")


class ClientCredentials:
    """OAuth2 client-credentials grant, cached until shortly before the token expires.

    Many coroutines asking at once share one token request (a lock around the fetch),
    so a burst of cancels at start-up costs one call to the token endpoint, not one each.
    The expiry is kept on the clock of the client whose request fetched the token
    (`MiraklConnectClient(clock=)`, the real clock by default): a test's manual clock
    expires tokens too.
    """

    __slots__ = ("_client_id", "_client_secret", "_clock", "_expires_at", "_lock", "_network",
                 "_token", "refresh_margin", "timeout", "token_url")

    def __init__(self, client_id: str, client_secret: str, token_url: str = DEFAULT_TOKEN_URL,
                 *, refresh_margin: float = TOKEN_REFRESH_MARGIN,
                 timeout: float = TOKEN_REQUEST_TIMEOUT, proxy: str | None = None,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        if not client_id or not client_secret:
            raise ValueError("ClientCredentials needs a client_id and a client_secret")
        _check_token_url(token_url)
        self._client_id = client_id
        self._client_secret = client_secret
        self.token_url = token_url
        #: Seconds before expiry at which the token is renewed; capped to a tenth of its life.
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        #: Own proxy/TLS settings; None: those of the client asking for the token.
        self._network = Network(proxy=proxy, ssl=ssl) if proxy is not None or ssl is not None \
            else None
        self._token: str | None = None
        self._expires_at = 0.0
        #: The clock `_expires_at` is on: that of the client whose request fetched it.
        self._clock: Clock = SYSTEM_CLOCK
        self._lock = asyncio.Lock()

    @property
    def client_id(self) -> str:
        """The client id (not a secret, shown in reprs so you can tell clients apart)."""
        return self._client_id

    def __repr__(self) -> str:
        return (f"ClientCredentials(client_id={self._client_id!r}, client_secret='***', "
                f"token_url={self.token_url!r})")

    __str__ = __repr__

    def _valid(self) -> str | None:
        if self._token is not None and self._clock.monotonic() < self._expires_at:
            return self._token
        return None

    def cached_token(self) -> str | None:
        """The cached token if it is valid now, else None (then `token()` fetches one):
        the transport's fast path, without awaiting."""
        return self._valid()

    async def token(self, session: aiohttp.ClientSession) -> str:
        """The cached token, or a new one when it is missing or about to expire."""
        cached = self._valid()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._valid()  # another coroutine may have fetched it meanwhile
            if cached is not None:
                return cached
            token, lifetime = await self._fetch(session)
            margin = min(self.refresh_margin, lifetime / 10)
            self._token = token
            # Read once per fetch, not per request: the expiry is kept on this clock.
            self._clock = current_clock.get() or SYSTEM_CLOCK
            self._expires_at = self._clock.monotonic() + max(lifetime - margin, 0.0)
            return token

    def invalidate(self, token: str) -> bool:
        """Drop `token` (if still cached) so that the next call fetches a new one."""
        if self._token == token:
            self._token = None
            self._expires_at = 0.0
        return True

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._client_secret}
        logger.debug("requesting an access token from %s", self.token_url)
        failure: str | None = None
        try:
            # No redirects: a 307/308 would post the secret again, to wherever it points.
            network = self._network or current_network.get() or Network()
            headers = {"Accept": "application/json"}
            proxy, proxy_headers = network.route(URL(self.token_url), headers)
            async with session.post(
                self.token_url, data=form, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout), allow_redirects=False,
                proxy=proxy, proxy_headers=proxy_headers, ssl=network.ssl,
            ) as response:
                status = response.status
                raw = await read_bounded(response, MAX_TOKEN_ANSWER_BYTES)
        except AnswerTooLarge as exc:
            failure = str(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            failure = type(exc).__name__
        if failure is not None:
            # Raised outside the except block, so that no aiohttp exception (holding the
            # request) stays in the chain as __context__.
            raise TransportError(f"token request to {self.token_url} failed: {failure}")
        try:
            # Bytes, not text(): an undecodable body must be "no JSON", not a crash that
            # escapes the library's error tree (UnicodeDecodeError is a ValueError).
            # loads() bounds the nesting too: deep JSON is "no JSON", not RecursionError.
            data = loads(raw) if raw else None
        except ValueError:
            data = None
        if status != 200:
            message = "token request refused"
            code = None
            if isinstance(data, dict):
                code = data.get("error") if isinstance(data.get("error"), str) else None
                message = str(data.get("error_description") or data.get("message") or message)
            cls = AuthenticationError if status in (400, 401, 403) else api_error_class(status)
            raise cls(status, code, message)
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise ServerError(status, None, "token endpoint answered without an access_token")
        if not _usable_token(data["access_token"]):
            # It goes into a header: a control character or non-ASCII text would make
            # every request fail before sending (or split the header).
            raise ServerError(status, None, "token endpoint answered an unusable access_token")
        return data["access_token"], token_lifetime(data.get("expires_in"))
