"""Shared by the end-path tests: a Fleet task whose verifier can be made slow, configs, and store reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2

from fleet_mcp_proxy.store import open_store

TASK = "end-created"
TITLE = "Finish me"

# Graded 1.0 when the agent created the issue. No answer, or "slow", makes the verifier leave a marker file and take
# `SLOW` seconds: the proxy is stopped or killed while it runs.
VERIFIER = """
def verify(env, final_answer=None):
    import pathlib, time
    if final_answer in (None, "slow"):
        pathlib.Path(MARKER).write_text("running")
        time.sleep(SLOW)
    env.instance.load()
    after = env.db("current").table("issues").eq("title", TITLE).first()
    return TASK_SUCCESSFUL_SCORE if after is not None else TASK_FAILED_SCORE
"""


def write_task(tmp_path: Path, slow: float) -> Path:
    marker = tmp_path / "verifier-running"
    code = f"MARKER = {str(marker)!r}\nSLOW = {slow!r}\nTITLE = {TITLE!r}\n" + VERIFIER
    tasks = tmp_path / "tasks.json"
    tasks.write_text(
        json.dumps(
            [
                {
                    "key": TASK,
                    "prompt": "Create the issue, then call submit_final_answer.",
                    "env_key": "tracker",
                    "verifier_func": code,
                }
            ]
        ),
        encoding="utf-8",
    )
    return marker


def write_config(tmp_path: Path, base_url: str, name: str = "proxy.toml", **proxy: Any) -> Path:
    settings = {"store_path": str(tmp_path / "episodes.sqlite3"), "tasks_file": str(tmp_path / "tasks.json"), **proxy}
    lines = ["[proxy]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items()), "[fleet]", f'base_url = "{base_url}"']
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def emulator_state(base_url: str) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=10) as client:
        state: dict[str, Any] = (await client.get(f"{base_url}/_emulator/state")).json()
    return state


async def live_instances(base_url: str) -> list[dict[str, Any]]:
    return [i for i in (await emulator_state(base_url))["instances"] if i["status"] in ("pending", "running")]


async def emulator_post(base_url: str, path: str, body: dict[str, Any] | None = None) -> None:
    async with httpx2.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{base_url}/_emulator/{path}", json=body)
    assert answer.status_code == 200, answer.text


async def records(db: Path) -> dict[str, Any]:
    """Every recorded episode, by id, as the export shows it."""
    async with await open_store(db) as store:
        return {e["episode_id"]: e async for e in store.export()}


async def wait_closed(db: Path, count: int, timeout: float) -> dict[str, Any]:
    """Until `count` episodes are closed and none is left unfinished (polling another process's writes)."""
    with anyio.fail_after(timeout):
        while True:
            if await anyio.Path(db).exists():
                found = await records(db)
                if len(found) >= count and all(e["state"] == "closed" for e in found.values()):
                    return found
            await anyio.sleep(0.2)
