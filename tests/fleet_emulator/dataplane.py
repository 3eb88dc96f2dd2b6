"""What lives under an instance's root `http://HOST/{instance_id}/`: MCP and the instance-manager minimum.

MCP (streamable HTTP) answers at `{root}mcp` and `{root}api/v1/mcp`, both backed by the instance's one
session manager, and requires the emulator's API key as a bearer token. An unknown instance answers 404,
a stopped or errored one 502 (a dead instance behind a gateway), a pending one 503.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .clock import iso
from .front import bearer_ok, unauthorized
from .instances import InstanceHost

if TYPE_CHECKING:
    from .emulator import Emulator

RESOURCES = [{"name": "seed", "type": "sqlite", "mode": "ro"}, {"name": "current", "type": "sqlite", "mode": "rw"}]


def _refusal(emu: Emulator, instance_id: str) -> tuple[Response | None, InstanceHost | None]:
    record = emu.state.instances.get(instance_id)
    if record is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404), None
    if not record.live:
        return JSONResponse({"detail": f"Bad Gateway: instance is {record.status}"}, status_code=502), None
    host = emu.host(instance_id)
    if record.status == "pending" or host is None or not host.serving:
        return JSONResponse({"detail": "Service Unavailable: instance is starting"}, status_code=503), None
    return None, host


class McpEndpoint:
    """ASGI endpoint: checks the instance and the bearer token, then hands over to the instance's server."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        refusal, host = _refusal(self.emu, request.path_params["instance_id"])
        if refusal is None and not bearer_ok(self.emu, request.headers.get("authorization")):
            refusal = unauthorized()
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        assert host is not None
        await host(scope, receive, send)


def routes(emu: Emulator) -> list[Route]:
    def gate(request: Request) -> tuple[Response | None, InstanceHost | None]:
        if emu.require_runner_token and request.headers.get("x-runner-token") != emu.runner_token:
            return JSONResponse({"detail": "Not Found"}, status_code=404), None
        return _refusal(emu, request.path_params["instance_id"])

    async def health(request: Request) -> Response:
        refusal, _ = gate(request)
        return refusal or JSONResponse({"status": "healthy", "timestamp": iso(emu.clock.now()), "service": "tracker"})

    async def resources(request: Request) -> Response:
        refusal, _ = gate(request)
        return refusal or JSONResponse(RESOURCES)

    async def reset(request: Request) -> Response:
        """Put `current.sqlite` back to the seed (the tracker opens the file anew on every call)."""
        refusal, host = gate(request)
        if refusal is not None:
            return refusal
        assert host is not None
        seed, current = host.data_dir / "seed.sqlite", host.data_dir / "current.sqlite"
        tmp = host.data_dir / ".reset.sqlite"
        shutil.copyfile(seed, tmp)
        os.replace(tmp, current)
        return JSONResponse({"success": True, "message": "Environment reset to its seed"})

    mcp = McpEndpoint(emu)
    return [
        Route("/{instance_id}/mcp", mcp),
        Route("/{instance_id}/api/v1/mcp", mcp),
        Route("/{instance_id}/api/v1/env/health", health, methods=["GET"]),
        Route("/{instance_id}/api/v1/env/resources", resources, methods=["GET"]),
        Route("/{instance_id}/api/v1/env/reset", reset, methods=["POST"]),
    ]
