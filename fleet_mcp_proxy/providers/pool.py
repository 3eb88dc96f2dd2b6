"""Where episodes get instances: dispatch by environment kind, with every lease held by one keeper."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..config import EnvironmentConfig, ProxyConfig
from .base import HttpTarget, Instance, ProvisionError
from .fleet import FleetProvider
from .leases import Delete, LeaseKeeper
from .local import LocalProvider
from .warm import WarmPool

if TYPE_CHECKING:
    from ..tasks import Task
from ..verify.local import run_local
from ..verify.scoring import VerifierRun

logger = logging.getLogger(__name__)


def run_id_for(config: ProxyConfig, front: str) -> str:
    """This deployment's Fleet `run_id`: configured, else derived from host and HTTP port.

    A stdio proxy has no stable identity, so its default includes the pid: what a killed stdio proxy
    leaves is reclaimed by the platform's TTL, not by the next start's sweep.
    """
    if config.fleet.run_id:
        return config.fleet.run_id
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:40] or "local"
    return f"fmp-{host}-{config.port}" if front == "http" else f"fmp-{host}-stdio-{os.getpid()}"


class InstancePool:
    """Provisions, keeps alive and releases every instance this proxy holds."""

    def __init__(self, config: ProxyConfig, task_group: anyio.abc.TaskGroup, *, front: str = "http") -> None:
        self.local = LocalProvider()
        self.fleet: FleetProvider | None = None
        fleet_tasks = config.tasks_file is not None and config.fleet.api_key is not None
        if fleet_tasks or any(env.kind == "fleet" for env in config.environments):
            settings = config.fleet.model_copy(update={"run_id": run_id_for(config, front)})
            self.fleet = FleetProvider(settings)
        self.keeper = LeaseKeeper(task_group)
        self._end_timeout = config.end_timeout
        self.warm: WarmPool | None = None
        if self.fleet is not None and any(env.warm_pool for env in config.environments):
            self.warm = WarmPool(self._provision_fleet, self.keeper.rebind, self._release_fleet)
            task_group.start_soon(self.warm.run, tuple(config.environments))

    async def start(self) -> None:
        """Release what an earlier run of this deployment left behind (no episode owns it now)."""
        if self.fleet is None:
            return
        try:
            with anyio.fail_after(60):
                orphans = await self.fleet.orphans()
        except Exception:
            logger.warning("could not list orphaned Fleet instances for run %s", self.fleet.run_id)
            return
        for instance_id in orphans:
            logger.warning("releasing orphaned Fleet instance %s (run %s)", instance_id, self.fleet.run_id)
            orphan = Instance("orphan", instance_id, "fleet", HttpTarget(""))
            self.keeper.release(orphan, self.fleet.delete)

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
        instance = await self.fleet.provision(env, env.name)
        # Heartbeats start as soon as the create returns, before the (possibly slow) readiness wait.
        self.keeper.hold(instance, heartbeat=self.fleet.heartbeat, ttl=self.fleet.ttl_of(env), on_lost=on_lost)
        try:
            await self.fleet.ready(instance, self.fleet.settings.provision_timeout)
        except BaseException:
            self.keeper.release(instance, self.fleet.delete)
            raise
        return instance

    def _release_fleet(self, instance: Instance) -> None:
        if self.fleet is not None:
            self.keeper.release(instance, self.fleet.delete)

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

    async def release(self, instance: Instance) -> None:
        """Hand the instance to the keeper, which deletes it with its own retries."""
        self.keeper.release(instance, self._deleter(instance))

    async def shutdown(self) -> None:
        """Drain queued releases (bounded), then batch-delete this run's Fleet instances as a backstop."""
        if self.warm is not None:
            for instance in self.warm.close():
                self._release_fleet(instance)
        drained = await self.keeper.drain(self._end_timeout)
        if not drained:
            logger.warning("%d releases still pending at shutdown", self.keeper.pending)
        if self.fleet is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._end_timeout):
                try:
                    count = await self.fleet.delete_run()
                    if count:
                        logger.warning("backstop deleted %d Fleet instances of run %s", count, self.fleet.run_id)
                except Exception:
                    logger.exception("backstop batch delete for run %s failed", self.fleet.run_id)
                await self.fleet.aclose()
