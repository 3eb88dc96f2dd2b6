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
from fleet_mcp_proxy.recorder import BATCH_LIMIT, Recorder, now
from fleet_mcp_proxy.store import StoreError
from fleet_mcp_proxy.store.sqlite import open_store

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


@pytest.mark.timeout(60)
async def test_a_recorder_out_of_time_still_closes_the_store_and_counts_what_it_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "episodes.sqlite3"
    store = await open_store(path)
    recorder = Recorder(store)
    emitted = BATCH_LIMIT + 5  # the writer takes a whole batch at a time: some must be left queued behind it
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        for n in range(emitted):
            recorder.emit("open_episode", f"ep-{n}", "anyone", None, now())
        with anyio.fail_after(30):
            await recorder.close(0)  # no time at all: whatever is still queued cannot be written
    with pytest.raises(StoreError):
        await store.get("ep-0")  # closed
    dropped = [r for r in caplog.records if "queued record(s) not written" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelname == "WARNING"
    lost = int(dropped[0].getMessage().split(": ")[1].split()[0])
    async with await open_store(path) as reopened:
        written = sum([await reopened.get(f"ep-{n}") is not None for n in range(emitted)])
    assert lost >= 1 and written + lost == emitted, (written, lost)
