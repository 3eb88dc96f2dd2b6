"""Caps per principal: open episodes, tool calls in flight, instances held (OWASP API4: a spending limit).

Pure bookkeeping, no I/O: every check is a dict lookup and a comparison, cheap enough for the call path.
A refusal is a sentence for the agent naming the limit and the config key that sets it; 0 means unlimited.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ProxyConfig


class _Owned(Protocol):
    @property
    def principal(self) -> str: ...


@dataclass
class PrincipalLimits:
    max_episodes: int = 0
    max_calls: int = 0
    max_leases: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # principal -> tool calls in flight
    leases: dict[str, int] = field(default_factory=dict)  # principal -> instances reserved
    _reserved: dict[str, tuple[str, int]] = field(default_factory=dict)  # episode id -> (principal, count)

    @classmethod
    def from_config(cls, config: ProxyConfig) -> PrincipalLimits:
        return cls(
            max_episodes=config.max_episodes_per_principal,
            max_calls=config.max_calls_per_principal,
            max_leases=config.max_leases_per_principal,
        )

    # -- episodes ----------------------------------------------------------------------------------------
    def episode_refusal(self, principal: str, open_episodes: Iterable[_Owned]) -> str | None:
        """Why `principal` may not open one more episode, or None. Runs only when an episode is created."""
        if not self.max_episodes:
            return None
        held = sum(1 for episode in open_episodes if episode.principal == principal)
        if held < self.max_episodes:
            return None
        return (
            f"This client already has {held} open episodes, the most this proxy allows "
            f"(max_episodes_per_principal = {self.max_episodes}). End one (DELETE its session or episode key) "
            "or wait for an idle one to end, then try again."
        )

    # -- tool calls ----------------------------------------------------------------------------------------
    def enter_call(self, principal: str) -> str | None:
        """Count one call in flight, or say why not (then nothing was counted)."""
        current = self.calls.get(principal, 0)
        if self.max_calls and current >= self.max_calls:
            return (
                f"Too many tool calls in flight for this client: {self.max_calls} at once is the limit "
                "(max_calls_per_principal). Wait for a call to finish, then call again."
            )
        self.calls[principal] = current + 1
        return None

    def exit_call(self, principal: str) -> None:
        left = self.calls.get(principal, 1) - 1
        if left > 0:
            self.calls[principal] = left
        else:
            self.calls.pop(principal, None)

    # -- leased instances ---------------------------------------------------------------------------------
    def reserve(self, episode_id: str, principal: str, count: int) -> str | None:
        """Reserve an episode's instances before its first provisioning; kept until the episode ends."""
        if episode_id in self._reserved:
            return None
        held = self.leases.get(principal, 0)
        if self.max_leases and held + count > self.max_leases:
            return (
                f"This client already holds {held} environment instances; this episode needs {count} more, "
                f"beyond the limit of {self.max_leases} (max_leases_per_principal). End an episode to release "
                "its instances, then try again."
            )
        self._reserved[episode_id] = (principal, count)
        self.leases[principal] = held + count
        return None

    def release(self, episode_id: str) -> None:
        principal, count = self._reserved.pop(episode_id, ("", 0))
        if count:
            left = self.leases.get(principal, 0) - count
            if left > 0:
                self.leases[principal] = left
            else:
                self.leases.pop(principal, None)
