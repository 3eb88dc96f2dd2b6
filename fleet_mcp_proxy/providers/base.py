"""What a provider hands back: an instance and how to reach its MCP server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..config import EnvironmentConfig

if TYPE_CHECKING:
    from ..tasks import Task
    from ..verify.scoring import VerifierRun


@dataclass(frozen=True, slots=True)
class StdioTarget:
    """An MCP server the proxy spawns and speaks to over stdio."""

    command: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """An MCP server reached over streamable HTTP."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


Target = StdioTarget | HttpTarget


@dataclass(frozen=True, slots=True)
class Instance:
    """One provisioned environment instance, owned by exactly one episode."""

    alias: str
    instance_id: str
    provider: str
    target: Target
    data_dir: Path | None = None
    expires_at: float | None = None  # epoch seconds when the platform stops it whatever happens (its TTL)
    # More MCP endpoints of the same instance whose tools are unioned after `target`'s (first name wins).
    union: tuple[Target, ...] = ()
    origin: str | None = None  # the account it lives in (`origin.py`), recorded so only that account finishes it


@dataclass(frozen=True, slots=True)
class Listed:
    """A live instance of this deployment's run as the platform lists it (for sweeps)."""

    instance_id: str
    created_at: float | None  # epoch seconds, as the platform says; None if it did not say
    creator: str | None  # the owner id of the proxy process that made it (`fleet.CREATOR_TAG`); None: unknown


class ProvisionError(Exception):
    """Provisioning failed; `str()` is written for the agent and the operator and carries no secret."""


class Provider(Protocol):
    """Where instances come from."""

    async def provision(
        self, env: EnvironmentConfig, episode_id: str, on_lost: Callable[[str], None] | None = None
    ) -> Instance:
        """Create (or reserve) an instance of `env` for one episode; `on_lost(reason)` if it later dies.

        Raises:
            ProvisionError: with a message for people.
        """
        ...

    async def release(self, instance: Instance, wait: float = 0.0) -> bool:
        """Give the instance back. Idempotent; must not raise for an instance already gone. True once the
        release was acknowledged within `wait` seconds (it goes on in the background after that)."""
        ...

    def verifier(
        self,
        instance: Instance,
        task: Task,
        final_answer: str | None,
        timeout: float,
        *,
        conversation: str | None = None,
    ) -> Callable[[], Awaitable[VerifierRun]]:
        """How to run `task`'s verifier against `instance` (local files or the platform's executor); `conversation`
        (JSON chat messages) is given only for verifiers that take it."""
        ...
