"""What an episode produced: the submission, tool errors, and a reward verified exactly once.

The reward starts `pending`; the first of submit / close / explicit verification computes it, and every
later caller waits for that one result. A reward that could not be computed is `null` with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from .verify.runner import run_verifier
from .verify.scoring import Reward, VerifierReport, VerifierRun, unknown

logger = logging.getLogger(__name__)
MAX_TOOL_ERRORS = 200
Execute = Callable[[], Awaitable[VerifierRun]]


@dataclass
class Submission:
    answer: str
    at: datetime

    @property
    def submitted_at(self) -> str:
        return self.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Outcome:
    """Per episode; never shared, so nothing leaks between episodes."""

    on_change: Callable[[str], Awaitable[None]] | None = None
    submission: Submission | None = None
    tool_errors: list[str] = field(default_factory=list)
    reward: Reward | None = None
    report: VerifierReport | None = None
    _started: bool = False
    _done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def finished(self) -> bool:
        """An answer was submitted: the episode takes no more environment calls."""
        return self.submission is not None

    def submit(self, answer: str) -> Submission | None:
        """Record the first answer; None if one was already recorded."""
        if self.submission is not None:
            return None
        self.submission = Submission(answer, datetime.now(UTC))
        return self.submission

    def restore(self, answer: str | None, reward: Reward | None) -> None:
        """What the store holds of an adopted episode: its answer, and its grade if it was graded."""
        if answer is not None:
            self.submission = Submission(answer, datetime.now(UTC))
        if reward is not None:
            self.reward, self._started = reward, True
            self._done.set()

    def record_tool_error(self, tool: str, message: str) -> None:
        if len(self.tool_errors) < MAX_TOOL_ERRORS:
            self.tool_errors.append(f"{tool}(): {message[:500]}")

    @property
    def verified(self) -> bool:
        return self.reward is not None

    async def verify(
        self, execute: Execute | None, *, trigger: str, reason_if_none: str = "no_verifier", partial: bool = False
    ) -> Reward:
        """Compute the reward once; concurrent and later callers get the same one.

        Cancelled midway (the proxy is stopping), nothing is concluded: the episode's row stays ungraded and
        whoever finishes it grades it. `conclude` records a grade decided from outside (a timeout).
        """
        if self._started:
            await self._done.wait()
            return self.reward or unknown("verification_interrupted", trigger)
        self._started = True
        try:
            if execute is None:
                reward, self.report = unknown(reason_if_none, trigger), None
            else:
                reward, self.report = await run_verifier(execute, partial=partial, trigger=trigger)
        except anyio.get_cancelled_exc_class():
            self._done.set()
            raise
        except BaseException:
            await self.conclude(unknown("verifier_exception", trigger))
            raise
        await self.conclude(reward)
        return reward

    async def conclude(self, reward: Reward) -> None:
        """Settle the reward unless one is settled already; tell the resource and the record."""
        if self.reward is not None:
            return
        self.reward = reward
        self._done.set()
        if self.on_change is not None:
            with anyio.CancelScope(shield=True):
                await self.on_change("reward")

    # -- resource bodies ---------------------------------------------------------------------------------------
    def reward_json(self) -> dict[str, Any]:
        if self.reward is None:
            return {"status": "pending", "reward": None, "failure_reason": None}
        return self.reward.to_json()

    def verifier_json(self) -> dict[str, Any]:
        return self.report.to_json() if self.report is not None else {"stdout": None, "error": None, "attempts": 0}

    def submission_json(self) -> dict[str, Any]:
        s = self.submission
        return {"answer": s.answer if s else None, "submitted_at": s.submitted_at if s else None}

    def tool_errors_json(self) -> dict[str, Any]:
        return {"errors": list(self.tool_errors)}
