"""Issue 15's fleet-wide sweep and the per-process backstop, with real replicas (subprocesses) on one throwaway
PostgreSQL store and the Fleet emulator (its own process): an instance of the deployment's run that no unfinished
row names is released by one replica under the lease; what another replica's episodes use is never released,
neither by the sweep nor by a replica's shutdown backstop while the other one merely looks gone."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from canaries import FLEET_KEY
from helpers import http_client
from pg_cluster import PgCluster
from test_fleet_crash import _live, emulator_process, proxy_process

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]
MODERN = "2026-07-28"


def _config(tmp_path: Path, name: str, base_url: str, store: str, run_id: str, cluster: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[fleet]\nbase_url = "{base_url}"\nrun_id = "{run_id}"\n[store]\nurl = "{store}"\n{cluster}'
        '[env.tracker]\nfleet = "tracker"\n',
        encoding="utf-8",
    )
    return path


async def _orphan(base_url: str, run_id: str) -> str:
    """An instance tagged with the deployment's run that no proxy made and no row names."""
    async with httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {FLEET_KEY}"}) as client:
        made = await client.post(f"{base_url}/v1/env/instances", json={"env_key": "tracker", "run_id": run_id})
    assert made.status_code == 200, made.text
    return str(made.json()["instance_id"])


async def _status(url: str) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10) as client:
        body: dict[str, Any] = (await client.get(url.removesuffix("/mcp") + "/status")).json()
    return body


async def _until(predicate: Any, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.2)  # polling other processes' effects


async def test_an_unnamed_instance_is_released_by_exactly_one_replica_under_the_lease(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    store, run_id = pg_cluster.new_database(), f"sweep-{uuid.uuid4().hex[:10]}"
    cluster = "[cluster]\nsweep_interval = 1\nsweep_min_age = 1\n"
    async with emulator_process() as base_url:
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        config = _config(tmp_path, "c", base_url, store, run_id, cluster)
        async with proxy_process(config, logs[0]) as (_a, url_a), proxy_process(config, logs[1]) as (_b, url_b):
            orphan = await _orphan(base_url, run_id)  # made after both started: no startup sweep sees it

            async def released() -> bool:
                return orphan not in await _live(base_url, run_id)

            await _until(released)
            statuses = [await _status(url_a), await _status(url_b)]
        texts = [log.read_text() for log in logs]
        said = [f"releasing Fleet instance {orphan}" in text for text in texts]
        assert said.count(True) == 1, "exactly one replica released it"
        sweeper, other = (statuses[0], statuses[1]) if said[0] else (statuses[1], statuses[0])
        assert sweeper["sweep"]["released"] == 1 and sweeper["sweep"]["sweeps"] >= 1
        assert other["sweep"]["sweeps"] == 0 and other["sweep"]["held_elsewhere"] >= 1, "it saw the lease held"
        assert other["sweep"]["lease_holder"] == next(r["id"] for r in sweeper["replicas"] if r["this"])


async def test_the_instances_of_another_replicas_live_episode_survive_the_sweep(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    store, run_id = pg_cluster.new_database(), f"sweep-{uuid.uuid4().hex[:10]}"
    cluster = "[cluster]\nsweep_interval = 1\nsweep_min_age = 1\n"
    async with emulator_process() as base_url:
        config = _config(tmp_path, "c", base_url, store, run_id, cluster)
        # B starts first: it takes the sweep lease at once and keeps it; A never sweeps.
        async with proxy_process(config, tmp_path / "b.log") as (_b, url_b):
            await _until(lambda: _swept(url_b, 1))
            async with (
                proxy_process(config, tmp_path / "a.log") as (_a, url_a),
                http_client(f"{url_a}?episode=kept-{uuid.uuid4().hex[:8]}", MODERN) as on_a,
            ):
                assert not (await on_a.call_tool("list_projects", {})).is_error
                (used,) = await _live(base_url, run_id)
                orphan = await _orphan(base_url, run_id)  # the control: B's passes do release

                async def orphan_gone() -> bool:
                    return orphan not in await _live(base_url, run_id)

                await _until(orphan_gone)
                passes = (await _status(url_b))["sweep"]["sweeps"]
                await _until(lambda: _swept(url_b, passes + 2))  # two more passes over A's instance
                assert await _live(base_url, run_id) == [used]
                assert not (await on_a.call_tool("list_projects", {})).is_error
                status_a = await _status(url_a)
        assert status_a["sweep"]["sweeps"] == 0, "A never held the lease"
        (mine,) = [r for r in status_a["replicas"] if r["this"]]
        assert mine["live_episodes"] == 1 and mine["unfinished_episodes"] == 1


async def _swept(url: str, at_least: int) -> bool:
    return int((await _status(url))["sweep"]["sweeps"]) >= at_least


async def test_a_replica_stopping_beside_one_that_looks_gone_leaves_its_instances(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    """A is frozen (SIGSTOP) past its owner lease, so to B it looks gone, while A's live episodes still name their
    instances in the store (what an adopter would take on). B's SIGTERM backstop must not release them."""
    store, run_id = pg_cluster.new_database(), f"sweep-{uuid.uuid4().hex[:10]}"
    async with emulator_process() as base_url:
        config = _config(tmp_path, "c", base_url, store, run_id)
        async with (
            proxy_process(config, tmp_path / "a.log") as (proc_a, url_a),
            http_client(f"{url_a}?episode=held-{uuid.uuid4().hex[:8]}", MODERN) as on_a,
        ):
            assert not (await on_a.call_tool("list_projects", {})).is_error
            used = await _live(base_url, run_id)
            assert len(used) == 1
            async with proxy_process(config, tmp_path / "b.log") as (proc_b, url_b):
                proc_a.send_signal(signal.SIGSTOP)
                try:

                    async def a_looks_gone() -> bool:
                        replicas = (await _status(url_b))["replicas"]
                        return any(r["lease_left_s"] < 0 for r in replicas)  # B renews its own

                    await _until(a_looks_gone, timeout=60)
                    proc_b.send_signal(signal.SIGTERM)
                    code = await anyio.to_thread.run_sync(proc_b.wait, 60)
                    assert code in (0, -signal.SIGTERM)
                finally:
                    proc_a.send_signal(signal.SIGCONT)
            assert await _live(base_url, run_id) == used, "B's backstop left A's instance alone"
            assert not (await on_a.call_tool("list_projects", {})).is_error, "A's episode goes on"
