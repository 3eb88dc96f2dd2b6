"""One backend session as the fast lane addresses it: a connection pool and the session's headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .http1 import Http1Pool

_HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"})


@dataclass(frozen=True, slots=True)
class LaneTarget:
    pool: Http1Pool
    headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def for_session(
        cls, pool: Http1Pool, extra: Mapping[str, str], session_id: str, protocol_version: str | None
    ) -> LaneTarget:
        """The SDK client's session with the backend, shared: same id, same protocol version, same headers."""
        headers = [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"mcp-session-id", session_id.encode("ascii")),
        ]
        if protocol_version:
            headers.append((b"mcp-protocol-version", protocol_version.encode("ascii")))
        return cls(pool, (*headers, *extra_headers(extra)))


def extra_headers(extra: Mapping[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    """An environment's own headers (its key, say) as sent on every request: never hop-by-hop or session ones."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in extra.items()
        if name.lower() not in _HOP_BY_HOP and name.lower() not in ("mcp-session-id", "mcp-protocol-version")
    )
