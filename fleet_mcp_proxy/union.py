"""One environment instance served on several MCP endpoints, seen by the episode as one backend.

Fleet's harness reads a `tool_use` instance at its own server (`{root}mcp`) and at the aggregator
(`{root}api/v1/mcp`) and unions the lists in that order: the first endpoint to list a name owns it, and later
ones with the same name are not shown (contract 2.5). An endpoint that fails to start is tolerated while
another one serves (some images answer only on the aggregator); the episode is told when none does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc

from .backends import BackendGone, BackendLink, LinkEvents, ProgressFn
from .fastlane.target import LaneTarget
from .providers.base import Instance

logger = logging.getLogger(__name__)

# What identifies an item of each list, and the request methods that address one item by it.
_KEYS = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}
_ADDRESSED = {"tools/call": "tools", "prompts/get": "prompts", "resources/read": "resources"}
_ARGUMENT = {"tools": "name", "prompts": "name", "resources": "uri"}


def link_for(instance: Instance, events: LinkEvents, *, startup_timeout: float, call_timeout: float) -> BackendLink:
    """A plain link for a one-endpoint instance, a union of links when it has more."""
    if not instance.union:
        return BackendLink(instance, events, startup_timeout=startup_timeout, call_timeout=call_timeout)
    return UnionLink(instance, events, startup_timeout=startup_timeout, call_timeout=call_timeout)


def merge(
    lists: list[Mapping[str, list[dict[str, Any]]]],
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, int]]]:
    """The union of each list in endpoint order, first one wins; and for each list, identity -> endpoint index."""
    merged: dict[str, list[dict[str, Any]]] = {key: [] for key in _KEYS}
    owners: list[dict[str, int]] = []
    for key, field in _KEYS.items():
        owner: dict[str, int] = {}
        for index, part in enumerate(lists):
            for item in part.get(key) or []:
                ident = item.get(field)
                if isinstance(ident, str) and ident not in owner:
                    owner[ident] = index
                    merged[key].append(item)
        owners.append(owner)
    return merged, owners


class UnionLink(BackendLink):
    """A `BackendLink` over several endpoints of one instance; each request goes to the endpoint owning it."""

    def __init__(self, instance: Instance, events: LinkEvents, *, startup_timeout: float, call_timeout: float) -> None:
        super().__init__(instance, events, startup_timeout=startup_timeout, call_timeout=call_timeout)
        targets = (instance.target, *instance.union)
        self.parts = [
            BackendLink(
                replace(instance, target=target, union=()),
                events,
                startup_timeout=startup_timeout,
                call_timeout=call_timeout,
            )
            for target in targets
        ]
        self._owners: dict[str, dict[str, BackendLink]] = {key: {} for key in _KEYS}

    @property
    def alive(self) -> bool:
        return self.failure is None and not self._stopped.is_set() and any(part.alive for part in self.parts)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every endpoint at once; serve with those that started, until `stop()`."""
        started = False
        try:
            async with anyio.create_task_group() as links:
                async with anyio.create_task_group() as starting:
                    for part in self.parts:
                        starting.start_soon(links.start, part.run)
                up = [part for part in self.parts if part.failure is None]
                for part in self.parts:
                    if part.failure is not None:
                        logger.warning("environment %s: endpoint %s %s", self.alias, _path(part), part.failure)
                if not up:
                    self.failure = "; ".join(f"{_path(part)} {part.failure}" for part in self.parts)
                else:
                    self._merge(up)
                    started = True
                    task_status.started()
                    await self._stop.wait()
                with anyio.CancelScope(shield=True):
                    for part in self.parts:
                        await part.stop(self._startup_timeout)
        finally:
            self._stopped.set()
            if not started:
                task_status.started()

    async def stop(self, timeout: float) -> None:
        self._stop.set()
        with anyio.move_on_after(timeout, shield=True):
            await self._stopped.wait()

    def _merge(self, parts: list[BackendLink]) -> None:
        merged, owners = merge([part.lists for part in parts])
        self.lists = merged
        self._owners = {
            key: {ident: parts[i] for ident, i in owner.items()} for key, owner in zip(_KEYS, owners, strict=True)
        }
        self.capabilities = parts[0].capabilities

    def _owner(self, method: str, params: Mapping[str, Any] | None) -> BackendLink:
        key = _ADDRESSED.get(method)
        if key is not None and params is not None:
            owner = self._owners[key].get(str(params.get(_ARGUMENT[key])))
            if owner is not None:
                return owner
        for part in self.parts:
            if part.alive:
                return part
        raise BackendGone(self._gone_message())

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        if self.failure is not None or self._stopped.is_set():
            raise BackendGone(self._gone_message())
        part = self._owner(method, params)
        return await part.request(method, params, timeout=timeout, on_progress=on_progress)

    async def refresh(self, keys: tuple[str, ...] | None = None, timeout: float = 30.0) -> None:
        up = [part for part in self.parts if part.alive]
        for part in up:
            await part.refresh(keys, timeout)
        if up:
            self._merge(up)

    def lane_target(self, tool: str | None = None) -> LaneTarget | None:
        if not self.alive or tool is None:
            return None
        owner = self._owners["tools"].get(tool)
        return owner.lane_target() if owner is not None else None


def _path(link: BackendLink) -> str:
    """Which endpoint, for messages (never its URL's host or its headers)."""
    url = getattr(link.instance.target, "url", "")
    return "aggregator (api/v1/mcp)" if str(url).endswith("/api/v1/mcp") else "environment server (mcp)"
