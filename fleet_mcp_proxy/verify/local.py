"""Run a verifier against local SQLite snapshots with the SDK's `execute_verifier_local`, in a child process.

A child process, not a thread: verifier code is arbitrary, may loop forever or block in C, and only a process can be
killed at a deadline. The child runs in its own session so the kill also takes any processes the verifier started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from fleet_mcp_proxy.verify.scoring import VerifierRun

CHILD_MODULE = "fleet_mcp_proxy.verify._child"
# `python -m` puts its working directory first on sys.path; starting in the directory that holds this package makes
# the child import the parent's code, and never a stray `fleet.py` or `json.py` from wherever the proxy was started.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# Far above the child's own caps (4 MiB stdout, 1 MiB result, both JSON-escaped); only a broken child gets here.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
STDERR_TAIL_BYTES = 16 * 1024
# After SIGKILL the child is reaped almost at once; this only guards against a wedged kernel.
REAP_TIMEOUT = 10.0
STDERR_GRACE = 1.0


async def run_local(
    code: str,
    seed_db: Path,
    current_db: Path,
    *,
    final_answer: str | None,
    timeout: float,
    conversation: str | None = None,
) -> VerifierRun:
    """One execution. Raises ImportError when the SDK cannot be imported in the child; every other failure,
    the deadline included, is a `VerifierRun(success=False)`. `conversation` (JSON) reaches the verifier as a keyword;
    pass it only to code that takes it (`verify.conversation.takes_conversation`)."""
    # Absolute, because the child runs in another directory.
    seed, current = str(await anyio.Path(seed_db).absolute()), str(await anyio.Path(current_db).absolute())
    request = {"code": code, "seed_db": seed, "current_db": current, "final_answer": final_answer}
    if conversation is not None:
        request["conversation"] = conversation
    started = anyio.current_time()
    out, err = bytearray(), bytearray()
    command = [sys.executable, "-m", CHILD_MODULE]
    async with await anyio.open_process(command, cwd=PACKAGE_PARENT, start_new_session=True) as process:
        try:
            with anyio.move_on_after(timeout) as deadline:
                await _exchange(process, json.dumps(request).encode(), out, err)
        finally:
            await _kill(process)
    elapsed_ms = round((anyio.current_time() - started) * 1000)
    if deadline.cancelled_caught:
        return VerifierRun(False, None, f"timed out after {timeout:g} s", "", execution_time_ms=elapsed_ms)
    return _decode(process.returncode, bytes(out), bytes(err), elapsed_ms)


async def _exchange(process: Process, request: bytes, out: bytearray, err: bytearray) -> None:
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_drain, process.stderr, err, STDERR_TAIL_BYTES, True)
        async with anyio.create_task_group() as response:
            response.start_soon(_drain, process.stdout, out, MAX_RESPONSE_BYTES, False)
            await _feed(process.stdin, request)
            await process.wait()
        # A process the verifier left behind may hold stderr open; the exited child's own text is already piped.
        tg.cancel_scope.deadline = anyio.current_time() + STDERR_GRACE


async def _feed(stdin: ByteSendStream, request: bytes) -> None:
    # A child that dies before reading its request is reported through its exit status, not here.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stdin.send(request)
    await stdin.aclose()


async def _drain(stream: ByteReceiveStream, sink: bytearray, limit: int, keep_tail: bool) -> None:
    # Keep reading past the limit: a child blocked on a full pipe would only ever end at the deadline.
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            chunk = await stream.receive()
            if keep_tail:
                sink += chunk
                del sink[:-limit]
            elif len(sink) <= limit:
                sink += chunk


async def _kill(process: Process) -> None:
    """Kill the child's whole session unless it already exited, then reap it, even while being cancelled."""
    if process.returncode is None:
        # Only while unreaped: after that the group id could belong to someone else.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with anyio.CancelScope(shield=True), anyio.move_on_after(REAP_TIMEOUT):
        await process.wait()


def _decode(returncode: int | None, out: bytes, err: bytes, elapsed_ms: int) -> VerifierRun:
    if len(out) > MAX_RESPONSE_BYTES:
        return VerifierRun(False, None, f"verifier response exceeded {MAX_RESPONSE_BYTES} bytes", "", None, elapsed_ms)
    try:
        body: Any = json.loads(out)
    except ValueError:
        body = None
    if returncode != 0 or not isinstance(body, dict):
        detail = err.decode(errors="replace").strip()[-2000:] or "no output"
        return VerifierRun(
            False, None, f"verifier process exited with {returncode}: {detail}", "", execution_time_ms=elapsed_ms
        )
    if "import_error" in body:
        raise ImportError(f"fleet SDK unavailable in the verifier process: {body['import_error']}")
    error = body.get("error")
    return VerifierRun(
        success=body.get("success") is True,
        result=body.get("result"),
        error=None if error is None else str(error),
        stdout=str(body.get("stdout") or ""),
        execution_time_ms=elapsed_ms,
    )
