"""Inbound bearer auth for the HTTP front, built from the SDK's own pieces.

The SDK's `BearerAuthBackend` turns `Authorization: Bearer ...` into a principal through a `TokenVerifier`,
`AuthContextMiddleware` makes it reachable from handlers (`get_access_token()`), and
`RequireAuthMiddleware` answers 401 with `WWW-Authenticate: Bearer ...`. This module supplies the verifier
(static tokens from the config, compared in constant time) and applies the gate to every route but the
health probes, so routes added later are covered without opting in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import AuthConfig

ANONYMOUS = "anonymous"  # the principal of every request when auth is off
# Probes carry no token and reveal nothing per principal. The dashboard page is a static shell (browsers cannot
# send a bearer header when navigating): its data comes from /status, which the token in `#token=` unlocks.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/dashboard"})
# What handlers see in `AccessToken.token`: never the credential, so nothing downstream can log or send it.
REDACTED = "<redacted>"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class StaticTokenVerifier:
    """Tokens from the config, one per principal. Every comparison runs, over equal-length digests."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = [(principal, _digest(token)) for principal, token in tokens.items()]

    async def verify_token(self, token: str) -> AccessToken | None:
        presented = _digest(token)
        found: str | None = None
        for principal, expected in self._digests:
            # No early exit: the time taken does not depend on which token (if any) matched.
            if hmac.compare_digest(presented, expected):
                found = principal
        if found is None:
            return None
        return AccessToken(token=REDACTED, client_id=found, scopes=[])


class RequireAuthOutsideProbes:
    """The SDK's 401 gate for every HTTP route except `OPEN_PATHS`; lifespan events pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gate = RequireAuthMiddleware(app, required_scopes=[])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS:
            await self.gate(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def auth_middleware(auth: AuthConfig) -> list[Middleware]:
    """The middleware stack that authenticates every request, or nothing when no tokens are configured."""
    if not auth.enabled:
        return []
    backend = BearerAuthBackend(StaticTokenVerifier(auth.tokens))
    return [
        Middleware(AuthenticationMiddleware, backend=backend),
        Middleware(AuthContextMiddleware),
        Middleware(RequireAuthOutsideProbes),
    ]


def current_principal() -> str:
    """Who made the request being served: the token's principal, or `ANONYMOUS` when auth is off."""
    token = get_access_token()
    return token.client_id if token is not None else ANONYMOUS
