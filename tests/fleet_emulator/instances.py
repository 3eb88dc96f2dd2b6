"""Instances as real MCP servers: the demo tracker, one per instance, served in this process.

Each instance gets its own data directory, its own `MCPServer` and its own streamable-HTTP session manager.
A manager's `run()` is entered by one long-lived task in the emulator's task group and left by the same
task when the instance stops, so its sessions and the directory go away together.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from fleet_mcp_proxy.demo.db import prepare_instance
from fleet_mcp_proxy.demo.server import build_server

log = logging.getLogger(__name__)

LOOPBACK = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
)
STOP_TIMEOUT = 10.0


class InstanceHost:
    """One tracker MCP server with its data directory. `run` serves until `stop`."""

    def __init__(self, instance_id: str, data_dir: Path) -> None:
        self.instance_id = instance_id
        self.data_dir = data_dir
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._asgi: StreamableHTTPASGIApp | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            current = await anyio.to_thread.run_sync(prepare_instance, self.data_dir)
            server = build_server(current)
            server.streamable_http_app(transport_security=LOOPBACK, session_idle_timeout=600)
            manager = server.session_manager
            async with manager.run():
                self._asgi = StreamableHTTPASGIApp(manager)
                task_status.started()
                await self._stop.wait()
        finally:
            self._asgi = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.data_dir, ignore_errors=True))
            self._done.set()

    @property
    def serving(self) -> bool:
        return self._asgi is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi is None:
            raise RuntimeError(f"instance {self.instance_id} is not serving")
        await self._asgi(scope, receive, send)

    def stop(self) -> None:
        """Ask the server to stop (its sessions end, its directory is removed); see `wait_stopped`."""
        self._stop.set()

    async def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> bool:
        with anyio.move_on_after(timeout):
            await self._done.wait()
        return self._done.is_set()


class HostPool:
    """The running MCP servers, keyed by instance id, under one data root."""

    def __init__(self) -> None:
        self.data_root: Path | None = None
        self.hosts: dict[str, InstanceHost] = {}
        self.stopping: dict[str, InstanceHost] = {}  # asked to stop, not yet down
        self._tg: TaskGroup | None = None

    def attach(self, tg: TaskGroup | None, data_root: Path | None = None) -> None:
        """Set (or clear) the long-lived task group the servers run in: the emulator's lifespan owns it."""
        self._tg = tg
        if data_root is not None:
            self.data_root = data_root

    async def start(self, instance_id: str, make: Callable[[str, Path], InstanceHost] = InstanceHost) -> InstanceHost:
        if self._tg is None or self.data_root is None:
            raise RuntimeError("the emulator is not running (no lifespan task group)")
        host = make(instance_id, self.data_root / instance_id)
        self.hosts[instance_id] = host
        try:
            await self._tg.start(self._run, host, name=f"fleet-emulator instance {instance_id}")
        except BaseException:
            self.hosts.pop(instance_id, None)
            raise
        return host

    async def _run(self, host: InstanceHost, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await host.run(task_status=task_status)
        finally:
            self.stopping.pop(host.instance_id, None)

    def get(self, instance_id: str) -> InstanceHost | None:
        return self.hosts.get(instance_id)

    def stop(self, instance_id: str) -> InstanceHost | None:
        """Ask one server to stop; it stays in `stopping` until it is down."""
        host = self.hosts.pop(instance_id, None)
        if host is not None:
            self.stopping[instance_id] = host
            host.stop()
        return host

    async def stop_all(self) -> None:
        for instance_id in list(self.hosts):
            self.stop(instance_id)
        for host in list(self.stopping.values()):
            if not await host.wait_stopped():
                log.warning("instance %s did not stop within %s s", host.instance_id, STOP_TIMEOUT)
