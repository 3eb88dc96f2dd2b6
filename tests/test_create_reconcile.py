"""Every create is reconciled (issue 12, item 7): an instance the platform made is deleted when its answer cannot
be used, and when the create was given up while in flight. Through the proxy, the real SDK and the emulator."""

from __future__ import annotations

import anyio
import pytest
from fleet_emulator import running_emulator
from helpers import http_client, proxy_http, wait_until
from test_fleet_provider import KEY, fleet_config, keyed, live

pytestmark = pytest.mark.anyio


async def test_a_create_answered_without_an_address_is_deleted() -> None:
    async with running_emulator(KEY) as emu:
        config, run_id = fleet_config(emu)
        emu.faults.update(create_no_root_count=1)
        async with proxy_http(config) as proxy, http_client(keyed(proxy.url)) as c:
            with anyio.fail_after(60):
                failed = await c.call_tool("list_projects", {})
                assert failed.is_error and "without an address" in failed.content[0].text  # type: ignore[union-attr]
                made = list(emu.state.select(run_id=run_id))
                assert len(made) == 1 and not made[0].live and made[0].stop_reason == "deleted"
                assert not (await c.call_tool("list_projects", {})).is_error  # the next call provisions anew
            assert len(live(emu, run_id)) == 1


async def test_a_create_given_up_in_flight_is_found_by_its_tag_and_deleted() -> None:
    async with running_emulator(KEY) as emu:
        config, run_id = fleet_config(emu, provision_timeout=1.0)
        emu.faults.update(create_answer_delay=4.0)  # the platform makes it, then answers after the proxy gave up
        async with proxy_http(config) as proxy, http_client(keyed(proxy.url)) as c:
            with anyio.fail_after(60):
                failed = await c.call_tool("list_projects", {})
                assert failed.is_error and "within 1 s" in failed.content[0].text  # type: ignore[union-attr]
                assert len(emu.state.select(run_id=run_id)) == 1, "the platform made one"
                await wait_until(lambda: not live(emu, run_id), 30, "the instance given up on is deleted")
