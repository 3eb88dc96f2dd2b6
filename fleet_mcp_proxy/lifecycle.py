"""A proxy process's start and stop around its episodes: the store and this process's place in it, the run id,
the instance pool, finishing what a dead predecessor left, and a shutdown bounded by `shutdown_grace`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.abc

from .config import ProxyConfig
from .finisher import Finisher
from .ownership import Membership
from .providers.pool import InstancePool, new_run_id, run_id_for
from .recorder import Recorder, default_store_path
from .registry import Registry
from .store import EpisodeStore, StoreError, open_any_store
from .sweep import Sweeper, backstop_selection, min_age

logger = logging.getLogger(__name__)


def store_path(config: ProxyConfig) -> Path:
    """The SQLite file (the default store), or where local files such as the finisher's log go beside it."""
    return Path(config.store_path) if config.store_path else default_store_path()


async def open_episode_store(config: ProxyConfig) -> EpisodeStore | None:
    if not config.record_episodes:
        return None
    if config.store.url is not None:
        try:
            return await open_any_store(config.store.url)  # migrated to this version here, before serving
        except Exception as exc:  # a StoreError names the host and database, never the password
            reason = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
            logger.error("cannot open the episode store: %s; episodes are not recorded", reason)
            return None
    path = store_path(config)
    try:
        await anyio.Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await open_any_store(path)
    except Exception:  # the record is valuable, but not worth refusing agents over
        logger.exception("cannot open the episode store %s; episodes are not recorded", path)
        return None


@dataclass
class Runtime:
    config: ProxyConfig
    recorder: Recorder
    pool: InstancePool
    membership: Membership | None
    found_at_start: set[str] = field(default_factory=set)
    sweeper: Sweeper | None = None  # the fleet-wide sweep, when replicas share a store

    @property
    def owner(self) -> str | None:
        return self.membership.me.owner_id if self.membership is not None else None

    def finisher(self) -> Finisher | None:
        store = self.recorder.store
        if store is None or self.membership is None:
            return None
        config = self.config
        return Finisher(
            store,
            self.pool,
            self.membership,
            verify_timeout=config.verify_timeout,
            partial=config.partial_reward,
            adopts=self.membership.address is not None,  # a serving replica on a shared store
        )


async def start(config: ProxyConfig, tg: anyio.abc.TaskGroup, *, front: str, need_fleet: bool = False) -> Runtime:
    """Open the store, join it, fix the run id, start the pool; nothing here waits on Fleet."""
    store = await open_episode_store(config)
    recorder = Recorder(store)
    tg.start_soon(recorder.run)
    # Other replicas reach this one at its address: only an HTTP front on a shared store has one.
    address = config.cluster.advertise if config.store.url is not None and front == "http" else None
    membership = Membership(store, address=address) if store is not None else None
    run_id = config.fleet.run_id
    if membership is not None and store is not None:
        await membership.join()
        tg.start_soon(membership.renew_forever)
        run_id = run_id or await store.meta("run_id", new_run_id())  # the same for every restart on this store
    creator = membership.me.owner_id if membership is not None else None
    run_id = run_id or run_id_for(config, front)
    pool = InstancePool(config, tg, front=front, run_id=run_id, need_fleet=need_fleet, creator=creator)
    runtime = Runtime(config, recorder, pool, membership)
    # What this run had up before this process made anything: only these may be swept as a predecessor's.
    runtime.found_at_start = await pool.live_ids(timeout=10.0)
    shared = config.store.url is not None and front != "finish"
    if shared and store is not None and membership is not None and pool.fleet is not None:
        interval = config.cluster.sweep_interval
        runtime.sweeper = Sweeper(store, membership, pool, interval=interval, age=min_age(config))
        tg.start_soon(runtime.sweeper.run_forever)
    return runtime


async def recover(runtime: Runtime) -> None:
    """Finish what dead processes left (grade, then release), then sweep this run's unreferenced instances.

    Runs in the background of a fresh start. The sweep is skipped while another live process shares the
    store: an instance it is creating is not yet referenced by any row (the fleet-wide sweep, `sweep.py`,
    covers that case under its own rule).
    """
    try:
        finisher = runtime.finisher()
        if finisher is not None:
            report = await finisher.run()
            if report.finished or report.left:
                logger.warning(
                    "finished %d episode(s) a previous process left; %d still unfinished",
                    len(report.finished),
                    len(report.left),
                )
            if report.foreign:
                logger.warning(
                    "%d unfinished episode(s) in this store hold instances of another Fleet account or host; "
                    "left for a proxy configured with that account (`fleet-mcp-proxy finish` with its config)",
                    len(report.foreign),
                )
        store, membership = runtime.recorder.store, runtime.membership
        reason, among = "left by an earlier run of this deployment", runtime.found_at_start
        if store is None or membership is None:
            await runtime.pool.sweep(set(), reason=reason, among=among)
            return
        await membership.prune()
        if await membership.others_alive():
            logger.info("another live proxy shares this store: not sweeping unreferenced instances")
            return
        referenced = {i.instance_id for end in await store.unfinished() for i in end.instances}
        await runtime.pool.sweep(referenced, reason=reason, among=among)
    except Exception:  # top of a background task
        logger.exception("recovering what an earlier run left failed")


async def stop(runtime: Runtime, registry: Registry, *, grace: float) -> None:
    """Within `grace`: end episodes, release what no pending end needs, hand pending ends on, close the store."""
    started = anyio.current_time()
    keep = await registry.shutdown(max(0.5, grace * 0.6))
    store, membership = runtime.recorder.store, runtime.membership
    left = max(0.5, grace - (anyio.current_time() - started))
    with anyio.CancelScope(shield=True):
        select = None
        if membership is not None and store is not None:
            # Rows queued before this point (instances, ends) must be in the store when the backstop reads it.
            await runtime.recorder.commit("owners", timeout=min(5.0, left / 4))
            select = partial(backstop_selection, store, membership, min_age(runtime.config))
        await runtime.pool.shutdown(keep, timeout=left * 0.6, select=select)
        if membership is not None:
            # Queued behind every record still being written: pending rows go to the finisher or the next start.
            await runtime.recorder.commit("disown", membership.me.owner_id, timeout=2.0)
            await runtime.recorder.commit("drop_owner", membership.me.owner_id, timeout=2.0)
        left = max(0.5, grace - (anyio.current_time() - started))
        await runtime.recorder.close(left)
        if keep and runtime.config.finisher and store is not None:
            spawn_finisher(runtime.config)


def spawn_finisher(config: ProxyConfig) -> None:
    """A detached `fleet-mcp-proxy finish` in its own session: it outlives this process and its client's kill.

    It gets the same config on stdin (secrets never touch the disk) and logs next to the store.
    """
    log = store_path(config).with_name("finisher.log")
    try:
        with log.open("ab") as sink:
            child = subprocess.Popen(
                [sys.executable, "-m", "fleet_mcp_proxy", "finish", "--config-stdin"],
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
                close_fds=True,
            )
        assert child.stdin is not None
        child.stdin.write(json.dumps(config.model_dump(mode="json")).encode())
        child.stdin.close()
        logger.warning("left a finisher (pid %d) for the ends still pending; it logs to %s", child.pid, log)
    except OSError as exc:
        logger.warning("could not start a finisher (%s); the next start finishes the pending ends", exc.strerror)
