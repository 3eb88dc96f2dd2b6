"""The emulator's ASGI app: control plane, instance roots, and `/_emulator/...` admin endpoints for tests.

Admin endpoints (no API key; loopback clients only):
* `GET  /_emulator/state`: instances (status, run_id, env_variables, heartbeat counts...), request counts, faults.
* `POST /_emulator/faults`: a JSON object of `Faults` knobs replaces the fault settings (missing knobs: off).
* `POST /_emulator/clock/advance?seconds=N`: move the clock forward and apply expiry.
* `POST /_emulator/instances/{id}/kill[?status=error|stopped]`: the instance dies; its MCP endpoint goes dead.
* `POST /_emulator/instance_limit?value=N`: change the instance limit.
* `POST /_emulator/instances/{id}/misbehave?mode=hang|garbage|off`: everything under the instance's root
  hangs (never answers) or answers broken JSON-RPC, while its record stays `running`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import control, dataplane, verifiers
from .faults import Faults
from .front import Front
from .models import ApiError

if TYPE_CHECKING:
    from .emulator import Emulator

LOOPBACK_CLIENTS = ("127.0.0.1", "::1", "localhost", "testclient")


def _number(request: Request, name: str) -> float:
    try:
        return float(request.query_params[name])
    except (KeyError, ValueError):
        raise ApiError(400, f"Invalid request: query parameter '{name}' must be a number") from None


def admin_routes(emu: Emulator) -> list[Route]:
    def loopback_only(request: Request) -> None:
        if request.client is None or request.client.host not in LOOPBACK_CLIENTS:
            raise ApiError(403, "The emulator's admin endpoints answer loopback clients only")

    async def state(request: Request) -> Response:
        loopback_only(request)
        return JSONResponse(emu.to_state())

    async def faults(request: Request) -> Response:
        loopback_only(request)
        try:
            emu.faults.replace_with(Faults.from_dict(json.loads(await request.body() or b"{}")))
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"Invalid fault settings: {exc}") from None
        return JSONResponse(emu.faults.to_dict())

    async def advance(request: Request) -> Response:
        loopback_only(request)
        stopped = await emu.advance(_number(request, "seconds"))
        return JSONResponse({"now": emu.clock.now(), "stopped": stopped})

    async def kill(request: Request) -> Response:
        loopback_only(request)
        status = request.query_params.get("status", "error")
        record = await emu.kill_instance(request.path_params["instance_id"], status)
        return JSONResponse(record.to_state())

    async def misbehave(request: Request) -> Response:
        loopback_only(request)
        instance_id = request.path_params["instance_id"]
        mode = request.query_params.get("mode", "hang")
        if mode not in ("hang", "garbage", "off"):
            raise ApiError(400, "Invalid request: mode must be hang, garbage or off")
        emu.state.get(instance_id)  # 404 for an unknown instance
        if mode == "off":
            emu.misbehaving.pop(instance_id, None)
        else:
            emu.misbehaving[instance_id] = mode
        return JSONResponse({"instance_id": instance_id, "mode": mode})

    async def instance_limit(request: Request) -> Response:
        loopback_only(request)
        emu.state.instance_limit = int(_number(request, "value"))
        return JSONResponse(emu.state.account())

    return [
        Route("/_emulator/state", state, methods=["GET"]),
        Route("/_emulator/faults", faults, methods=["POST"]),
        Route("/_emulator/clock/advance", advance, methods=["POST"]),
        Route("/_emulator/instances/{instance_id}/kill", kill, methods=["POST"]),
        Route("/_emulator/instances/{instance_id}/misbehave", misbehave, methods=["POST"]),
        Route("/_emulator/instance_limit", instance_limit, methods=["POST"]),
    ]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def build_app(emu: Emulator) -> ASGIApp:
    app = Starlette(
        routes=[*admin_routes(emu), *control.routes(emu), *verifiers.routes(emu), *dataplane.routes(emu)],
        exception_handlers={ApiError: _api_error},
        lifespan=emu.lifespan,
    )
    return Front(emu, app)
