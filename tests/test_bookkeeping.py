"""Bookkeeping that must stay bounded or honest (issue 13 item 8)."""

from __future__ import annotations

from pathlib import Path

import anyio
import mcp_types as t
import pytest
from helpers import KITCHEN, PY, http_client, proxy_http, wait_until
from mcp import MCPError
from test_failures import toml_config

from fleet_mcp_proxy.config import load_config

pytestmark = pytest.mark.anyio


@pytest.mark.timeout(120)
async def test_an_abandoned_input_required_call_expires_at_the_call_timeout(tmp_path: Path) -> None:
    config = toml_config(tmp_path, a={"command": [PY, str(KITCHEN), "a"], "call_timeout": 1})
    async with proxy_http(config) as proxy, http_client(f"{proxy.url}?episode=abandon", "2026-07-28") as c:
        with anyio.fail_after(60):
            await c.list_tools()
            asked = await c.session.call_tool("ask_user", {}, allow_input_required=True)
        assert isinstance(asked, t.InputRequiredResult) and asked.request_state
        (episode,) = proxy.state.registry.episodes.values()
        assert list(episode.pending) == [asked.request_state]
        # The agent never answers: the call ends at its 1 s call timeout and leaves nothing pending behind.
        await wait_until(lambda: not episode.pending, 30, "the abandoned call to expire")
        with anyio.fail_after(30), pytest.raises(MCPError, match="Unknown or expired requestState"):
            await c.session.call_tool(
                "ask_user", {}, input_responses={"backend": {"action": "decline"}}, request_state=asked.request_state
            )


@pytest.mark.timeout(120)
async def test_a_link_that_fails_to_start_records_no_release_of_an_instance_never_added(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(
        overrides={"store_path": str(tmp_path / "episodes.sqlite3")},
        env_args=(f"a={PY} -c pass",),  # starts and exits at once: the MCP link never comes up
    )
    async with proxy_http(config) as proxy:
        async with http_client(proxy.url) as c:
            with anyio.fail_after(60):
                failed = await c.call_tool("only_a", {})
            assert failed.is_error
            (episode,) = proxy.state.registry.episodes.values()
        store = proxy.state.recorder.store
        assert store is not None

        async def ended() -> bool:
            record = await store.get(episode.id)
            return record is not None and record.ended_at is not None

        with anyio.fail_after(30):  # records are written in order: once the end is, so is anything before it
            while not await ended():
                await anyio.sleep(0.05)
        record = await store.get(episode.id)
    assert record is not None and record.instances == ()
    assert not [r for r in caplog.records if r.name == "fleet_mcp_proxy.recorder"], caplog.text
