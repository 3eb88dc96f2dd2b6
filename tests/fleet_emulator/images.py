"""Images whose two MCP endpoints differ, as Fleet's do: the environment's own server at `{root}mcp` and the
aggregator at `{root}api/v1/mcp` (contract 2.1).

The default `tracker` image serves the same tracker on both. The images here serve toolsets per endpoint:

* `tracker`: the demo tracker's tools;
* `computer`: one `computer` tool (what a browser sidecar adds on the aggregator);
* `extras`: `aggregator_status`, found only on the aggregator, and a `list_projects` of its own, so a union
  that lets the later endpoint win is visible (its answer says `aggregator`).

An endpoint with no toolset answers 404, as the per-environment path does on aggregator-only images. The
aggregator can be slow: `aggregator_delay` seconds before each request reaches it. Tests change images (and
delays) through `Emulator.images`, keyed by env key; instances made later use the new setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from fleet_mcp_proxy.demo.db import prepare_instance
from fleet_mcp_proxy.demo.server import build_server

from .instances import LOOPBACK, InstanceHost
from .models import EnvSpec


@dataclass(frozen=True)
class Image:
    """What each endpoint of an instance serves."""

    per_env: tuple[str, ...] = ("tracker",)
    aggregator: tuple[str, ...] = ("tracker",)
    aggregator_delay: float = 0.0  # real seconds before a request reaches the aggregator


IMAGES: dict[str, Image] = {
    # Tools on both endpoints, some only on one of them, one name on both, `computer` on both.
    "tracker-both": Image(per_env=("tracker", "computer"), aggregator=("extras", "computer")),
    # The environment's own tools, and `computer` only on the aggregator.
    "tracker-browser": Image(per_env=("tracker",), aggregator=("computer",)),
    # Serves MCP only on the aggregator (like `forums-homes-bash`): `{root}mcp` answers 404.
    "tracker-agg-only": Image(per_env=(), aggregator=("tracker",)),
    # `computer` only on an aggregator that takes its time.
    "tracker-slow-agg": Image(per_env=("tracker",), aggregator=("computer",), aggregator_delay=3600.0),
}

IMAGE_CATALOG = tuple(
    EnvSpec(key, f"Demo tracker ({key})", ("v1.0.0",), "v1.0.0", "The demo tracker with per-endpoint toolsets.")
    for key in IMAGES
)


def computer(action: str, url: str | None = None) -> str:
    """Operate the emulated browser (screenshot, click, type, navigate...)."""
    return json.dumps({"action": action, "url": url, "ok": True})


def aggregator_status() -> str:
    """Report the aggregator's health."""
    return "aggregator ok"


def aggregator_list_projects() -> str:
    """List projects, as the aggregator sees them."""
    return "projects listed by the aggregator"


def _server(toolsets: tuple[str, ...], current: Path) -> MCPServer | None:
    if not toolsets:
        return None
    server = build_server(current) if "tracker" in toolsets else MCPServer("fleet-aggregator", log_level="WARNING")
    if "computer" in toolsets:
        server.add_tool(computer, name="computer")
    if "extras" in toolsets:
        server.add_tool(aggregator_status)
        server.add_tool(aggregator_list_projects, name="list_projects")
    return server


class ImageHost(InstanceHost):
    """An instance whose endpoints serve what its image says."""

    def __init__(self, instance_id: str, data_dir: Path, image: Image) -> None:
        super().__init__(instance_id, data_dir)
        self.image = image
        self._endpoints: dict[str, StreamableHTTPASGIApp] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            current = await anyio.to_thread.run_sync(prepare_instance, self.data_dir)
            servers = {
                "mcp": _server(self.image.per_env, current),
                "api/v1/mcp": _server(self.image.aggregator, current),
            }
            async with anyio.create_task_group() as tg:
                for path, server in servers.items():
                    if server is not None:
                        await tg.start(self._serve, path, server)
                self._asgi = next(iter(self._endpoints.values()))  # marks the instance as serving
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._asgi = None
            self._endpoints.clear()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, self.data_dir)
            self._done.set()

    async def _serve(self, path: str, server: MCPServer, *, task_status: TaskStatus[None]) -> None:
        server.streamable_http_app(transport_security=LOOPBACK, session_idle_timeout=600)
        async with server.session_manager.run():
            self._endpoints[path] = StreamableHTTPASGIApp(server.session_manager)
            task_status.started()
            await self._stop.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        aggregator = str(scope.get("path", "")).endswith("/api/v1/mcp")
        if aggregator and self.image.aggregator_delay:
            await anyio.sleep(self.image.aggregator_delay)
        endpoint = self._endpoints.get("api/v1/mcp" if aggregator else "mcp")
        if endpoint is None:
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
            return
        await endpoint(scope, receive, send)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
