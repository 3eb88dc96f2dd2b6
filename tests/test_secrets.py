"""Secrets (R11): the canary Fleet key and client token never reach a result, record, store, log or upstream.

The autouse fixture in conftest.py already fails any test whose log records carry a canary; these tests drive
every surface at once with both canaries set and scan what each surface produced.
"""

from __future__ import annotations

import re
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from canaries import CLIENT_TOKEN, FLEET_KEY, leaked
from edge_helpers import Recording, Seen, kitchen_app, serve
from fleet_emulator import running_emulator
from helpers import PY, ROOT, child_env, http_client, proxy_http, stop_process
from mcp import MCPError

from fleet_mcp_proxy.config import TOKEN_ENV, load_config

BEARER = {"Authorization": f"Bearer {CLIENT_TOKEN}"}


def _dump(value: Any) -> str:
    return value.model_dump_json() if hasattr(value, "model_dump_json") else repr(value)


async def _exercise(url: str, surfaces: list[str]) -> None:
    """Successes, tool errors, protocol errors and resources of one episode; every answer lands in `surfaces`."""
    async with http_client(url, "2026-07-28", headers=BEARER) as c:
        surfaces.append(_dump(await c.list_tools()))
        surfaces.append(_dump(await c.call_tool("list_projects", {})))
        surfaces.append(_dump(await c.call_tool("echo", {"text": "through the url backend"})))
        surfaces.append(_dump(await c.call_tool("fail", {})))
        surfaces.append(_dump(await c.call_tool("get_issue", {"key": "NOPE-1"})))
        for bad in ("no_such_tool", "tracker__nothing"):
            with pytest.raises(MCPError) as err:
                await c.call_tool(bad, {})
            surfaces.append(str(err.value))
        surfaces.append(_dump(await c.list_resources()))
        for uri in ("fleet://instances/tracker", "fleet://instances/site", "fleet://episode/current/tool_errors"):
            surfaces.append(_dump(await c.read_resource(uri)))  # noqa: PERF401 - one awaited read at a time


async def _ended_record(http: httpx2.AsyncClient, url: str) -> httpx2.Response:
    while True:  # the recorder writes in the background; callers bound the wait
        record = await http.get(url, headers=BEARER)
        if record.status_code == 200 and record.json().get("ended_at") is not None:
            return record
        await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_no_canary_reaches_results_records_the_store_or_any_upstream(tmp_path: Path) -> None:
    fleet_seen, backend_seen, surfaces = Seen(), Seen(), []
    store = tmp_path / "episodes.sqlite3"
    async with (
        running_emulator(FLEET_KEY, wrap=lambda app: Recording(app, fleet_seen)) as emu,
        serve(Recording(kitchen_app("site"), backend_seen)) as backend,
    ):
        settings = {"run_id": f"s-{uuid.uuid4().hex[:8]}", "api_key": FLEET_KEY, "base_url": emu.base_url}
        config = load_config(
            overrides={"fleet": settings, "auth": {"tokens": {"alice": CLIENT_TOKEN}}, "store_path": str(store)},
            env_args=("tracker=fleet:tracker", f"site={backend}/mcp"),
            environ={},
        )
        async with proxy_http(config) as proxy, httpx2.AsyncClient(timeout=10) as http:
            url = f"{proxy.url}?episode=canary"
            base = proxy.url.removesuffix("/mcp")
            with anyio.fail_after(120):
                await _exercise(url, surfaces)
                (episode,) = proxy.state.registry.episodes.values()
                surfaces.append((await http.get(base + "/status", headers=BEARER)).text)
                surfaces.append((await http.post(proxy.url, json={}, headers={"Authorization": "Bearer x"})).text)
                await http.delete(url, headers=BEARER)
                record = await _ended_record(http, f"{base}/episodes/{episode.id}")
                surfaces.append(record.text)
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("episodes.sqlite3*"))  # noqa: ASYNC240
    assert b"list_projects" in store_bytes and "list_projects" in record.text, "the record holds the calls"
    for where, text in [*((f"result {i}", s) for i, s in enumerate(surfaces)), ("store", store_bytes)]:
        assert not leaked(text), f"a canary is in the {where}"
    fleet_auth = {headers.get("authorization") for _, headers in fleet_seen.requests}
    assert f"Bearer {FLEET_KEY}" in fleet_auth, "the recorder sees the headers the proxy sends"
    upstream = fleet_seen.header_values() + backend_seen.header_values()
    assert backend_seen.requests and not [v for v in upstream if CLIENT_TOKEN in v], "the client token went upstream"
    assert not [v for v in backend_seen.header_values() if FLEET_KEY in v], "the Fleet key went to a non-Fleet backend"


@pytest.mark.anyio
async def test_a_rejected_fleet_key_is_reported_without_quoting_it() -> None:
    async with running_emulator("some-other-key-entirely") as emu:
        settings = {"run_id": f"s-{uuid.uuid4().hex[:8]}", "api_key": FLEET_KEY, "base_url": emu.base_url}
        config = load_config(overrides={"fleet": settings}, env_args=("tracker=fleet:tracker",), environ={})
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?episode=k", "2026-07-28") as c:
            with anyio.fail_after(60):
                result = await c.call_tool("list_projects", {})
                resource = await c.read_resource("fleet://instances/tracker")
    assert result.is_error and "API key" in result.content[0].text  # type: ignore[union-attr]
    assert not leaked(_dump(result)) and not leaked(_dump(resource))


@pytest.mark.anyio
async def test_a_child_proxy_logging_at_debug_never_writes_a_canary(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    async with running_emulator(FLEET_KEY) as emu:
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[proxy]\nstore_path = "{tmp_path / "store.sqlite3"}"\n'
            f'[fleet]\nbase_url = "{emu.base_url}"\nrun_id = "child-{uuid.uuid4().hex[:8]}"\n'
            '[env.tracker]\nfleet = "tracker"\n',
            encoding="utf-8",
        )
        args = [PY, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--config", str(config), "--log-level", "DEBUG"]
        env = child_env(FLEET_API_KEY=FLEET_KEY, **{TOKEN_ENV: CLIENT_TOKEN})
        with log.open("w") as sink:
            proc = subprocess.Popen(args, stderr=sink, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
        try:
            with anyio.fail_after(60):
                while not (match := re.search(r"listening on (\S+)", log.read_text())):
                    assert proc.poll() is None, log.read_text()[-2000:]
                    await anyio.sleep(0.05)
                url = match.group(1)
                async with httpx2.AsyncClient(timeout=10) as http:
                    while True:  # "listening" is printed just before uvicorn starts accepting
                        try:
                            if (await http.get(url.removesuffix("/mcp") + "/healthz")).status_code == 200:
                                break
                        except httpx2.ConnectError:
                            await anyio.sleep(0.05)
                async with http_client(f"{url}?episode=child", "2026-07-28", headers=BEARER) as c:
                    assert not (await c.call_tool("list_projects", {})).is_error
                    await c.call_tool("get_issue", {"key": "NOPE-1"})
                async with httpx2.AsyncClient(timeout=10) as http:
                    refused = await http.post(url, json={}, headers={"Authorization": f"Bearer {CLIENT_TOKEN}x"})
                assert refused.status_code == 401
        finally:
            # In a thread: the emulator in this event loop must keep answering the child's releases.
            code = await anyio.to_thread.run_sync(stop_process, proc, signal.SIGTERM)
    text = log.read_text()
    print(f"\nchild proxy: exit {code}, {len(text.splitlines())} stderr lines at DEBUG scanned")
    assert "DEBUG" in text, "the child really logged at DEBUG"
    assert not leaked(text), "a canary is in the child's stderr"
