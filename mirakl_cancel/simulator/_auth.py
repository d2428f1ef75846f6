"""Opaque bearer tokens with a (scaled) lifetime."""

from __future__ import annotations

import secrets

from ._clock import Clock

__all__ = ["TokenStore"]


class TokenStore:
    """Issues and checks tokens.

    Tokens are random opaque strings rather than JWTs: a client must treat
    them as opaque anyway, and one that tries to decode them should fail here
    before it fails in production.
    """

    def __init__(self, clock: Clock, ttl: float) -> None:
        self._clock = clock
        self.ttl = ttl
        self._expiry: dict[str, float] = {}
        #: The credential (client id) each token was issued to: per-credential ceilings
        #: such as v2-listOrders' hold across every token of one credential.
        self._owner: dict[str, str] = {}

    def issue(self, ttl: float | None = None, owner: str = "") -> tuple[str, float]:
        """Return ``(token, real_lifetime_seconds)``; ``ttl`` in API seconds."""
        lifetime = self._clock.scaled(self.ttl if ttl is None else ttl)
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        if len(self._expiry) >= 1024:
            # Long benchmarks with short TTLs would otherwise grow this forever.
            self._expiry = {t: exp for t, exp in self._expiry.items() if exp > now}
            self._owner = {t: who for t, who in self._owner.items() if t in self._expiry}
        self._expiry[token] = now + lifetime
        self._owner[token] = owner
        return token, lifetime

    def owner(self, header: str | None) -> str:
        """The credential behind a (checked) ``Authorization`` header."""
        return self._owner.get((header or "").partition(" ")[2].strip(), "")

    def check(self, header: str | None) -> str | None:
        """Return why ``Authorization`` is refused, or None when the token is valid."""
        if not header:
            return "Missing bearer token"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Authorization header must be 'Bearer <token>'"
        expiry = self._expiry.get(token.strip())
        if expiry is None:
            return "Unknown bearer token"
        if self._clock.now() >= expiry:
            return "Bearer token expired"
        return None

    def revoke_all(self) -> None:
        """Invalidate every token, e.g. to test a client's refresh-on-401."""
        self._expiry.clear()
        self._owner.clear()
