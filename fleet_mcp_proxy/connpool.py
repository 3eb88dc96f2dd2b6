"""Connection pools that every backend link of this event loop shares, closed when the last link using one stops;
and the turns links take to open.

Each link used to open its own: an httpx pool for its SDK client and a fast-lane pool, so an idle episode kept
two keep-alive connections to its environment besides the GET stream, each costing both the proxy and the
environment a socket and its buffers. Now every link's SDK client sends through one httpx transport, and links to
the same URL (one environment server that many episodes use) share one lane pool. Pools are per event loop
(`RunVar`): a connection belongs to the loop that opened it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import httpx2
from anyio.lowlevel import RunVar

from .fastlane.http1 import Http1Pool
from .tls import client_context

# GET streams hold a connection each for as long as they are open, so the shared httpx pool cannot cap them.
_LIMITS = httpx2.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=4.0)


# Handshakes in flight at once. A storm of arrivals otherwise starts thousands together, each starved of the one
# event loop, and they time out together; queued, each finishes in its usual time once its turn comes.
_OPENING = 32


@dataclass
class _Pools:
    lanes: dict[str, tuple[Http1Pool, int]] = field(default_factory=dict)
    http: httpx2.AsyncHTTPTransport | None = None
    http_users: int = 0
    opening: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(_OPENING))


_POOLS: RunVar[_Pools] = RunVar("fleet_mcp_proxy_pools")


def _pools() -> _Pools:
    try:
        return _POOLS.get()
    except LookupError:
        pools = _Pools()
        _POOLS.set(pools)
        return pools


def opening_slots() -> anyio.CapacityLimiter:
    """Turns for opening a backend link (its handshake and first lists), shared by every episode of the loop."""
    return _pools().opening


def lane_pool(url: str) -> Http1Pool:
    """The lane pool for `url`, counted once more; give it back with `release_lane_pool(url)`.

    Raises:
        ValueError: the URL is not plain http or https.
    """
    pools = _pools()
    pool, users = pools.lanes.get(url) or (Http1Pool(url), 0)
    pools.lanes[url] = (pool, users + 1)
    return pool


async def release_lane_pool(url: str) -> None:
    pools = _pools()
    pool, users = pools.lanes[url]
    if users > 1:
        pools.lanes[url] = (pool, users - 1)
        return
    del pools.lanes[url]
    with anyio.CancelScope(shield=True):
        await pool.aclose()


def http_transport() -> httpx2.AsyncHTTPTransport:
    """The httpx transport every link's SDK client sends through, counted once more (`release_http_transport`)."""
    pools = _pools()
    if pools.http is None:
        pools.http = httpx2.AsyncHTTPTransport(verify=client_context(), trust_env=False, limits=_LIMITS)
    pools.http_users += 1
    return pools.http


async def release_http_transport() -> None:
    pools = _pools()
    pools.http_users -= 1
    if pools.http_users == 0 and pools.http is not None:
        transport, pools.http = pools.http, None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await transport.aclose()
