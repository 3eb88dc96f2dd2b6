"""One load-generator process of the `storm` section: COUNT handshake-era episodes started together on a signal.

    python -m benchmarks.storm_worker URL COUNT

Protocol on its pipes, one JSON object per line on stdout: `{"ready": ...}` once its imports are done; then it
waits for a line on stdin (the go signal) and starts every episode at once: initialize -> tools/list -> one
`echo` call. When every episode has its result or its error it prints `{"result": ...}` (ms from the signal to
each first `echo` result, the errors with the stage they happened at, its own CPU seconds) and holds the
sessions open until a second line arrives on stdin, then closes them and prints `{"closed_s": ...}`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import anyio
import mcp_types as t

from .common import describe, ms_since, session

EPISODE_TIMEOUT = 600.0  # from the go signal to the echo result: past it the episode is an error at its stage
CLOSE_TIMEOUT = 120.0


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _cpu_s() -> float:
    times = os.times()
    return round(times.user + times.system, 2)


async def _line() -> str:
    return await anyio.to_thread.run_sync(sys.stdin.readline)


async def main(url: str, count: int) -> None:
    latencies: list[float] = []
    errors: list[dict[str, str]] = []
    finished = anyio.Event()
    close = anyio.Event()
    closed = anyio.Event()
    done = [0]
    alive = [count]

    def one_done() -> None:
        done[0] += 1
        if done[0] == count:
            finished.set()

    async def episode(index: int, start: float) -> None:
        stage = "initialize"
        try:
            with anyio.fail_after(EPISODE_TIMEOUT) as scope:
                async with session(url, "legacy") as client:
                    stage = "tools/list"
                    listed = await client.list_tools()
                    if not any(tool.name == "echo" for tool in listed.tools):
                        raise RuntimeError("tools/list lacks echo")
                    stage = "tools/call"
                    text = f"storm {index}"
                    result = await client.call_tool("echo", {"text": text})
                    content = result.content[0] if result.content else None
                    if result.is_error or not isinstance(content, t.TextContent) or content.text != text:
                        detail = content.text[:160] if isinstance(content, t.TextContent) else ""
                        raise RuntimeError(f"wrong echo result (is_error={result.is_error}): {detail}")
                    latencies.append(ms_since(start))
                    scope.deadline = math.inf  # held open until told to close, however long the others take
                    stage = "held"
                    one_done()
                    await close.wait()
                    stage = "close"
        except TimeoutError:
            if stage != "close":
                errors.append({"stage": stage, "error": f"no answer within {EPISODE_TIMEOUT:.0f} s of the start"})
                one_done()
        except Exception as exc:  # counted and reported: errors are the measurement
            if stage not in ("held", "close"):
                errors.append({"stage": stage, "error": describe(exc)[:300]})
                one_done()
        finally:
            alive[0] -= 1
            if not alive[0]:
                closed.set()

    _emit({"ready": os.getpid()})
    await _line()
    start = time.perf_counter()
    cpu_before = _cpu_s()
    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(episode, index, start)
        await finished.wait()
        seconds = time.perf_counter() - start
        _emit(
            {
                "result": {
                    "latencies_ms": [round(x, 2) for x in latencies],
                    "errors": errors,
                    "seconds": round(seconds, 2),
                    "cpu_s": round(_cpu_s() - cpu_before, 2),
                }
            }
        )
        await _line()
        closing = time.perf_counter()
        close.set()
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await closed.wait()
        left = alive[0]
        tg.cancel_scope.cancel()  # sessions still closing past the bound are abandoned, and counted
    _emit({"closed_s": round(time.perf_counter() - closing, 2), "not_closed": left})


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), backend_options={"use_uvloop": True})
