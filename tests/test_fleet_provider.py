"""Fleet environments end to end: a real MCP client, the proxy, the real `fleet` SDK, the Fleet emulator."""

from __future__ import annotations

import contextlib
import ssl
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import mcp_types as t
import pytest
from canaries import FLEET_KEY
from fleet_emulator import Emulator, Faults, running_emulator
from helpers import http_client, proxy_http, wait_until

import fleet_mcp_proxy
from fleet_mcp_proxy.config import ProxyConfig, load_config

KEY = FLEET_KEY  # the suite's canary: it must never reach a log, result or record


def fleet_config(emu: Emulator, *envs: str, api_key: str = KEY, **fleet: Any) -> tuple[ProxyConfig, str]:
    run_id = f"test-{uuid.uuid4().hex[:10]}"
    settings = {"run_id": run_id, "api_key": api_key, "base_url": emu.base_url, **fleet}
    config = load_config(overrides={"fleet": settings}, env_args=envs or ("tracker=fleet:tracker",), environ={})
    return config, run_id


def live(emu: Emulator, run_id: str) -> list[Any]:
    return [r for r in emu.state.select(run_id=run_id) if r.live]


def keyed(url: str) -> str:
    return f"{url}?episode=e-{uuid.uuid4().hex}"


async def _tool_error(c: Any, name: str, args: dict[str, Any]) -> str:
    result = await c.call_tool(name, args)
    assert result.is_error, result
    text = result.content[0].text
    assert KEY not in text and "Traceback" not in text and "Error:" not in text
    return str(text)


@pytest.mark.anyio
async def test_a_fleet_instance_is_provisioned_on_first_use_and_released_at_the_end() -> None:
    async with running_emulator(KEY) as emu:
        config, run_id = fleet_config(emu)
        async with proxy_http(config) as proxy:
            async with http_client(proxy.url) as c:
                assert live(emu, run_id) == [], "nothing is provisioned at initialize"
                with anyio.fail_after(60):
                    tools = [tool.name for tool in (await c.list_tools()).tools]
                    assert "create_issue" in tools and len(tools) >= 8
                    made = await c.call_tool(
                        "create_issue", {"project": "WEB", "title": "via fleet", "reporter": "bob"}
                    )
                assert not made.is_error, made
                (record,) = live(emu, run_id)
                assert record.run_id == run_id and record.ttl_seconds == 900
            with anyio.fail_after(30):
                await wait_until(lambda: not live(emu, run_id), 30, "instance released")
            assert emu.state.get(record.instance_id).stop_reason == "deleted"


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_heartbeats_keep_an_instance_alive_and_an_instance_killed_mid_episode_errors_clearly() -> None:
    async with running_emulator(KEY) as emu:
        config, run_id = fleet_config(emu, heartbeat_interval=30)
        async with proxy_http(config) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(120):
                assert not (await c.call_tool("list_projects", {})).is_error
                (record,) = live(emu, run_id)
                assert record.heartbeat_interval == 30
                # Time is the subject: the platform stops an instance 2 intervals (60 s) after its last beat. Once
                # the proxy beat (every 30 s), 50 s more on the platform's clock is 80 s after the create: only the
                # beat keeps it up.
                await wait_until(lambda: record.heartbeat_count >= 1, 90, "the proxy's first heartbeat")
                await emu.advance(50)
                assert record.live, "heartbeats kept it alive past two intervals from its create"
                assert not (await c.call_tool("list_projects", {})).is_error
                await emu_kill(emu, record.instance_id)
                text = await _tool_error(c, "list_projects", {})
            assert "tracker" in text


async def emu_kill(emu: Emulator, instance_id: str) -> None:
    async with anyio.create_task_group():
        emu.state.kill(instance_id, emu.clock.now())


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("spec", "key", "limit", "words"),
    [
        ("tracker=fleet:tracker", "wrong-key", 10, "rejected the API key"),
        ("tracker=fleet:nope", KEY, 10, "no environment 'nope'"),
        ("tracker=fleet:tracker:v9.9.9", KEY, 10, "no version 'v9.9.9'"),
        ("tracker=fleet:tracker", KEY, 0, "instance limit"),
    ],
    ids=["wrong-key", "unknown-env", "unknown-version", "instance-limit"],
)
async def test_fleet_problems_reach_the_user_as_one_clear_message(spec: str, key: str, limit: int, words: str) -> None:
    async with running_emulator(KEY, instance_limit=limit) as emu:
        config, run_id = fleet_config(emu, spec, api_key=key)
        async with proxy_http(config) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(60):
                from mcp import MCPError

                with pytest.raises(MCPError) as listed:
                    await c.list_tools()
                text = await _tool_error(c, "anything", {})
        for message in (listed.value.message, text):
            assert words in message, message
            assert key not in message and KEY not in message
        assert live(emu, run_id) == []


def test_a_fleet_environment_without_a_key_stops_startup_with_a_clear_message() -> None:
    from fleet_mcp_proxy.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(env_args=("tracker=fleet:tracker",), environ={})
    assert err.value.key == "fleet.api_key" and "FLEET_API_KEY" in err.value.problem


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_fifty_concurrent_episodes_provision_while_30_percent_of_fleet_calls_answer_503() -> None:
    faults = Faults(seed=7, rate_5xx=0.3)
    async with running_emulator(KEY, faults=faults, instance_limit=100) as emu:
        config, run_id = fleet_config(emu, max_retries=6)
        async with proxy_http(config) as proxy:
            ok: list[str] = []

            async def one_episode() -> None:
                async with http_client(keyed(proxy.url), "2026-07-28") as c:
                    result = await c.call_tool("list_projects", {})
                    assert not result.is_error, result
                    ok.append("ok")

            with anyio.fail_after(240):
                async with anyio.create_task_group() as tg:
                    for _ in range(50):
                        tg.start_soon(one_episode)
            assert len(ok) == 50
            assert len(live(emu, run_id)) == 50, "one instance per episode"
            assert emu.requests("POST", "/v1/env/instances") >= 50


_CA_LOADS = frozenset({"load_verify_locations", "set_default_verify_paths"})  # the C calls that read certificates
_PROXY_DIR = str(Path(fleet_mcp_proxy.__file__).parent)


@contextlib.contextmanager
def ca_bundle_loads_by_the_proxy() -> Iterator[list[str]]:
    """Records each CA-bundle load that the proxy's own code caused (the caller frame that did it), by watching
    the interpreter's C calls in this thread (the event loop's): each load blocks the loop for tens of ms."""
    loads: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call" or getattr(arg, "__name__", "") not in _CA_LOADS:
            return
        if not isinstance(getattr(arg, "__self__", None), ssl.SSLContext):
            return
        caller: FrameType | None = frame
        while caller is not None:
            if caller.f_code.co_filename.startswith(_PROXY_DIR):
                loads.append(f"{caller.f_code.co_filename}:{caller.f_lineno}")
                return
            caller = caller.f_back

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield loads
    finally:
        sys.setprofile(previous)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_provisioned_instances_do_not_each_load_the_ca_bundle() -> None:
    # Each load blocks the one event loop ~30-50 ms; a readiness probe that built its own TLS context per poll
    # starved heartbeats under load until instances were stopped for missed beats (R4).
    async with running_emulator(KEY) as emu:
        config, run_id = fleet_config(emu)
        async with proxy_http(config) as proxy:

            async def one_episode() -> None:
                async with http_client(keyed(proxy.url), "2026-07-28") as c:
                    result = await c.call_tool("list_projects", {})
                    assert not result.is_error, result

            with ca_bundle_loads_by_the_proxy() as loads, anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(one_episode)
            assert len(live(emu, run_id)) == 4
    assert len(loads) <= 1, f"one shared TLS context at most, not one per instance: {loads}"


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_creates_whose_answers_are_dropped_leave_exactly_one_instance_per_episode() -> None:
    faults = Faults(seed=3, create_drop_after_commit_rate=0.2)
    async with running_emulator(KEY, faults=faults, instance_limit=100) as emu:
        config, run_id = fleet_config(emu)
        async with proxy_http(config) as proxy:
            episodes = 20

            async def one_episode() -> None:
                async with http_client(keyed(proxy.url), "2026-07-28") as c:
                    result = await c.call_tool("list_projects", {})
                    assert not result.is_error, result

            with anyio.fail_after(240):
                async with anyio.create_task_group() as tg:
                    for _ in range(episodes):
                        tg.start_soon(one_episode)
            assert len(live(emu, run_id)) == episodes
            assert len(proxy.state.registry.episodes) == episodes


@pytest.mark.anyio
async def test_a_tool_list_of_a_fleet_episode_is_the_instance_list_unchanged() -> None:
    async with running_emulator(KEY) as emu:
        config, _ = fleet_config(emu)
        async with proxy_http(config) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(60):
                via_proxy = (await c.list_tools()).tools
            (episode,) = proxy.state.registry.episodes.values()
            from_instance = episode.links["tracker"].lists["tools"]  # what the instance itself listed, raw
        assert {tool.name for tool in via_proxy} >= {"list_projects", "get_issue", "close_issue"}
        # Unchanged: every tool, in order, with every field the instance gave it (no renames, no dropped keys).
        assert [tool.model_dump(by_alias=True, mode="json", exclude_none=True) for tool in via_proxy] == [
            t.Tool.model_validate(tool).model_dump(by_alias=True, mode="json", exclude_none=True)
            for tool in from_instance
        ]


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_a_fleet_task_is_verified_remotely_through_the_platform(tmp_path: Any) -> None:
    import json

    from fleet_mcp_proxy.demo import DEMO_TASKS

    key = "tracker-jpy-reporter"
    async with running_emulator(KEY) as emu:
        run_id = f"test-{uuid.uuid4().hex[:10]}"
        overrides = {
            "fleet": {"run_id": run_id, "api_key": KEY, "base_url": emu.base_url},
            "tasks_file": str(DEMO_TASKS),
            "store_path": str(tmp_path / "episodes.sqlite3"),
        }
        config = load_config(overrides=overrides, environ={})
        updated = anyio.Event()

        async def on_message(message: object) -> None:
            if isinstance(message, t.ResourceUpdatedNotification):
                updated.set()

        async with proxy_http(config) as proxy:
            async with http_client(f"{proxy.url}?task={key}", message_handler=on_message) as c:
                with anyio.fail_after(120):
                    await c.list_tools()
                    (record,) = live(emu, run_id)  # the task's environment is a Fleet instance
                    await c.subscribe_resource("fleet://episode/current/reward")
                    found = await c.call_tool("search_issues", {"query": "JPY"})
                    assert not found.is_error
                    await c.call_tool("submit_final_answer", {"answer": "bob"})
                    await updated.wait()
                    read = await c.read_resource("fleet://episode/current/reward")
                    reward = json.loads(read.contents[0].text)  # type: ignore[union-attr]
            assert reward["reward"] == 1.0 and reward["execution_id"], reward
            assert emu.requests("POST", "/v1/verifiers/execute") >= 1
