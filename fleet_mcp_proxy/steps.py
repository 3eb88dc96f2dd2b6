"""The step limit (`max_steps`): Fleet's harness ends a rollout after that many agent steps and grades it with
trigger "max_steps" (fleet-contract §4.3 step 8, §4.7). Pure bookkeeping; what happens at the limit is the caller's.

One step is one `tools/call` the agent makes, as in the harness, where every action is one step: environment tools and
the proxy's own (`submit_final_answer`, the context tools) alike, failed calls included. The call that reaches the
limit runs; every later one is refused. The limit is reached when that call has finished and no other is running, so
grading never races a call still changing the environment.
"""

from __future__ import annotations

from collections.abc import Callable


class StepBudget:
    """Counts an episode's steps against its `max_steps` (None: no limit)."""

    def __init__(self, limit: int | None = None, on_limit: Callable[[], object] | None = None) -> None:
        self.limit = limit
        self.on_limit = on_limit
        self.taken = 0
        self._running = 0
        self._fired = False

    @property
    def limited(self) -> bool:
        return self.limit is not None

    def take(self) -> str | None:
        """Count one step; the refusal for the agent when the limit was already used up."""
        if self.limit is not None and self.taken >= self.limit:
            return (
                f"This episode reached its step limit: {self.limit} tool calls (max_steps). No more calls are "
                "accepted; the episode is graded with trigger 'max_steps'. Start a new episode to continue."
            )
        self.taken += 1
        self._running += 1
        return None

    def done(self) -> None:
        """A counted step finished; the last one of the budget calls `on_limit`, once."""
        self._running -= 1
        if self.limit is not None and self.taken >= self.limit and self._running == 0 and not self._fired:
            self._fired = True
            if self.on_limit is not None:
                self.on_limit()
