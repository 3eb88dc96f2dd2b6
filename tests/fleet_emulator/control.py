"""The control plane the Fleet SDK talks to: `/v1/...` (fleet-contract.md §1.4)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .clock import iso
from .front import drop
from .models import ApiError, InstanceRecord

if TYPE_CHECKING:
    from .emulator import Emulator


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _instance(request: Request, record: InstanceRecord) -> JSONResponse:
    return JSONResponse(record.to_json(_base(request)))


def _instances(request: Request, records: list[InstanceRecord]) -> JSONResponse:
    return JSONResponse([r.to_json(_base(request)) for r in records])


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "Invalid request: the body is not JSON") from None


def routes(emu: Emulator) -> list[Route]:
    async def list_envs(request: Request) -> Response:
        return JSONResponse([spec.to_json() for spec in emu.state.catalog.values()])

    async def get_env(request: Request) -> Response:
        return JSONResponse(emu.state.environment(request.path_params["env_key"]).to_json())

    async def regions(request: Request) -> Response:
        return JSONResponse(list(emu.state.regions))

    async def account(request: Request) -> Response:
        return JSONResponse(emu.state.account())

    async def runner_token(request: Request) -> Response:
        return JSONResponse({"token": emu.runner_token})

    async def create(request: Request) -> Response:
        record, cut = await emu.create(await _body(request), request.headers.get("x-request-id"))
        if cut:
            drop(request)
        faults = emu.faults
        if faults.create_answer_delay > 0:  # made, then slow to say so: a client may give up in between
            await anyio.sleep(faults.create_answer_delay)
        if faults.create_no_root_count > 0:  # made, but the answer has no usable address
            faults.create_no_root_count -= 1
            body = record.to_json(_base(request))
            body["urls"]["root"] = ""
            return JSONResponse(body)
        return _instance(request, record)

    async def list_instances(request: Request) -> Response:
        q = request.query_params
        found = emu.state.select(
            status=q.get("status"), region=q.get("region"), run_id=q.get("run_id"), profile_id=q.get("profile_id")
        )
        return _instances(request, found)

    async def get_instance(request: Request) -> Response:
        return _instance(request, emu.state.get(request.path_params["instance_id"]))

    async def delete_instance(request: Request) -> Response:
        if (delay := emu.faults.slow_delete()) > 0:
            await anyio.sleep(delay)
        return _instance(request, await emu.delete(request.path_params["instance_id"]))

    async def delete_batch(request: Request) -> Response:
        q = request.query_params
        return _instances(request, await emu.delete_batch(run_id=q.get("run_id"), profile_id=q.get("profile_id")))

    async def heartbeat(request: Request) -> Response:
        await _body(request)  # {} or {"region": ...}: accepted, not needed
        return JSONResponse(emu.state.heartbeat(request.path_params["instance_id"], emu.clock.now()))

    async def runs(request: Request) -> Response:
        q = request.query_params
        active = q.get("active", "active")
        by_run: dict[str, list[InstanceRecord]] = {}
        for record in emu.state.select(profile_id=q.get("profile_id")):
            if record.run_id:
                by_run.setdefault(record.run_id, []).append(record)
        answer = []
        for run_id, records in by_run.items():
            running = sum(r.live for r in records)
            if active == "all" or (active == "active") == (running > 0):
                created = [r.created_at for r in records]
                answer.append(
                    {
                        "run_id": run_id,
                        "running_count": running,
                        "total_count": len(records),
                        "first_created_at": iso(min(created)),
                        "last_created_at": iso(max(created)),
                        "profile_id": emu.state.profile_id,
                    }
                )
        return JSONResponse(answer)

    return [
        Route("/v1/env/", list_envs, methods=["GET"]),
        Route("/v1/regions", regions, methods=["GET"]),
        Route("/v1/account", account, methods=["GET"]),
        Route("/v1/runner-auth/token", runner_token, methods=["GET"]),
        Route("/v1/env/instances", list_instances, methods=["GET"]),
        Route("/v1/env/instances", create, methods=["POST"]),
        # before /v1/env/instances/{instance_id}, which would take "batch" for an id
        Route("/v1/env/instances/batch", delete_batch, methods=["DELETE"]),
        Route("/v1/env/instances/{instance_id}", get_instance, methods=["GET"]),
        Route("/v1/env/instances/{instance_id}", delete_instance, methods=["DELETE"]),
        Route("/v1/env/instances/{instance_id}/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/env/runs", runs, methods=["GET"]),
        Route("/v1/env/{env_key}", get_env, methods=["GET"]),
    ]
