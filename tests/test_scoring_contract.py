"""Scoring exactly as the contract's reward algorithm does it (§4.1 return shapes, §4.3 step 4), one table row per
case the contract names. `score` is pure: each row is one verifier run and the reward it must give."""

from __future__ import annotations

from typing import Any

import pytest

from fleet_mcp_proxy.verify.scoring import JUDGE_ERROR_MESSAGE, VerifierRun, coerce_score, report, score


class Graded:
    """A judge result object: the SDK reads `.score` (§4.1)."""

    def __init__(self, value: Any) -> None:
        self.score = value


class JudgeFloat(float):
    """Fleet's JudgeResult is a float subclass with details attached."""


# (verifier result, reward, failure_reason): a successful run.
SUCCESSFUL_RUNS: list[tuple[Any, float | None, str | None]] = [
    (None, 1.0, None),  # step 4: success with no result is a pass (D5, kept on purpose)
    (1, 1.0, None),
    (0, 0.0, None),
    (True, 1.0, None),
    (False, 0.0, None),
    (0.7, 0.7, None),  # a judge's fractional grade
    (JudgeFloat(0.6), 0.6, None),
    ("0.5", 0.5, None),  # float("0.5"): the case this table was written for
    ("1", 1.0, None),
    (" 0.25\n", 0.25, None),  # float() strips surrounding whitespace
    ("1e-1", 0.1, None),
    ({"score": 0.7}, 0.7, None),  # the SDK's dict shape
    ({"score": "0.5"}, 0.5, None),  # ... whose score it also passes through float()
    (Graded(0.25), 0.25, None),  # the SDK's `.score` shape
    (Graded("0.75"), 0.75, None),
    ("PASS", None, "unscorable_result"),  # float() raises: unknown, never 0
    ("", None, "unscorable_result"),
    ("nan", None, "unscorable_result"),  # a reward must be a finite number
    ("inf", None, "unscorable_result"),
    (float("nan"), None, "unscorable_result"),
    ({"passed": True}, None, "unscorable_result"),
    ({"score": None}, None, "unscorable_result"),
    ([1], None, "unscorable_result"),
]


@pytest.mark.parametrize(("result", "reward", "reason"), SUCCESSFUL_RUNS)
def test_a_successful_run_is_scored_as_the_contract_says(result: Any, reward: float | None, reason: str | None) -> None:
    graded = score(VerifierRun(True, result, None, ""), judge_error=False, partial=False, trigger="submit")
    assert (graded.reward, graded.binary_score, graded.failure_reason) == (reward, reward, reason)
    assert graded.status == ("final" if reward is not None else "unknown")
    assert graded.verifier_success is True


@pytest.mark.parametrize("result", ["0.5", 1.0, None])
def test_a_failed_execution_is_unknown_whatever_it_returned(result: Any) -> None:
    graded = score(VerifierRun(False, result, "boom", ""), judge_error=False, partial=False, trigger="close")
    assert (graded.reward, graded.status, graded.failure_reason) == (None, "unknown", "verifier_failed")


@pytest.mark.parametrize("result", ["0.0", 0.0])
def test_a_judge_error_is_unknown_even_with_a_grade(result: Any) -> None:
    stdout = "JUDGE ERROR: 503\n"
    graded = score(VerifierRun(True, result, None, stdout), judge_error=True, partial=False, trigger="submit")
    assert (graded.reward, graded.failure_reason) == (None, "judge_error")
    assert report(VerifierRun(True, result, None, stdout), attempts=4).error == JUDGE_ERROR_MESSAGE


ACCUMULATORS = (
    ">>> ERROR_ACCUMULATOR >>>\n['a']\n<<< ERROR_ACCUMULATOR <<<\n"
    ">>> SUCCESS_ACCUMULATOR >>>\n['b', 'c', 'd']\n<<< SUCCESS_ACCUMULATOR <<<"
)


@pytest.mark.parametrize("result", ["0", "0.0", 0])
def test_a_zero_string_opens_the_partial_reward_like_a_zero(result: Any) -> None:
    graded = score(VerifierRun(True, result, None, ACCUMULATORS), judge_error=False, partial=True, trigger="submit")
    assert (graded.binary_score, graded.partial_score, graded.reward) == (0.0, 0.75, 0.75)


def test_a_numeric_string_is_not_an_unscorable_result_for_operators() -> None:
    assert report(VerifierRun(True, "0.5", None, ""), attempts=1).error is None
    assert report(VerifierRun(True, "half", None, ""), attempts=1).error == "unscorable result: 'half'"


@pytest.mark.parametrize(("result", "expected"), [("0x1", None), ("1_000", 1000.0), ("-0.5", -0.5)])
def test_coerce_score_takes_text_exactly_as_float_does(result: Any, expected: float | None) -> None:
    assert coerce_score(result) == expected
