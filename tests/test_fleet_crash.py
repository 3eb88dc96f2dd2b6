"""No paid instance outlives the proxy: SIGTERM releases everything before exit, and after `kill -9` the next
start of the same deployment (same run_id) releases what the dead one left. The emulator runs as its own
process so that it outlives the proxy."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from canaries import FLEET_KEY
from helpers import PY, ROOT, child_env, http_client, read_line_matching, stop_process

KEY = FLEET_KEY  # the suite's canary: it must never reach a log, result or record
EPISODES = 20


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


async def _live(base_url: str, run_id: str) -> list[str]:
    async with httpx2.AsyncClient(timeout=10) as client:
        state = (await client.get(f"{base_url}/_emulator/state")).json()
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
async def test_sigterm_with_live_episodes_releases_every_instance_before_exit(tmp_path: Path) -> None:
    async with emulator_process() as base_url:
        config, run_id = _config(tmp_path, base_url)
        async with proxy_process(config, tmp_path / "proxy.log") as (proc, url):
            await _open_episodes(url)
            assert len(await _live(base_url, run_id)) == EPISODES
            proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(proc.wait, 60)
        assert code in (0, -signal.SIGTERM)
        assert await _live(base_url, run_id) == [], "every instance was released before the proxy exited"


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_after_kill_9_the_next_start_releases_what_the_dead_proxy_left(tmp_path: Path) -> None:
    async with emulator_process() as base_url:
        config, run_id = _config(tmp_path, base_url)
        async with proxy_process(config, tmp_path / "proxy.log") as (proc, url):
            await _open_episodes(url)
            proc.kill()
            await anyio.to_thread.run_sync(proc.wait, 30)
        assert len(await _live(base_url, run_id)) == EPISODES, "kill -9 leaves the instances running"
        async with proxy_process(config, tmp_path / "proxy.log") as (_proc, _url):
            with anyio.fail_after(120):
                while await _live(base_url, run_id):
                    await anyio.sleep(0.2)  # polling another process's effect
        assert await _live(base_url, run_id) == []
