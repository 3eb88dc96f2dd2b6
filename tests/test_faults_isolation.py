"""One episode's backend hangs, another's speaks broken JSON-RPC, while 49 other episodes carry on with zero errors
and `/healthz` answers 200 throughout (reliability.md R13). Fleet instances from the emulator; the misbehaving
ones are switched after provisioning, so their records still say `running`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2
import mcp_types as t
import pytest
from fleet_emulator import running_emulator
from helpers import http_client, proxy_http

from fleet_mcp_proxy.config import load_config

KEY = "fleet-isolation-key-9a04"
HEALTHY = 49
CALLS = 4
# Healthy calls took up to ~0.8 s here with 49 episodes on a loaded 2-core machine: 5 s leaves a 5x margin, so
# only the hung and garbage backends ever reach it.
CALL_TIMEOUT = 5.0
Record = Callable[[str, object], None]


def text_of(result: t.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, t.TextContent))


@pytest.mark.anyio
@pytest.mark.timeout(150)
async def test_r13_a_hung_and_a_garbage_backend_leave_49_other_episodes_error_free(
    tmp_path: Path, record_property: Record
) -> None:
    async with running_emulator(KEY, instance_limit=HEALTHY + 10) as emu:
        path = tmp_path / "proxy.toml"
        path.write_text(
            f'[fleet]\napi_key = "{KEY}"\nbase_url = "{emu.base_url}"\nrun_id = "iso-{uuid.uuid4().hex[:8]}"\n'
            f'[env.tracker]\nfleet = "tracker"\ncall_timeout = {CALL_TIMEOUT}\n',
            encoding="utf-8",
        )
        async with proxy_http(load_config(path, environ={})) as proxy:
            keys = {name: f"iso-{name}-{uuid.uuid4().hex[:8]}" for name in ("hang", "garbage")}
            keys |= {f"ok{i}": f"iso-ok{i}-{uuid.uuid4().hex[:8]}" for i in range(HEALTHY)}
            errors: list[str] = []
            victims: dict[str, tuple[str, float]] = {}
            health: list[int] = []
            provisioned, go, done = [0], anyio.Event(), anyio.Event()
            all_up = anyio.Event()

            async def episode(name: str) -> None:
                # Each client lives in one task from start to end (the SDK client's task affinity).
                async with http_client(f"{proxy.url}?episode={keys[name]}", "2026-07-28") as c:
                    assert not (await c.call_tool("list_projects", {})).is_error
                    provisioned[0] += 1
                    if provisioned[0] == len(keys):
                        all_up.set()
                    await go.wait()
                    if name in ("hang", "garbage"):
                        started = anyio.current_time()
                        with anyio.fail_after(CALL_TIMEOUT + 10):
                            result = await c.call_tool("list_projects", {})
                        assert result.is_error, result
                        victims[name] = (text_of(result), anyio.current_time() - started)
                        return
                    for _ in range(CALLS):
                        result = await c.call_tool("list_projects", {})
                        if result.is_error:
                            errors.append(text_of(result))

            async def watch_health() -> None:
                async with httpx2.AsyncClient(timeout=5) as raw:
                    while not done.is_set():
                        health.append((await raw.get(proxy.url.replace("/mcp", "/healthz"))).status_code)
                        await anyio.sleep(0.1)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as outer:
                    async with anyio.create_task_group() as tg:
                        for name in keys:
                            tg.start_soon(episode, name)
                        await all_up.wait()
                        for mode in ("hang", "garbage"):
                            instance = proxy.state.registry.episodes[f"key:anonymous:{keys[mode]}"].instances["tracker"]
                            emu.misbehaving[instance.instance_id] = mode
                        outer.start_soon(watch_health)
                        go.set()
                    done.set()

        assert errors == [], errors[:3]
        assert set(victims) == {"hang", "garbage"}
        for text, _ in victims.values():
            assert "list_projects" in text and "Traceback" not in text and "validation" not in text, text
        assert health and all(code == 200 for code in health)
        line = (
            f"R13: hung backend -> is_error in {victims['hang'][1]:.1f} s, garbage backend -> is_error in "
            f"{victims['garbage'][1]:.1f} s (call timeout {CALL_TIMEOUT:g} s); {HEALTHY} other episodes made "
            f"{HEALTHY * CALLS} calls with 0 errors; /healthz 200 on {len(health)}/{len(health)} checks"
        )
        print(line)
        record_property("figure", line)
