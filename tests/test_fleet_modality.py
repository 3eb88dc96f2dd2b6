"""Each task's modality and endpoints as Fleet's harness reads them (contract 2.1), lease loss by type and
the instance's time left: a real MCP client, the proxy, the real `fleet` SDK, the Fleet emulator's images."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from canaries import FLEET_KEY
from fleet_emulator import DEFAULT_CATALOG, Emulator, running_emulator
from fleet_emulator.images import IMAGE_CATALOG
from helpers import http_client, proxy_http
from mcp import MCPError

from fleet_mcp_proxy.config import EnvironmentConfig, ProxyConfig, load_config
from fleet_mcp_proxy.providers.fleet import FleetProvider
from fleet_mcp_proxy.providers.leases import LeaseLost

pytestmark = pytest.mark.anyio

KEY = FLEET_KEY
CATALOG = DEFAULT_CATALOG + IMAGE_CATALOG
CONTEXT_TOOLS = {"view_tool_output", "search_tool_output", "search_history", "check_context"}


def task_config(
    emu: Emulator, tmp_path: Path, env_key: str, modality: str, fleet: dict[str, Any] | None = None, **proxy: Any
) -> ProxyConfig:
    task = {"task_key": "t1", "prompt": "Look around.", "env_key": env_key, "modality": modality}
    (tmp_path / "tasks.json").write_text(json.dumps([task]))
    overrides = {
        "fleet": {"run_id": f"test-{uuid.uuid4().hex[:10]}", "api_key": KEY, "base_url": emu.base_url, **(fleet or {})},
        "tasks_file": str(tmp_path / "tasks.json"),
        "store_path": str(tmp_path / "episodes.sqlite3"),
        "catalog_cache": False,
        **proxy,
    }
    return load_config(overrides=overrides, environ={})


async def tool_names(url: str) -> list[str]:
    async with http_client(f"{url}?task=t1") as c:
        with anyio.fail_after(90):
            return [tool.name for tool in (await c.list_tools()).tools if tool.name not in CONTEXT_TOOLS]


async def test_a_tool_use_task_unions_both_endpoints_first_name_wins_and_hides_computer(tmp_path: Path) -> None:
    async with running_emulator(KEY, catalog=CATALOG) as emu:
        config = task_config(emu, tmp_path, "tracker-both", "tool_use")
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?task=t1") as c:
            with anyio.fail_after(90):
                names = [tool.name for tool in (await c.list_tools()).tools]
                listed = await c.call_tool("list_projects", {})
                status = await c.call_tool("aggregator_status", {})
    assert "computer" not in names  # item 1: a tool_use task never shows `computer`
    assert {"create_issue", "aggregator_status"} <= set(names)  # item 2: both endpoints, unioned
    assert names.count("list_projects") == 1 and not any("__" in name for name in names)  # deduped, not renamed
    assert not listed.is_error and "aggregator" not in str(listed.content)  # the environment's own server won
    assert not status.is_error and "aggregator ok" in str(status.content)


async def test_a_computer_use_task_reads_only_the_aggregator_and_shows_only_computer(tmp_path: Path) -> None:
    async with running_emulator(KEY, catalog=CATALOG) as emu:
        config = task_config(emu, tmp_path, "tracker-both", "computer_use", context={"enabled": "never"})
        async with proxy_http(config) as proxy:
            assert await tool_names(proxy.url) == ["computer"]
        (record,) = [r for r in emu.state.instances.values() if r.env_key == "tracker-both"]
        assert record.image_type == "mcp"


async def test_an_image_serving_only_the_aggregator_works_for_tool_use(tmp_path: Path) -> None:
    async with running_emulator(KEY, catalog=CATALOG) as emu:
        config = task_config(emu, tmp_path, "tracker-agg-only", "tool_use", fleet={"provision_timeout": 30})
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?task=t1") as c:
            with anyio.fail_after(90):
                names = [tool.name for tool in (await c.list_tools()).tools]
                made = await c.call_tool(
                    "create_issue", {"project": "WEB", "title": "via aggregator", "reporter": "bob"}
                )
    assert "create_issue" in names
    assert not made.is_error, made


@pytest.mark.parametrize("env_key", ["tracker", "tracker-slow-agg"])
async def test_a_computer_use_task_without_a_computer_tool_fails_naming_the_environment(
    tmp_path: Path, env_key: str
) -> None:
    """No `computer` (the plain tracker), or an aggregator that never answers: an error, never a list without it."""
    async with running_emulator(KEY, catalog=CATALOG) as emu:
        config = task_config(emu, tmp_path, env_key, "computer_use", fleet={"provision_timeout": 8})
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?task=t1") as c:
            with anyio.fail_after(90), pytest.raises(MCPError) as raised:
                await c.list_tools()
    message = str(raised.value)
    assert env_key.replace("-", "_") in message or env_key in message, message
    if env_key == "tracker":
        assert "'computer'" in message, message


async def test_check_context_reports_the_instance_time_left(tmp_path: Path) -> None:
    async with running_emulator(KEY, catalog=CATALOG) as emu:
        config = task_config(emu, tmp_path, "tracker", "tool_use", context={"tools": ["check_context"]})
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?task=t1") as c:
            with anyio.fail_after(90):
                await c.list_tools()
                checked = await c.call_tool("check_context", {})
    left = (checked.structured_content or {})["instance_time_left_s"]
    assert isinstance(left, float) and 0 < left <= 900, checked  # the default TTL is 900 s from the create


Asgi = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

REFUSALS = {
    "environment access (a FleetPermissionError subclass)": (
        403,
        "User does not have permission to access environment 'tracker'",
    ),
    "team not found (a FleetPermissionError subclass)": (403, "Team not found"),
    "bad request": (400, "Invalid heartbeat for this instance"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_heartbeat_refused_by_a_terminal_sdk_error_subclass_loses_the_lease(case: str) -> None:
    status, detail = REFUSALS[case]

    def refuse_heartbeats(app: Asgi) -> Asgi:
        async def wrapped(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and str(scope["path"]).endswith("/heartbeat"):
                body = json.dumps({"detail": detail}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        return wrapped

    async with running_emulator(KEY, wrap=refuse_heartbeats) as emu:
        config = load_config(
            overrides={"fleet": {"run_id": "test-beats", "api_key": KEY, "base_url": emu.base_url}}, environ={}
        )
        provider = FleetProvider(config.fleet)
        try:
            with anyio.fail_after(60):
                instance = await provider.provision(EnvironmentConfig(name="tracker", fleet="tracker"), "e1")
                with pytest.raises(LeaseLost) as lost:
                    await provider.heartbeat(instance)
                await provider.delete(instance)
        finally:
            await provider.aclose()
    assert str(status) in str(lost.value)
