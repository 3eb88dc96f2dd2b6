"""No paid instance outlives the proxy: SIGTERM releases everything before exit, and after `kill -9` the next
start of the same deployment (same run_id) releases what the dead one left. The emulator runs as its own
process so that it outlives the proxy (reliability.md R1, R2; figures print as `R<n>: ...`, see `pytest -rP`)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from canaries import FLEET_KEY
from helpers import PY, ROOT, child_env, http_client, read_line_matching, stop_process

KEY = FLEET_KEY  # the suite's canary: it must never reach a log, result or record
EPISODES = 50
Record = Callable[[str, object], None]


def figure(record_property: Record, line: str) -> None:
    print(line)
    record_property("figure", line)


@contextlib.contextmanager
def _process(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, cwd=ROOT, **kwargs)
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.asynccontextmanager
async def emulator_process() -> AsyncIterator[str]:
    args = [PY, str(ROOT / "tests" / "fleet_emulator" / "__main__.py"), "--api-key", KEY, "--instance-limit", "200"]
    with _process(args, stdout=subprocess.PIPE) as proc:
        yield (await read_line_matching(proc.stdout, r"FLEET_EMULATOR_READY (\S+)")).group(1)


@contextlib.asynccontextmanager
async def proxy_process(config: Path, log: Path) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    args = [PY, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--config", str(config)]
    with log.open("a") as sink, _process(args, stderr=subprocess.PIPE, env=child_env(FLEET_API_KEY=KEY)) as proc:
        match = await read_line_matching(proc.stderr, r"listening on (\S+)")

        async def drain() -> None:  # keep the pipe flowing; the log helps when a test fails
            while line := await anyio.to_thread.run_sync(proc.stderr.readline, abandon_on_cancel=True):  # type: ignore[union-attr]
                sink.write(line)
                sink.flush()  # read by tests while the proxy runs

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            yield proc, match.group(1)
            tg.cancel_scope.cancel()


def _config(tmp_path: Path, base_url: str) -> tuple[Path, str]:
    run_id = f"crash-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "fleet.toml"
    path.write_text(
        f'[fleet]\nbase_url = "{base_url}"\nrun_id = "{run_id}"\n[env.tracker]\nfleet = "tracker"\n', encoding="utf-8"
    )
    return path, run_id


async def _state(base_url: str) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10) as client:
        state: dict[str, Any] = (await client.get(f"{base_url}/_emulator/state")).json()
    return state


async def _live(base_url: str, run_id: str) -> list[str]:
    state = await _state(base_url)
    return [
        i["instance_id"] for i in state["instances"] if i["run_id"] == run_id and i["status"] in ("pending", "running")
    ]


async def _open_episodes(url: str) -> None:
    async def one() -> None:
        async with http_client(f"{url}?episode=crash-{uuid.uuid4().hex}", "2026-07-28") as c:
            result = await c.call_tool("list_projects", {})
            assert not result.is_error, result

    with anyio.fail_after(180):
        async with anyio.create_task_group() as tg:
            for _ in range(EPISODES):
                tg.start_soon(one)


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_sigterm_with_live_episodes_and_slow_deletes_releases_every_instance_before_exit(
    tmp_path: Path, record_property: Record
) -> None:
    slow, delay = 10, 4.0
    async with emulator_process() as base_url:
        config, run_id = _config(tmp_path, base_url)
        log = tmp_path / "proxy.log"
        async with proxy_process(config, log) as (proc, url):
            await _open_episodes(url)
            assert len(await _live(base_url, run_id)) == EPISODES
            async with httpx2.AsyncClient(timeout=10) as client:  # the next 10 deletes take 4 s each
                knobs = {"delete_latency": delay, "delete_latency_count": slow}
                assert (await client.post(f"{base_url}/_emulator/faults", json=knobs)).status_code == 200
            started = anyio.current_time()
            proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(proc.wait, 60)
            exit_s = anyio.current_time() - started
        assert code in (0, -signal.SIGTERM)
        assert await _live(base_url, run_id) == [], "every instance was released before the proxy exited"
        state = await _state(base_url)
        assert state["faults"]["delete_latency_count"] == 0, "the slow deletes happened"
        ours = [i for i in state["instances"] if i["run_id"] == run_id]
        assert len(ours) == EPISODES and all(i["stop_reason"] == "deleted" for i in ours)
        assert "backstop deleted" not in log.read_text(), "each release was acknowledged, none left to the backstop"
        figure(
            record_property,
            f"R2: SIGTERM with {EPISODES} live episodes, {slow} deletes taking {delay:g} s: "
            f"{EPISODES}/{EPISODES} releases acknowledged, 0 leaked, exit {exit_s:.1f} s after the signal",
        )


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_after_kill_9_the_next_start_releases_what_the_dead_proxy_left(
    tmp_path: Path, record_property: Record
) -> None:
    async with emulator_process() as base_url:
        config, run_id = _config(tmp_path, base_url)
        async with proxy_process(config, tmp_path / "proxy.log") as (proc, url):
            await _open_episodes(url)
            proc.kill()
            await anyio.to_thread.run_sync(proc.wait, 30)
        assert len(await _live(base_url, run_id)) == EPISODES, "kill -9 leaves the instances running"
        async with httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
            made = await client.post(f"{base_url}/v1/env/instances", json={"env_key": "tracker", "run_id": "other"})
        assert made.status_code == 200, "another deployment's instance, which the sweep must leave alone"
        started = anyio.current_time()
        async with proxy_process(config, tmp_path / "proxy.log") as (_proc, _url):
            with anyio.fail_after(30):
                while await _live(base_url, run_id):
                    await anyio.sleep(0.2)  # polling another process's effect
            swept_s = anyio.current_time() - started
        assert await _live(base_url, "other") == [made.json()["instance_id"]], "other run_ids are not touched"
        assert await _live(base_url, run_id) == []
        figure(
            record_property,
            f"R1: kill -9 with {EPISODES} live episodes left {EPISODES} instances; the next start with the same "
            f"run_id released all of them in {swept_s:.1f} s (target 30 s); 0 instances of other run_ids touched",
        )
