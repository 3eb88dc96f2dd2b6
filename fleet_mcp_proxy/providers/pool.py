"""Where episodes get instances: dispatch by environment kind, with every lease held by one keeper."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import stamina

from ..config import GRADING_MARGIN, EnvironmentConfig, ProxyConfig
from .base import HttpTarget, Instance, Listed, ProvisionError
from .fleet import FleetProvider
from .leases import Delete, LeaseKeeper, beat_interval
from .local import LocalProvider
from .warm import WarmPool

if TYPE_CHECKING:
    from ..store.records import PendingInstance
    from ..tasks import Task
from ..verify.local import run_local
from ..verify.scoring import VerifierRun

logger = logging.getLogger(__name__)
# Which of the run's live instances a shutdown backstop may release (None: it cannot tell, so none).
Select = Callable[[list[Listed]], Awaitable[list[str] | None]]


def run_id_for(config: ProxyConfig, front: str) -> str:
    """This deployment's Fleet `run_id` when no episode store keeps one: configured, else host and HTTP port.

    With a store (the default) the run id is kept in it (`stored_run_id`), so a restart finds its predecessor's
    instances whatever its pid or port. Without one, a stdio proxy has no stable identity and its default
    includes the pid: what a killed one leaves is reclaimed by heartbeats and the platform's TTL.
    """
    if config.fleet.run_id:
        return config.fleet.run_id
    return f"fmp-{_host()}-{config.port}" if front == "http" else f"fmp-{_host()}-stdio-{os.getpid()}"


def new_run_id() -> str:
    """The run id a new store keeps for every proxy that uses it."""
    return f"fmp-{_host()}-{uuid.uuid4().hex[:10]}"


def _host() -> str:
    return "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:40] or "local"


class InstancePool:
    """Provisions, keeps alive and releases every instance this proxy holds."""

    def __init__(
        self,
        config: ProxyConfig,
        task_group: anyio.abc.TaskGroup,
        *,
        front: str = "http",
        run_id: str | None = None,
        need_fleet: bool = False,  # a finisher: Fleet instances recorded in the store, whatever is configured
        creator: str | None = None,  # this process's owner id in the store, tagged on every Fleet create
    ) -> None:
        self.local = LocalProvider()
        self.fleet: FleetProvider | None = None
        fleet_tasks = config.tasks_file is not None and config.fleet.api_key is not None
        if (
            fleet_tasks
            or any(env.kind == "fleet" for env in config.environments)
            or (need_fleet and config.fleet.api_key)
        ):
            settings = config.fleet.model_copy(update={"run_id": run_id or run_id_for(config, front)})
            self.fleet = FleetProvider(settings, creator=creator)
        self.keeper = LeaseKeeper(task_group)
        self._end_timeout = config.end_timeout
        self.warm: WarmPool | None = None
        if self.fleet is not None and not need_fleet and any(env.warm_pool for env in config.environments):
            # Never hand out an instance that could expire before one more call and a grading.
            call = max(env.call_timeout for env in config.environments if env.warm_pool)
            min_life = call + config.verify_timeout + GRADING_MARGIN
            self.warm = WarmPool(self._provision_fleet, self.keeper.rebind, self._release_fleet, min_life=min_life)
            task_group.start_soon(self.warm.run, tuple(config.environments))

    async def live_ids(self, timeout: float = 60.0) -> set[str]:
        """Live Fleet instances carrying this run's id (empty when it cannot tell)."""
        if self.fleet is None:
            return set()
        try:
            with anyio.fail_after(timeout):
                return set(await self.fleet.orphans())
        except Exception:
            logger.warning("could not list Fleet instances of run %s", self.fleet.run_id)
            return set()

    async def listing(self, timeout: float = 60.0) -> list[Listed] | None:
        """Live Fleet instances of this run with their maker and age; None when it cannot tell (or no Fleet)."""
        if self.fleet is None:
            return None
        try:
            with anyio.fail_after(timeout):
                return await self.fleet.listing()
        except Exception:
            logger.warning("could not list Fleet instances of run %s", self.fleet.run_id)
            return None

    async def release_orphans(self, ids: list[str], *, reason: str, timeout: float) -> list[str]:
        """Delete these instances of this run now (bounded, retried); returns those the platform acknowledged."""
        if self.fleet is None or not ids:
            return []
        done: list[str] = []
        limiter = anyio.CapacityLimiter(8)

        async def one(instance_id: str) -> None:
            async with limiter:
                logger.warning("releasing Fleet instance %s of run %s: %s", instance_id, run, reason)
                orphan = Instance("orphan", instance_id, "fleet", HttpTarget(""))
                if await self.release_now(orphan, timeout=timeout):
                    done.append(instance_id)

        run = self.fleet.run_id
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                for instance_id in ids:
                    tg.start_soon(one, instance_id)
        return sorted(done)

    async def sweep(self, exclude: set[str], *, reason: str, among: set[str] | None = None) -> int:
        """Release live instances of this run (those in `among`, when given) that are not in `exclude`."""
        if self.fleet is None:
            return 0
        candidates = await self.live_ids() if among is None else among
        orphans = sorted(candidates - exclude)
        for instance_id in orphans:
            logger.warning("releasing Fleet instance %s of run %s: %s", instance_id, self.fleet.run_id, reason)
            self.keeper.release(Instance("orphan", instance_id, "fleet", HttpTarget("")), self.fleet.delete)
        return len(orphans)

    async def provision(
        self, env: EnvironmentConfig, episode_id: str, on_lost: Callable[[str], None] | None = None
    ) -> Instance:
        if env.kind != "fleet":
            instance = await self.local.provision(env, episode_id)
            self.keeper.hold(instance)
            return instance
        if self.fleet is None:
            raise ProvisionError("Fleet is not configured.")
        if self.warm is not None and (warm := self.warm.take(env, on_lost)) is not None:
            return warm
        return await self._provision_fleet(env, on_lost)

    async def _provision_fleet(self, env: EnvironmentConfig, on_lost: Callable[[str], None] | None) -> Instance:
        assert self.fleet is not None
        sent = anyio.current_time()
        instance = await self.fleet.provision(env, env.name)
        # Heartbeats start as soon as the create returns, before the (possibly slow) readiness wait; the lease
        # counts from the create's sending, not its (possibly much later) answer.
        ttl = self.fleet.ttl_of(env)
        self.keeper.hold(instance, heartbeat=self.fleet.heartbeat, ttl=ttl, on_lost=on_lost, since=sent)
        try:
            await self.fleet.ready(instance, self.fleet.settings.provision_timeout)
        except BaseException:
            self.keeper.release(instance, self.fleet.delete)
            raise
        return instance

    def can_reattach(self, env: EnvironmentConfig, held: PendingInstance) -> bool:
        """Whether `reattach` can take this instance over here (pure: nothing is held yet)."""
        if not self.can_finish(held.provider, held.origin):
            return False
        return (held.provider == "fleet" and self.fleet is not None) or (
            held.provider == "local" and env.url is not None
        )

    def reattach(
        self, env: EnvironmentConfig, held: PendingInstance, on_lost: Callable[[str], None] | None
    ) -> Instance:
        """Take over an instance a replica that is gone held, and keep it alive from now on.

        Raises:
            ProvisionError: it cannot be taken over here (another account, or a process of the replica that died).
        """
        if not self.can_finish(held.provider, held.origin):
            raise ProvisionError(f"instance {held.instance_id} lives in an account this replica does not reach")
        if held.provider == "fleet" and self.fleet is not None:
            instance = self.fleet.reattached(env, held.instance_id, held.url or "", held.expires_at)
            ttl = self.fleet.ttl_of(env)
            # Beat at once: the last beat of the replica that is gone may be most of a lease ago.
            since = anyio.current_time() - beat_interval(ttl) if ttl is not None else None
            self.keeper.hold(instance, heartbeat=self.fleet.heartbeat, ttl=ttl, on_lost=on_lost, since=since)
            return instance
        if env.url is not None:  # a configured URL: the same server for every replica
            target = HttpTarget(env.url, dict(env.headers))
            instance = Instance(env.name, held.instance_id, "local", target, origin=self.local.origin)
            self.keeper.hold(instance)
            return instance
        raise ProvisionError(f"environment '{env.name}' ran as a process of the replica that stopped")

    def _release_fleet(self, instance: Instance) -> None:
        if self.fleet is not None:
            self.keeper.release(instance, self.fleet.delete)

    def origin(self, provider: str) -> str | None:
        """The account this process reaches for `provider`; None when it has none (no Fleet configured)."""
        if provider == "fleet":
            return self.fleet.origin if self.fleet is not None else None
        return self.local.origin

    def can_finish(self, provider: str, origin: str | None) -> bool:
        """Whether this process may grade against and release an instance recorded with `origin`.

        Rows written before origins were recorded (None) are taken by any process with that provider."""
        mine = self.origin(provider)
        return mine is not None and (origin is None or origin == mine)

    def _deleter(self, instance: Instance) -> Delete:
        if instance.provider == "fleet" and self.fleet is not None:
            return self.fleet.delete
        return self.local.delete

    def verifier(
        self,
        instance: Instance,
        task: Task,
        final_answer: str | None,
        timeout: float,
        *,
        conversation: str | None = None,
    ) -> Callable[[], Awaitable[VerifierRun]]:
        code = task.verifier_code or ""
        if instance.provider == "fleet" and self.fleet is not None:
            fleet = self.fleet

            async def remote() -> VerifierRun:
                return await fleet.verify_remote(instance, task, code, final_answer, timeout, conversation)

            return remote
        data_dir = instance.data_dir

        async def local() -> VerifierRun:
            if data_dir is None or not (data_dir / "current.sqlite").exists():
                raise FileNotFoundError("the instance keeps no seed/current databases to verify against")
            return await run_local(
                code,
                data_dir / "seed.sqlite",
                data_dir / "current.sqlite",
                final_answer=final_answer,
                timeout=timeout,
                conversation=conversation,
            )

        return local

    async def release(self, instance: Instance, wait: float = 0.0) -> bool:
        """Hand the instance to the keeper, which deletes it with its own retries; True once acknowledged
        within `wait` seconds (the keeper goes on trying after that)."""
        acknowledged = self.keeper.release(instance, self._deleter(instance))
        with anyio.move_on_after(wait):
            await acknowledged.wait()
        return acknowledged.is_set()

    def hold_for_grading(self, instance: Instance) -> None:
        """Heartbeat an instance a finisher re-attached to, so the platform keeps it while it is graded."""
        if instance.provider == "fleet" and self.fleet is not None:
            self.keeper.hold(instance, heartbeat=self.fleet.heartbeat, ttl=self.fleet.ttl_of_default())

    async def release_now(self, instance: Instance, timeout: float = 60.0) -> bool:
        """Delete now, with bounded retries; True once the provider acknowledged it (or it was already gone)."""
        self.keeper.forget(instance)
        deleter = self._deleter(instance)
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(timeout):
                async for attempt in stamina.retry_context(on=Exception, attempts=4, timeout=timeout, wait_max=5.0):
                    with attempt:
                        await deleter(instance)
        except Exception:
            logger.warning(
                "could not release %s (%s) yet; it stays recorded as held", instance.instance_id, instance.alias
            )
            return False
        return True

    async def shutdown(
        self,
        keep: set[str] | None = None,
        *,
        backstop: bool = True,
        timeout: float | None = None,
        select: Select | None = None,
    ) -> None:
        """Drain queued releases (bounded), then release this run's other Fleet instances as a backstop.

        `keep`: instances a pending end still needs to grade; they stay up (their heartbeats stop with this
        process, so the platform stops them within a lease if nobody finishes the end). `select`: with an
        episode store, which of the run's live instances the backstop may release (`sweep.backstop_selection`:
        never one an unfinished row names or a live process made); without one, the whole run is this process's.
        """
        keep = keep or set()
        budget = self._end_timeout if timeout is None else timeout
        if self.warm is not None:
            for instance in self.warm.close():
                self._release_fleet(instance)
        drained = await self.keeper.drain(budget / 2)
        if not drained:
            logger.warning("%d releases still pending at shutdown", self.keeper.pending)
        if self.fleet is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(budget / 2):
                try:
                    if backstop and select is not None:
                        await self._select_and_release(select, budget / 2, keep)
                    elif backstop and not keep:
                        count = await self.fleet.delete_run()
                        if count:
                            logger.warning("backstop deleted %d Fleet instances of run %s", count, self.fleet.run_id)
                    elif backstop and await self.sweep(keep, reason="backstop at shutdown"):
                        await self.keeper.drain(budget / 4)
                except Exception:
                    logger.exception("backstop release for run %s failed", self.fleet.run_id)
                await self.fleet.aclose()

    async def _select_and_release(self, select: Select, budget: float, keep: set[str]) -> None:
        listed = await self.listing(timeout=budget / 3)
        if listed is None:
            return
        chosen = [i for i in await select(listed) or [] if i not in keep]
        if chosen:
            released = await self.release_orphans(chosen, reason="backstop at shutdown", timeout=budget / 2)
            logger.warning("backstop released %d Fleet instance(s): %s", len(released), ", ".join(released))
