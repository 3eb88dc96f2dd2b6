"""Operator endpoints of the HTTP front: `/readyz`, `/status` (JSON) and `/dashboard` (one HTML page).

They sit in `build_app`'s routes, so the app-wide auth applies (it exempts the health probes). `/status`
shows a principal only its own episodes when auth names one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.resources import files

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..providers.base import Instance
from ..provision_latency import PROVISIONING
from ..store import EpisodeRecord, EpisodeStore, EpisodeSummary
from ..store.records import Lease, OwnedCount, OwnerRecord
from ..sweep import LEASE as SWEEP_LEASE
from ..sweep import Sweeper
from .episodes import ProxyState, StateHolder
from .status import StatusInputs, SweepFigures, build_status, readiness, visible

logger = logging.getLogger(__name__)
STORE_TIMEOUT = 2.0  # a probe or a dashboard poll never waits longer on the episode store
LIVE_RECORDS = 25  # store reads per /status: the most recently active live episodes only
RECENT_SUMMARIES = 200
_NO_STORE = {"Cache-Control": "no-store"}


def _principal() -> str | None:
    token = get_access_token()
    return token.client_id if token is not None else None


def _store_state(state: ProxyState) -> str:
    if state.recorder.store is not None:
        return "ok"
    return "unavailable" if state.config.record_episodes else "disabled"


def _time_left(state: ProxyState) -> Callable[[Instance], float | None]:
    """The sooner of the platform's TTL and the heartbeat lease, in seconds; None when neither applies."""
    keeper = state.pool.keeper

    def left(instance: Instance) -> float | None:
        candidates = [keeper.time_left(instance.instance_id)]
        if instance.expires_at is not None:
            candidates.append(max(0.0, instance.expires_at - time.time()))
        known = [c for c in candidates if c is not None]
        return min(known) if known else None

    return left


async def _read_store(
    store: EpisodeStore, ids: list[str], recent_limit: int
) -> tuple[dict[str, EpisodeRecord], list[EpisodeSummary], str]:
    records: dict[str, EpisodeRecord] = {}
    try:
        with anyio.fail_after(STORE_TIMEOUT):
            for episode_id in ids:
                record = await store.get(episode_id)
                if record is not None:
                    records[episode_id] = record
            recent = await store.list(limit=recent_limit)
    except Exception:  # a slow or broken store degrades the view, never the proxy
        logger.warning("the episode store did not answer a status read within %g s", STORE_TIMEOUT)
        return records, [], "unavailable"
    return records, recent, "ok"


async def _cluster(store: EpisodeStore) -> tuple[list[OwnerRecord], dict[str, OwnedCount], Lease | None]:
    """The replicas on the store, what each owns, and who holds the sweep lease."""
    try:
        with anyio.fail_after(STORE_TIMEOUT):
            return await store.owners(), await store.owned_counts(), await store.lease(SWEEP_LEASE)
    except Exception:  # a slow store degrades the view only
        logger.warning("the episode store did not list its replicas within %g s", STORE_TIMEOUT)
        return [], {}, None


def _figures(sweeper: Sweeper | None) -> SweepFigures | None:
    if sweeper is None:
        return None
    return SweepFigures(sweeper.interval, sweeper.sweeps, sweeper.released, sweeper.held_elsewhere)


def _html() -> str:
    return files("fleet_mcp_proxy.front").joinpath("dashboard.html").read_text(encoding="utf-8")


def routes(holder: StateHolder) -> list[Route]:
    """The operator routes; `holder` reaches the state the server lifespan creates.

    `/status` and `/dashboard` sit behind the app-wide Host/Origin gate (front/admission.py), as `/mcp` does;
    the probes stay open to orchestrators that call them by pod address.
    """
    started = time.monotonic()
    page = _html()  # read once: the file ships inside the package

    async def readyz(request: Request) -> Response:
        state = holder.state
        store = "starting"
        if state is not None:
            store = _store_state(state)
            if store == "ok" and state.recorder.store is not None:
                _, _, store = await _read_store(state.recorder.store, [], 1)
        ready, body = readiness(
            started=state is not None,
            closing=state is not None and (state.registry.closing or state.registry.draining),
            store=store,
            fleet="configured" if state is not None and state.pool.fleet is not None else "not used",
        )
        return JSONResponse(body, status_code=200 if ready else 503, headers=_NO_STORE)

    async def status(request: Request) -> Response:
        state = holder.state
        if state is None:
            return JSONResponse({"error": "the proxy is starting"}, status_code=503, headers=_NO_STORE)
        principal = _principal()
        episodes = visible(list(state.registry.episodes.values()), principal)
        records: dict[str, EpisodeRecord] = {}
        recent: list[EpisodeSummary] = []
        store = _store_state(state)
        replicas: list[OwnerRecord] = []
        owned: dict[str, OwnedCount] = {}
        lease: Lease | None = None
        if state.recorder.store is not None:
            newest = sorted(episodes, key=lambda e: e.last_active, reverse=True)[:LIVE_RECORDS]
            records, recent, store = await _read_store(state.recorder.store, [e.id for e in newest], RECENT_SUMMARIES)
            if store == "ok":
                replicas, owned, lease = await _cluster(state.recorder.store)
        inputs = StatusInputs(
            version=__version__,
            uptime=time.monotonic() - started,
            principal=principal,
            episodes=episodes,
            records=records,
            recent=recent,
            latencies=PROVISIONING.samples(),
            time_left=_time_left(state),
            clock=anyio.current_time(),
            store=store,
            replicas=replicas,
            forwarded=holder.forwarder.forwarded if holder.forwarder is not None else 0,
            lane_served=holder.lane.served if holder.lane is not None else 0,
            wall=time.time(),
            me=state.registry.owner,
            owned=owned,
            adoptions=state.registry.adoptions,
            sweep=_figures(holder.sweeper),
            sweep_lease=lease,
        )
        return JSONResponse(build_status(inputs), headers=_NO_STORE)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page, headers=_NO_STORE)

    return [
        Route("/readyz", readyz),
        Route("/status", status),
        Route("/dashboard", dashboard),
    ]
