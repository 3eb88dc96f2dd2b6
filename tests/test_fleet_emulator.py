"""The Fleet emulator speaks the contract the real `fleet` SDK uses (fleet-contract.md §1, §2, §5)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from canaries import FLEET_KEY
from fleet import exceptions as sync_exc
from fleet._async import exceptions as aexc
from fleet._async.client import AsyncFleet
from fleet._async.instance.base import default_httpx_client
from fleet_emulator import READY_PREFIX, Clock, Emulator, Faults, running_emulator
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

KEY = FLEET_KEY  # the suite's canary: it must never reach a log, result or record
TESTS = Path(__file__).resolve().parent
TRACKER_TOOLS = {"list_projects", "list_issues", "get_issue", "create_issue", "close_issue", "add_comment"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def sdk(emu: Emulator, key: str = KEY, *, retrying: bool = False) -> AsyncIterator[AsyncFleet]:
    """The real AsyncFleet. Without `retrying`, a plain client: the SDK's default retries 404s for ~7 s (D29)."""
    http = default_httpx_client(3, 30.0) if retrying else httpx.AsyncClient(timeout=30.0)
    async with http:
        yield AsyncFleet(api_key=key, base_url=emu.base_url, httpx_client=http)


@contextlib.asynccontextmanager
async def mcp_client(url: str, key: str = KEY) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10.0) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client,
    ):
        yield client


async def tool_names(url: str) -> set[str]:
    async with mcp_client(url) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


async def mcp_status(url: str, key: str = KEY) -> int:
    async with httpx.AsyncClient(timeout=10.0) as http:
        reply = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {key}"})
        return reply.status_code


async def assert_mcp_dead(root: str) -> None:
    for url in (f"{root}mcp", f"{root}api/v1/mcp"):
        assert await mcp_status(url) == 502
    with pytest.raises(Exception):  # noqa: B017 - whatever the MCP client makes of a 502, it must not connect
        await tool_names(f"{root}mcp")


# -- catalog and lifecycle -------------------------------------------------------------------------------------
async def test_catalog_account_and_regions_through_the_sdk() -> None:
    with anyio.fail_after(20):
        async with running_emulator(KEY, instance_limit=3) as emu, sdk(emu) as fleet:
            envs = await fleet.list_envs()
            assert [e.env_key for e in envs] == ["tracker"]
            tracker = await fleet.environment("tracker")
            assert tracker.default_version == "v1.1.0"
            assert set(tracker.versions) == {"v1.0.0", "v1.1.0"}
            assert "local" in await fleet.list_regions()
            account = await fleet.account()
            assert (account.instance_limit, account.instance_count) == (3, 0)
            assert emu.requests("GET", "/v1/env/") == 1


async def test_make_list_heartbeat_delete_and_close_all_through_the_sdk() -> None:
    clock = Clock(frozen=True)
    with anyio.fail_after(30):
        async with running_emulator(KEY, clock=clock, require_runner_token=True) as emu, sdk(emu) as fleet:
            env = await fleet.make(
                "tracker:1.0.0", run_id="run-a", ttl_seconds=600, heartbeat_interval=30, env_variables={"TAG": "x"}
            )
            assert (env.status, env.version, env.run_id) == ("running", "v1.0.0", "run-a")
            assert env.env_variables == {"TAG": "x"}
            root = env.urls.root
            assert root == f"{emu.base_url}/{env.instance_id}/"
            assert env.urls.manager.api == f"{root}api/v1/env"
            assert emu.data_dir(env.instance_id).is_dir()

            # The SDK's instance-manager client fetches a runner token, then reads the resources.
            assert sorted(r.name for r in await env.resources()) == ["current", "seed"]
            assert emu.requests("GET", "/v1/runner-auth/token") == 1

            other = await fleet.make("tracker", run_id="run-a")
            await fleet.make("tracker", run_id="run-b")
            listed = await fleet.instances(run_id="run-a")
            assert {e.instance_id for e in listed} == {env.instance_id, other.instance_id}
            assert len(await fleet.instances(status="running")) == 3

            beat = await env.heartbeat()
            assert beat.success and beat.interval_seconds == 30
            assert beat.deadline_timestamp == pytest.approx(clock.now() + 60)
            unbeaten = await fleet.heartbeat(other.instance_id)
            assert unbeaten.success and unbeaten.deadline_timestamp is None and unbeaten.last_heartbeat is None

            deleted = await env.close()
            assert deleted.status == "stopped" and deleted.terminated_at is not None
            assert not emu.data_dir(env.instance_id).exists()
            assert (await fleet.instance(env.instance_id)).status == "stopped"
            with pytest.raises(aexc.FleetAPIError) as gone:
                await fleet.delete(env.instance_id)
            assert gone.value.status_code == 404
            assert not (await fleet.heartbeat(env.instance_id)).success

            closed = await fleet.close_all(run_id="run-a")
            assert [c.instance_id for c in closed] == [other.instance_id]
            assert [e.run_id for e in await fleet.instances(status="running")] == ["run-b"]
            assert emu.state.instances[env.instance_id].heartbeat_count == 2


# -- errors ----------------------------------------------------------------------------------------------------
async def test_errors_map_to_the_async_sdk_exceptions() -> None:
    with anyio.fail_after(20):
        async with running_emulator(KEY, instance_limit=1) as emu, sdk(emu) as fleet:
            async with sdk(emu, "wrong-key") as stranger:
                with pytest.raises(aexc.FleetAuthenticationError):
                    await stranger.list_envs()
            with pytest.raises(aexc.FleetEnvironmentNotFoundError) as env_missing:
                await fleet.make("nope")
            assert env_missing.value.env_key == "nope"
            with pytest.raises(aexc.FleetEnvironmentNotFoundError):
                await fleet.environment("nope")
            with pytest.raises(aexc.FleetVersionNotFoundError) as version_missing:
                await fleet.make("tracker:v9")
            assert (version_missing.value.version, version_missing.value.env_key) == ("v9", "tracker")
            with pytest.raises(aexc.FleetRegionError):
                await fleet.make("tracker", region="mars-1")

            await fleet.make("tracker")
            with pytest.raises(aexc.FleetInstanceLimitError) as limit:
                await fleet.make("tracker")
            assert (limit.value.running_instances, limit.value.instance_limit) == (1, 1)
            # D26: the top-level `fleet` exception classes are the sync ones and do not catch these.
            assert not isinstance(limit.value, sync_exc.FleetAPIError)
            assert emu.state.live_count() == 1


async def test_control_plane_faults_are_seeded_and_change_at_runtime() -> None:
    assert [Faults(seed=7, rate_5xx=0.5).roll(0.5) for _ in range(20)] == [
        Faults(seed=7, rate_5xx=0.5).roll(0.5) for _ in range(20)
    ]
    with anyio.fail_after(20):
        async with running_emulator(KEY, faults=Faults(rate_429=1.0, retry_after=3)) as emu, sdk(emu) as fleet:
            with pytest.raises(aexc.FleetRateLimitError):
                await fleet.list_envs()
            async with httpx.AsyncClient(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
                assert (await http.get("/v1/account")).headers["retry-after"] == "3"
                assert (await http.post("/_emulator/faults", json={"rate_5xx": 1.0})).status_code == 200
            with pytest.raises(aexc.FleetAPIError) as unavailable:
                await fleet.list_envs()
            assert unavailable.value.status_code == 503

            emu.faults.update(rate_5xx=0.0, create_health_check_failure_rate=1.0)
            with pytest.raises(aexc.FleetAPIError, match="Instance health check failed"):
                await fleet.make("tracker")
            assert emu.state.instances == {} and emu.state.request_ids == {}

            emu.faults.update(create_health_check_failure_rate=0.0, match=r"^GET /v1/env/$", rate_5xx=1.0)
            assert (await fleet.make("tracker")).status == "running"  # the fault only hits the listing
            with pytest.raises(aexc.FleetAPIError):
                await fleet.list_envs()

            emu.faults.update(rate_5xx=0.0, latency=(0.2, 0.3), match=None)
            started = anyio.current_time()
            await fleet.account()
            assert anyio.current_time() - started >= 0.2


# -- create de-duplication -------------------------------------------------------------------------------------
async def test_a_repeated_request_id_answers_409_and_makes_one_instance() -> None:
    with anyio.fail_after(20):
        async with (
            running_emulator(KEY) as emu,
            httpx.AsyncClient(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http,
        ):
            headers = {"X-Request-ID": "req-1"}
            first = await http.post("/v1/env/instances", json={"env_key": "tracker"}, headers=headers)
            again = await http.post("/v1/env/instances", json={"env_key": "tracker"}, headers=headers)
            assert first.status_code == 200
            assert again.status_code == 409
            detail = again.json()["detail"]
            assert detail["error"] == "duplicate_request_id"
            assert detail["instance_id"] == first.json()["instance_id"]
            assert len(emu.state.instances) == 1


async def test_a_create_cut_after_commit_is_recovered_by_the_sdk_as_one_instance() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY, faults=Faults(create_drop_after_commit_rate=1.0)) as emu:
            # What the SDK's httpx sees: a transport error, no status line.
            async with httpx.AsyncClient(base_url=emu.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.post("/v1/env/instances", json={"env_key": "tracker"}, headers={"X-Request-ID": "r0"})
            assert [r.request_id for r in emu.state.instances.values()] == ["r0"]

            # The SDK's default client re-sends with the same X-Request-ID, gets 409 and recovers the instance.
            async with sdk(emu, retrying=True) as fleet:
                env = await fleet.make("tracker", run_id="cut")
            made = [r for r in emu.state.instances.values() if r.run_id == "cut"]
            assert [r.instance_id for r in made] == [env.instance_id]
            assert env.status == "running"
            assert emu.requests("POST", "/v1/env/instances") == 3
            assert emu.requests("GET", f"/v1/env/instances/{env.instance_id}") == 1


# -- instances as MCP servers ----------------------------------------------------------------------------------
async def test_instances_serve_the_tracker_over_mcp_at_both_paths() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker", image_type="mcp")
            root = env.urls.root
            assert await tool_names(f"{root}mcp") >= TRACKER_TOOLS
            assert await tool_names(f"{root}api/v1/mcp") >= TRACKER_TOOLS
            async with mcp_client(f"{root}mcp") as client:
                projects = await client.call_tool("list_projects", {})
                assert not projects.is_error
            assert await mcp_status(f"{root}mcp", key="wrong") == 401
            assert await mcp_status(f"{emu.base_url}/no-such-instance/mcp") == 404
            async with httpx.AsyncClient() as http:
                health = await http.get(f"{root}api/v1/env/health")
                assert health.status_code == 200 and health.json()["status"] == "healthy"

            # Each instance has its own data: a write in one is not seen by another.
            twin = await fleet.make("tracker")
            async with mcp_client(f"{root}mcp") as client:
                created = await client.call_tool("create_issue", {"project": "WEB", "title": "Only here"})
                assert not created.is_error
            async with mcp_client(f"{twin.urls.root}mcp") as client:
                found = await client.call_tool("search_issues", {"query": "Only here"})
                assert found.structured_content is not None and found.structured_content["total"] == 0


async def test_a_missed_heartbeat_stops_the_instance_and_its_mcp_endpoint() -> None:
    clock = Clock(frozen=True)
    with anyio.fail_after(30):
        async with running_emulator(KEY, clock=clock, sweep_interval=None) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker", heartbeat_interval=30)
            await emu.advance(50)
            assert (await env.heartbeat()).success  # in time: the deadline moves to now + 60
            await emu.advance(59)
            assert (await fleet.instance(env.instance_id)).status == "running"
            assert await tool_names(f"{env.urls.root}mcp") >= TRACKER_TOOLS

            await emu.advance(2)
            seen = await fleet.instance(env.instance_id)
            assert (seen.status, seen.terminated_at is not None) == ("stopped", True)
            assert emu.state.instances[env.instance_id].stop_reason == "heartbeat_missed"
            assert not emu.data_dir(env.instance_id).exists()
            await assert_mcp_dead(env.urls.root)
            assert not (await env.heartbeat()).success


async def test_ttl_expiry_is_applied_lazily_on_the_next_request() -> None:
    clock = Clock(frozen=True)
    with anyio.fail_after(20):
        async with running_emulator(KEY, clock=clock, sweep_interval=None) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker", ttl_seconds=120)
            clock.advance(119)
            assert (await fleet.instance(env.instance_id)).status == "running"
            clock.advance(1)  # no sweep: the next request applies the clock
            assert (await fleet.instance(env.instance_id)).status == "stopped"
            assert emu.state.instances[env.instance_id].stop_reason == "ttl_expired"
            assert (await fleet.account()).instance_count == 0
            await assert_mcp_dead(env.urls.root)


async def test_a_killed_instance_reports_error_and_refuses_mcp() -> None:
    with anyio.fail_after(20):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            assert await tool_names(f"{env.urls.root}mcp") >= TRACKER_TOOLS
            async with httpx.AsyncClient(base_url=emu.base_url) as admin:
                killed = await admin.post(f"/_emulator/instances/{env.instance_id}/kill")
                assert killed.json()["status"] == "error"
            assert (await fleet.instance(env.instance_id)).status == "error"
            await assert_mcp_dead(env.urls.root)
            assert (await fleet.delete(env.instance_id)).status == "stopped"


async def test_a_provisioning_delay_shows_pending_until_the_clock_passes_it() -> None:
    clock = Clock(frozen=True)
    with anyio.fail_after(20):
        async with running_emulator(KEY, clock=clock, faults=Faults(provision_delay=30)) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            assert env.status == "pending"
            assert await mcp_status(f"{env.urls.root}mcp") == 503
            await emu.advance(30)
            assert (await fleet.instance(env.instance_id)).status == "running"
            assert await tool_names(f"{env.urls.root}mcp") >= TRACKER_TOOLS


async def test_admin_endpoints_show_state_and_move_the_clock() -> None:
    with anyio.fail_after(20):
        async with running_emulator(KEY, clock=Clock(frozen=True)) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker", run_id="r", env_variables={"A": 1}, ttl_seconds=10)
            async with httpx.AsyncClient(base_url=emu.base_url) as admin:
                state: dict[str, Any] = (await admin.get("/_emulator/state")).json()
                (only,) = state["instances"]
                assert (only["instance_id"], only["run_id"], only["env_variables"]) == (env.instance_id, "r", {"A": 1})
                assert state["request_counts"]["POST /v1/env/instances"] == 1
                moved = (await admin.post("/_emulator/clock/advance", params={"seconds": 10})).json()
                assert moved["stopped"] == [env.instance_id]
                limit = await admin.post("/_emulator/instance_limit", params={"value": 0})
                assert limit.json()["instance_limit"] == 0
                bad = await admin.post("/_emulator/faults", json={"rate_5xx": 2})
                assert bad.status_code == 400
            with pytest.raises(aexc.FleetInstanceLimitError):
                await fleet.make("tracker")


# -- process mode ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["module", "file"])
async def test_the_emulator_runs_as_its_own_process(form: str) -> None:
    args = ["-m", "fleet_emulator"] if form == "module" else [str(TESTS / "fleet_emulator" / "__main__.py")]
    proc = subprocess.Popen(
        [sys.executable, *args, "--port", "0", "--api-key", KEY, "--instance-limit", "2"],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        text=True,
    )
    data_root: Path | None = None
    try:
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)  # type: ignore[union-attr]
            prefix, base_url = line.split()
            assert prefix == READY_PREFIX and base_url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(timeout=10.0) as http:
                fleet = AsyncFleet(api_key=KEY, base_url=base_url, httpx_client=http)
                assert (await fleet.account()).instance_limit == 2
                env = await fleet.make("tracker")
                assert await tool_names(f"{env.urls.root}mcp") >= TRACKER_TOOLS
                data_root = Path((await http.get(f"{base_url}/_emulator/state")).json()["data_root"])
                assert (data_root / env.instance_id).is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(proc.wait, 15)
    assert code in (0, -signal.SIGTERM)
    assert data_root is not None and not data_root.exists()
