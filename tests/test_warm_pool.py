"""The warm pool: ready Fleet instances waiting for episodes, each handed to exactly one, all released at the end."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from canaries import FLEET_KEY
from fleet_emulator import running_emulator
from helpers import http_client, proxy_http, wait_until
from test_fleet_provider import fleet_config, keyed, live

from fleet_mcp_proxy.config import ConfigError, EnvironmentConfig, load_config
from fleet_mcp_proxy.providers.base import HttpTarget, Instance
from fleet_mcp_proxy.providers.warm import WarmPool

pytestmark = pytest.mark.anyio


def _with_pool(config: Any, size: int) -> Any:
    envs = tuple(env.model_copy(update={"warm_pool": size}) for env in config.environments)
    return config.model_copy(update={"environments": envs})


async def _instance_of(c: Any) -> str:
    """The instance behind this episode, as the proxy's own resource reports it."""
    listing = await c.list_resources()
    uris = [str(r.uri) for r in listing.resources if str(r.uri).startswith("fleet://instances/")]
    assert uris, listing
    text = (await c.read_resource(uris[0])).contents[0].text
    return str(text)


async def test_episodes_take_warm_instances_which_are_refilled_and_released_at_shutdown() -> None:
    async with running_emulator(FLEET_KEY) as emu:
        config, run_id = fleet_config(emu)
        async with proxy_http(_with_pool(config, 2)) as proxy:
            pool = proxy.holder.state.pool.warm
            with anyio.fail_after(60):
                await wait_until(lambda: pool.size("tracker") == 2, 60, "two warm instances")
            warm_ids = {r.instance_id for r in live(emu, run_id)}
            assert len(warm_ids) == 2, "nothing but the pool has asked for instances yet"
            # Two episodes at once: each gets its own warm instance, never the same one.
            async with http_client(keyed(proxy.url), mode="auto") as one, http_client(keyed(proxy.url)) as two:
                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(one.call_tool, "list_projects", {})
                        tg.start_soon(two.call_tool, "list_projects", {})
                    assert pool.taken == 2
                    # The pool refills behind them: 2 in use plus 2 warm again.
                    await wait_until(lambda: pool.size("tracker") == 2 and len(live(emu, run_id)) == 4, 60, "refill")
            in_use = {r.instance_id for r in live(emu, run_id)} - warm_ids
            assert len(in_use) == 2  # the refills; the taken ones were the first warm pair
        with anyio.fail_after(60):
            await wait_until(lambda: not live(emu, run_id), 60, "every instance, warm or used, released")


def test_a_warm_pool_on_a_local_environment_is_a_config_error(tmp_path: Any) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[env.a]\ncommand = "python -m x"\nwarm_pool = 2\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "env.a" in str(caught.value) and "warm_pool" in str(caught.value)


async def test_the_pool_hands_out_the_instance_with_the_most_life_left_and_never_one_about_to_expire() -> None:
    """Issue 12, item 8: the oldest instance first meant a long task could lose it mid-episode."""
    now = time.time()
    lives = iter([400.0, 3_000.0, 100.0, 2_000.0])  # seconds left of each instance made, in order
    released: list[str] = []

    async def make(env: EnvironmentConfig, on_lost: object) -> Instance:
        life = next(lives)
        return Instance(env.name, f"i-{life:g}", "fleet", HttpTarget("http://127.0.0.1:1/mcp"), expires_at=now + life)

    pool = WarmPool(make, lambda instance, on_lost: True, lambda i: released.append(i.instance_id), min_life=300.0)
    env = EnvironmentConfig(name="web", fleet="web", warm_pool=4)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, (env,))
            while pool.size("web") + len(released) < 4:
                await anyio.sleep(0.01)  # the filler is another task
            first, second = pool.take(env, None), pool.take(env, None)
            tg.cancel_scope.cancel()
    assert first is not None and second is not None
    assert (first.instance_id, second.instance_id) == ("i-3000", "i-2000")
    assert "i-100" in released, "an instance with less than min_life left is released, never handed out"
