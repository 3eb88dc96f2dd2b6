"""A `subscriptions/listen` stream ends with its episode (issue 13 item 6)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import anyio
import pytest
from helpers import config_with, http_client, kitchen_cmd, proxy_http, wait_until

pytestmark = pytest.mark.anyio


def _collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


IDLE = 1.0  # seconds; the idle reap is the subject of this test


@pytest.mark.timeout(120)
async def test_an_idle_reap_ends_the_listen_stream_and_frees_the_episode() -> None:
    config = config_with(f"a={kitchen_cmd('a')}", idle_timeout=IDLE)
    async with proxy_http(config) as proxy, http_client(f"{proxy.url}?episode=listen-reap", "2026-07-28") as c:
        with anyio.fail_after(60):
            await c.list_tools()
        registry = proxy.state.registry
        (episode,) = registry.episodes.values()
        old = weakref.ref(episode)
        del episode
        # The reaper ends the episode about IDLE s after the last request; the bound leaves a wide margin.
        with anyio.fail_after(30):
            async with c.listen(tools_list_changed=True) as events:
                heard = [event async for event in events]  # ends only when the proxy closes the stream
        assert heard == []
        assert not registry.episodes  # reaped
        # Nothing pins the ended episode (its output store can hold 64 MiB): it is collected once its end is done.
        await wait_until(lambda: _collected(old), 30, "the ended episode to be collected")
