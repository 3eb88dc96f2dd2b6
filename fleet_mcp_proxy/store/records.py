"""What an episode record holds, and the `EpisodeStore` interface any backing database implements."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Provider = Literal["local", "fleet"]
JSONObject = dict[str, Any]


class StoreError(Exception):
    """The database cannot be used (unreadable, foreign, newer schema) or a write broke its rules."""


class RecordNotFound(StoreError, LookupError):
    """A write named an episode (or an instance of it) that was never recorded."""


class DuplicateRecord(StoreError):
    """An episode id, instance id or call sequence number was recorded twice."""


def to_iso(moment: datetime) -> str:
    """Fixed-width UTC text, so text order is time order (indexes and the `since` filter rely on it)."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else to_iso(moment)


@dataclass(frozen=True, kw_only=True)
class CallRecord:
    """One tool call. Its result is not kept (it may hold whatever the agent fetched); only its size."""

    tool: str  # the name the agent saw
    arguments: Mapping[str, Any]
    result_bytes: int
    is_error: bool
    started_at: datetime
    duration_ms: float
    seq: int | None = None  # None: the store numbers it next in its episode

    def to_json(self) -> JSONObject:
        return {
            "seq": self.seq,
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "result_bytes": self.result_bytes,
            "is_error": self.is_error,
            "started_at": to_iso(self.started_at),
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, kw_only=True)
class InstanceRecord:
    alias: str
    instance_id: str
    provider: Provider
    spec: str
    created_at: datetime
    released_at: datetime | None = None

    def to_json(self) -> JSONObject:
        return {
            "alias": self.alias,
            "instance_id": self.instance_id,
            "provider": self.provider,
            "spec": self.spec,
            "created_at": to_iso(self.created_at),
            "released_at": _iso(self.released_at),
        }


@dataclass(frozen=True, kw_only=True)
class EpisodeRecord:
    episode_id: str
    principal: str
    task_key: str | None
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    answer: str | None = None
    submitted_at: datetime | None = None
    reward: JSONObject | None = None
    verifier: JSONObject | None = None
    instances: tuple[InstanceRecord, ...] = ()
    calls: tuple[CallRecord, ...] = ()

    def to_json(self) -> JSONObject:
        submitted = self.submitted_at is not None
        return {
            "episode_id": self.episode_id,
            "principal": self.principal,
            "task_key": self.task_key,
            "started_at": to_iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "submission": {"answer": self.answer, "submitted_at": _iso(self.submitted_at)} if submitted else None,
            "reward": self.reward,
            "verifier": self.verifier,
            "instances": [instance.to_json() for instance in self.instances],
            "calls": [call.to_json() for call in self.calls],
        }


@dataclass(frozen=True, kw_only=True)
class EpisodeSummary:
    episode_id: str
    principal: str
    task_key: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    call_count: int
    submitted: bool
    status: str | None  # the reward's "status", if scored
    reward: float | None

    def to_json(self) -> JSONObject:
        return {
            "episode_id": self.episode_id,
            "principal": self.principal,
            "task_key": self.task_key,
            "started_at": to_iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "call_count": self.call_count,
            "submitted": self.submitted,
            "status": self.status,
            "reward": self.reward,
        }


class EpisodeStore(Protocol):
    """Where episodes are recorded. SQLite now; a server database when several proxy replicas share one."""

    async def open_episode(
        self, episode_id: str, principal: str, task_key: str | None, started_at: datetime
    ) -> None: ...
    async def add_instance(
        self, episode_id: str, alias: str, instance_id: str, provider: Provider, spec: str, created_at: datetime
    ) -> None: ...
    async def instance_released(self, episode_id: str, instance_id: str, released_at: datetime) -> None: ...
    async def add_call(self, episode_id: str, call: CallRecord) -> int:
        """Record a finished call; returns its sequence number (assigned when `call.seq` is None)."""
        ...

    async def set_submission(self, episode_id: str, answer: str, submitted_at: datetime) -> None: ...
    async def set_result(self, episode_id: str, reward: JSONObject, verifier: JSONObject) -> None: ...
    async def end_episode(self, episode_id: str, reason: str, ended_at: datetime) -> None: ...
    async def get(self, episode_id: str) -> EpisodeRecord | None: ...
    async def list(
        self, limit: int = 50, offset: int = 0, task_key: str | None = None
    ) -> builtins.list[EpisodeSummary]: ...
    def export(self, since: datetime | None = None) -> AsyncIterator[JSONObject]:
        """Every episode started at or after `since`, oldest first, as `EpisodeRecord.to_json()`."""
        ...

    async def aclose(self) -> None: ...
