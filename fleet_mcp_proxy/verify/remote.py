"""Remote verification through the platform's verifier executor, by the SDK's async path (fleet-contract §4.2 A).

`Task.verify_detailed_async(env, **kwargs)` → `AsyncVerifierFunction.remote_with_response` → `GET
/v1/verifiers/check?sha256=` and `POST /v1/verifiers/execute` via `AsyncEnv.execute_verifier_remote` (never
`AsyncFleet.execute_verifier_remote`, whose arguments do not line up: D16). The sync `verify_detailed` would need
`asyncio.run` in a thread and loses the execution id (B17).

The SDK zips the code with the current time stamped on each member, so every new verifier object uploads a bundle
with a new sha (D17). Verifier objects are therefore kept per (task key, code): within a process the second run of
a task finds its bundle on the server and sends only the sha.

Building the verifier runs the code's top level in this process (the SDK execs it to learn the function's name):
code that does not compile or import here raises `ValueError` before anything is sent. Exceptions propagate; the
runner classifies them. The API key lives in the `AsyncFleet` client and never appears in what this returns.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import anyio
from fleet._async.client import AsyncFleet
from fleet._async.tasks import Task, verifier_from_string

from .scoring import VerifierRun

logger = logging.getLogger(__name__)

_VERIFIER_CACHE_SIZE = 256


@functools.lru_cache(maxsize=_VERIFIER_CACHE_SIZE)
def _verifier(task_key: str, code: str) -> Any:
    """One SDK verifier per (task, code), so its bundle (and sha) stays the same between runs (D17)."""
    return verifier_from_string(verifier_func=code, verifier_id=task_key, verifier_key=task_key)


def _error_text(error: Any) -> str | None:
    """`{type, message, traceback}` → "type: message" for operators; anything else as text."""
    if error is None:
        return None
    if isinstance(error, dict):
        kind, message = error.get("type") or "Error", error.get("message")
        return f"{kind}: {message}" if message else str(kind)
    return str(error)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _to_run(response: Any) -> VerifierRun:
    """A `VerifiersExecuteResponse` as a `VerifierRun` (`success` = the verifier ran, not that the task passed)."""
    execution_id = getattr(response, "execution_id", None)
    return VerifierRun(
        success=bool(response.success),
        result=getattr(response, "result", None),
        error=_error_text(getattr(response, "error", None)),
        stdout=getattr(response, "stdout", None) or "",
        execution_id=str(execution_id) if execution_id else None,
        execution_time_ms=_int_or_none(getattr(response, "execution_time_ms", None)),
    )


async def run_remote(
    fleet: AsyncFleet,
    instance_id: str,
    *,
    task_key: str,
    prompt: str,
    env_key: str,
    code: str,
    final_answer: str | None,
    timeout: float,
    conversation: str | None = None,
) -> VerifierRun:
    """Run `code` on the platform against the instance; `final_answer` is passed only when there is one, and
    `conversation` (JSON) only when given, both as keywords (OE). Pass a conversation only to code that takes it.

    Bounded by `timeout` (`TimeoutError`). The platform is asked for its own 30 s limit either way: the SDK's
    `remote_with_response` does not forward a timeout.
    """
    kwargs: dict[str, Any] = {} if final_answer is None else {"final_answer": final_answer}
    if conversation is not None:
        kwargs["conversation"] = conversation
    with anyio.fail_after(timeout):
        env = await fleet.instance(instance_id)
        task = Task(key=task_key, prompt=prompt, env_id=env_key, verifier_func=code, verifier=_verifier(task_key, code))
        response = await task.verify_detailed_async(env, **kwargs)
    run = _to_run(response)
    logger.debug(
        "verifier %s on %s: success=%s execution=%s in %s ms",
        task_key,
        instance_id,
        run.success,
        run.execution_id,
        run.execution_time_ms,
    )
    return run
