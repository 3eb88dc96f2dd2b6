"""The retry policy around one verifier (fleet-contract §4.3 step 3 and 7)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from fleet_mcp_proxy.verify.scoring import (
    Reward,
    VerifierReport,
    VerifierRun,
    has_judge_error,
    report,
    score,
    unknown,
)


async def run_verifier(
    execute: Callable[[], Awaitable[VerifierRun]],
    *,
    partial: bool = False,
    trigger: str,
    attempts: int = 4,
    backoff: Sequence[float] = (3.0, 6.0, 12.0),
) -> tuple[Reward, VerifierReport]:
    """Run `execute` until it succeeds without a judge error, at most `attempts` times, and score the last run.

    Failed executions and judge brownouts are often transient, so they are retried (B18, B19). An exception raised by
    `execute` is not: it ends the run with an unknown reward and is never re-raised. Cancellation propagates.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    last: VerifierRun | None = None
    for attempt in range(1, attempts + 1):
        try:
            last = await execute()
        except ImportError as exc:
            return unknown("import_error", trigger), _failed(exc, last, attempt)
        except Exception as exc:  # the grade is unknown, and the episode must still close cleanly
            return unknown("verifier_exception", trigger), _failed(exc, last, attempt)
        judge_error = has_judge_error(last.stdout)
        if (last.success and not judge_error) or attempt == attempts:
            reward = score(last, judge_error=judge_error, partial=partial, trigger=trigger)
            return reward, report(last, attempts=attempt)
        await anyio.sleep(_delay(backoff, attempt - 1))
    raise AssertionError("unreachable: the last attempt always returns")


def _delay(backoff: Sequence[float], index: int) -> float:
    # More attempts than delays reuse the last delay.
    if not backoff:
        return 0.0
    return backoff[min(index, len(backoff) - 1)]


def _failed(exc: Exception, last: VerifierRun | None, attempt: int) -> VerifierReport:
    return VerifierReport(
        stdout=last.stdout if last else None,
        error=f"{type(exc).__name__}: {exc}",
        attempts=attempt,
        judge_error=False,
        strict_verdict=None,
        execution_time_ms=None,
    )
