"""How a verifier run becomes a reward: pure functions, no I/O (fleet-contract §4.3, §4.4, §4.6, §4.7).

An unknown grade is never 0.0. Every path that cannot grade yields `reward=None` plus a `failure_reason`, so trainers
exclude the episode instead of punishing it (OE `9135fd3`: 23% of zero rewards were execution failures).
"""

from __future__ import annotations

import ast
import math
import numbers
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["pending", "final", "unknown"]

JUDGE_ERROR_MESSAGE = "judge LLM call errored (grade unknown)"

_JUDGE_ERROR = re.compile(r"^JUDGE ERROR:", re.MULTILINE)
_APP_LINE = re.compile(r"^App (\S+): (\d+)$", re.MULTILINE)
_ERRORS = re.compile(r">>> ERROR_ACCUMULATOR >>>\n(.+?)\n<<< ERROR_ACCUMULATOR <<<", re.DOTALL)
_SUCCESSES = re.compile(r">>> SUCCESS_ACCUMULATOR >>>\n(.+?)\n<<< SUCCESS_ACCUMULATOR <<<", re.DOTALL)
_STRICT_VERDICT = re.compile(r">>> STRICT_VERDICT >>>\s*\n\s*(-?[\d.]+)\s*\n\s*<<< STRICT_VERDICT <<<")
# An app that passed only because the task asked nothing of it would inflate the fraction (OE `_TRIVIAL_PASS_MARKERS`).
_TRIVIAL_PASS_MARKERS = ("no unexpected changes", "no filesystem changes", "no-unexpected-envelopes")


@dataclass(frozen=True)
class VerifierRun:
    """One execution. `success` means the verifier *ran*, not that the task passed."""

    success: bool
    result: Any
    error: str | None  # for operators (type, message, maybe a traceback); never shown to agents raw
    stdout: str
    execution_id: str | None = None
    execution_time_ms: int | None = None


@dataclass(frozen=True)
class Reward:
    """The `fleet://episode/current/reward` body."""

    status: Status
    reward: float | None
    binary_score: float | None
    partial_score: float | None
    verifier_success: bool | None
    failure_reason: str | None
    execution_id: str | None
    trigger: str  # what asked for the grade: "submit", "close", "explicit" or "max_steps"
    computed_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifierReport:
    """The `fleet://episode/current/verifier` body."""

    stdout: str | None
    error: str | None
    attempts: int
    judge_error: bool
    strict_verdict: float | None
    execution_time_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def has_judge_error(stdout: str | None) -> bool:
    """The judge wrapper prints `JUDGE ERROR:` and then fabricates an all-zero grade (B19)."""
    return bool(stdout) and _JUDGE_ERROR.search(stdout or "") is not None


def strict_verdict(stdout: str | None) -> float | None:
    """SkyRL's strict verdict; -1 means the oracle itself errored (callers exclude such rollouts)."""
    match = _STRICT_VERDICT.search(stdout or "")
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:  # the pattern admits "1.2.3"
        return None


def parse_partial_reward(stdout: str) -> float | None:
    """OE `_parse_partial_reward`: the fraction of real apps, or of accumulated checks, that passed."""
    if _APP_LINE.search(stdout):
        # Committed to the multi-app path: falling back would grade one app's accumulator as the whole task.
        return _multi_app_fraction(stdout)
    errors, successes = _ERRORS.search(stdout), _SUCCESSES.search(stdout)
    if errors is None and successes is None:
        return None
    try:
        n_errors = len(ast.literal_eval(errors.group(1))) if errors else 0
        n_successes = len(ast.literal_eval(successes.group(1))) if successes else 0
    except Exception:  # literal_eval and len raise a zoo of types on arbitrary text
        return None
    total = n_errors + n_successes
    return n_successes / total if total > 0 else None


def _multi_app_fraction(stdout: str) -> float | None:
    real_apps = real_passed = 0
    for app, verdict in _APP_LINE.findall(stdout):
        passed = verdict == "1"
        name = re.escape(app)
        block = re.search(rf"<<< VERIFY_{name} <<<(.*?)>>> VERIFY_{name} >>>", stdout, re.DOTALL)
        successes = _SUCCESSES.search(block.group(1)) if block else None
        success_text = successes.group(1).lower() if successes else ""
        if passed and any(marker in success_text for marker in _TRIVIAL_PASS_MARKERS):
            continue
        real_apps += 1
        real_passed += passed
    return real_passed / real_apps if real_apps else None


def coerce_score(result: Any) -> float | None:
    """The reward a verifier's return value stands for, per the contract (§4.1, §4.3 step 4); None if it has none.

    A dict's "score" or an object's `.score` is read first (the SDK's `_process_result`; OE's bare `float()` turned a
    dict into an exception, D7), then the value is taken as `float()` takes it: numbers and bools, and numeric
    strings such as "0.5" (a judge that prints its grade). Text that is not a number, and non-finite values, are
    unknown rather than guessed at.
    """
    if isinstance(result, dict):
        result = result.get("score")
    elif not isinstance(result, numbers.Real | str):
        try:
            result = getattr(result, "score", None)
        except Exception:  # a `score` property of arbitrary verifier objects may raise anything
            return None
    if isinstance(result, str):
        try:
            result = float(result)
        except ValueError:  # OE's float() raises here, which it scores as unknown
            return None
    if isinstance(result, numbers.Real) and math.isfinite(result):
        return float(result)
    return None


def score(
    last_run: VerifierRun, *, judge_error: bool, partial: bool, trigger: str, now: datetime | None = None
) -> Reward:
    """OE `_compute_reward` steps 4 and 6 for the last attempt."""
    binary: float | None = None
    failure: str | None = None
    if not last_run.success:
        failure = "verifier_failed"
    elif judge_error:
        failure = "judge_error"
    elif last_run.result is None:
        binary = 1.0  # D5, kept on purpose: the contract scores a silent success as a pass
    else:
        binary = coerce_score(last_run.result)
        failure = None if binary is not None else "unscorable_result"
    reward, partial_score = binary, None
    if partial and binary == 0.0 and last_run.stdout:
        partial_score = parse_partial_reward(last_run.stdout)
        if partial_score is not None:
            reward = partial_score
    return Reward(
        status="final" if reward is not None else "unknown",
        reward=reward,
        binary_score=binary,
        partial_score=partial_score,
        verifier_success=last_run.success,
        failure_reason=failure,
        execution_id=last_run.execution_id,
        trigger=trigger,
        computed_at=_iso(now),
    )


def report(last_run: VerifierRun, *, attempts: int) -> VerifierReport:
    """The operator view of the last attempt."""
    judge_error = has_judge_error(last_run.stdout)
    error = last_run.error
    if last_run.success and judge_error:
        error = JUDGE_ERROR_MESSAGE
    elif last_run.success and last_run.result is not None and coerce_score(last_run.result) is None:
        error = f"unscorable result: {_short_repr(last_run.result)}"
    return VerifierReport(
        stdout=last_run.stdout,
        error=error,
        attempts=attempts,
        judge_error=judge_error,
        strict_verdict=strict_verdict(last_run.stdout),
        execution_time_ms=last_run.execution_time_ms,
    )


def unknown(reason: str, trigger: str, *, now: datetime | None = None) -> Reward:
    """No grade at all: no verifier, an import or execution exception, a lost instance, a deadline."""
    return Reward("unknown", None, None, None, None, reason, None, trigger, _iso(now))


def pending(trigger: str, *, now: datetime | None = None) -> Reward:
    """A verifier run is under way."""
    return Reward("pending", None, None, None, None, None, None, trigger, _iso(now))


def _iso(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).isoformat()


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # a verifier's own __repr__ may raise
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
