"""What an episode record holds, and the `EpisodeStore` interface any backing database implements."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self

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
    state: str = "closed"
    graded_at: datetime | None = None
    closed_at: datetime | None = None

    def to_json(self) -> JSONObject:
        submitted = self.submitted_at is not None
        return {
            "episode_id": self.episode_id,
            "principal": self.principal,
            "task_key": self.task_key,
            "started_at": to_iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "state": self.state,
            "graded_at": _iso(self.graded_at),
            "closed_at": _iso(self.closed_at),
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
    state: str = "closed"

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
            "state": self.state,
        }


# -- the durable end ------------------------------------------------------------------------------------------------
EndState = Literal["live", "ending", "verifying", "graded", "releasing", "closed"]
END_STATES: tuple[EndState, ...] = ("live", "ending", "verifying", "graded", "releasing", "closed")


@dataclass(frozen=True, kw_only=True)
class PendingInstance:
    """What finishing an episode needs of one of its instances: how to grade against it and release it."""

    alias: str
    instance_id: str
    provider: Provider
    url: str | None = None
    data_dir: str | None = None
    expires_at: float | None = None  # epoch seconds
    origin: str | None = None  # the account it lives in (`providers.origin`); None on rows from before v4


@dataclass(frozen=True, kw_only=True)
class PendingEnd:
    """An episode that is not closed: enough to finish it in another process."""

    episode_id: str
    principal: str
    state: EndState
    owner: str | None
    end_reason: str | None
    task: JSONObject | None  # the bound task (as `Task.model_dump`), or None
    answer: str | None
    reward: JSONObject | None
    instances: tuple[PendingInstance, ...]  # not yet released
    routed: bool = False  # another replica can find it by a key or session (and so adopt it)


@dataclass(frozen=True, kw_only=True)
class OwnerRecord:
    """A process that holds episodes of this store; alive while its lease runs (and, on its host, its pid)."""

    owner_id: str
    host: str
    pid: int
    started_at: datetime
    lease_until: float  # epoch seconds
    address: str | None = None  # where other replicas reach it (e.g. http://10.0.0.5:8000), if it serves


@dataclass(frozen=True)
class Lease:
    """A named lease in `meta` (the fleet-wide sweep's): who took it and until when (epoch seconds)."""

    holder: str
    until: float


@dataclass(frozen=True)
class OwnedCount:
    live: int
    unfinished: int  # live ones included


LEASE_PREFIX = "lease:"  # meta keys of named leases; their value is JSON {"holder": ..., "until": ...}


def lease_value(holder: str, until: float) -> str:
    return json.dumps({"holder": holder, "until": until})


def lease_of(value: str | None) -> Lease | None:
    try:
        data = json.loads(value) if value is not None else None
        return Lease(str(data["holder"]), float(data["until"])) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, kw_only=True)
class RouteTarget:
    """The unfinished episode an outside name points at, who holds it, and how its session was opened."""

    episode_id: str
    state: EndState
    owner_id: str | None
    owner: OwnerRecord | None  # None when nobody holds it or its holder's row is gone
    handshake: JSONObject | None  # a session route's `initialize` params


# A store write as the recorder queues it: the method's name, its positional and its keyword arguments.
Write = tuple[str, tuple[Any, ...], dict[str, Any]]
# The writes `apply` takes in one transaction: the per-call record keeping the recorder emits. Reads, leases and
# the end's compare-and-sets keep transactions of their own.
BATCHABLE = frozenset(
    {"open_episode", "add_instance", "instance_released", "add_call", "set_submission", "set_result", "add_route"}
)


def check_batchable(writes: Sequence[Write]) -> None:
    if unknown := sorted({method for method, _, _ in writes} - BATCHABLE):
        raise ValueError(f"cannot batch {', '.join(unknown)}: only {', '.join(sorted(BATCHABLE))}")


class EpisodeStore(Protocol):
    """Where episodes are recorded: SQLite embedded, or PostgreSQL when several proxy replicas share one."""

    path: str  # where the store is, fit to print: a file, or postgresql://HOST:PORT/DB (never a password)

    async def open_episode(
        self,
        episode_id: str,
        principal: str,
        task_key: str | None,
        started_at: datetime,
        owner: str | None = None,
        task: JSONObject | None = None,  # the bound task, so that a crash mid-episode can still be graded
    ) -> None: ...
    async def add_instance(
        self,
        episode_id: str,
        alias: str,
        instance_id: str,
        provider: Provider,
        spec: str,
        created_at: datetime,
        *,
        url: str | None = None,
        data_dir: str | None = None,
        expires_at: float | None = None,
        origin: str | None = None,
    ) -> None: ...
    async def instance_released(self, episode_id: str, instance_id: str, released_at: datetime) -> None: ...
    async def add_call(self, episode_id: str, call: CallRecord) -> int:
        """Record a finished call; returns its sequence number (assigned when `call.seq` is None)."""
        ...

    async def set_submission(self, episode_id: str, answer: str, submitted_at: datetime) -> None: ...
    async def apply(self, writes: Sequence[Write]) -> None:
        """Make `BATCHABLE` writes in order in ONE transaction (the recorder's group commit): all or none; the
        first refused write's error is raised, and nothing of the batch is kept."""
        ...

    async def set_result(self, episode_id: str, reward: JSONObject, verifier: JSONObject) -> None: ...
    async def end_episode(self, episode_id: str, reason: str, ended_at: datetime) -> None: ...
    async def get(self, episode_id: str) -> EpisodeRecord | None: ...
    async def list(
        self, limit: int = 50, offset: int = 0, task_key: str | None = None
    ) -> builtins.list[EpisodeSummary]: ...
    def export(self, since: datetime | None = None) -> AsyncIterator[JSONObject]:
        """Every episode started at or after `since`, oldest first, as `EpisodeRecord.to_json()`."""
        ...

    # -- the durable end (see docs/episode-end.md) --
    async def begin_end(self, episode_id: str, reason: str, ended_at: datetime, task: JSONObject | None) -> None:
        """live -> ending, with the reason and what grading needs; no-op once past live."""
        ...

    async def set_state(self, episode_id: str, state: EndState, at: datetime) -> None:
        """Move a row that is not closed to `state` (closed rows never reopen)."""
        ...

    async def grade(self, episode_id: str, reward: JSONObject, verifier: JSONObject, at: datetime) -> JSONObject:
        """Store the grade unless one is stored already; returns the stored one (grading is idempotent)."""
        ...

    async def unfinished(self) -> builtins.list[PendingEnd]: ...
    async def claim(self, episode_id: str, owner: str, expected: str | None) -> bool:
        """Compare-and-set the owner of a row that is not closed; True if this caller now owns it."""
        ...

    async def hand_over(self, episode_id: str, owner: str) -> bool:
        """Give up one live row `owner` holds, for the next replica its agent reaches (a drain); True if it did."""
        ...

    async def disown(self, owner: str) -> int:
        """Give up every unfinished row `owner` holds (for the next process or a finisher); returns the count."""
        ...

    async def register_owner(self, owner: OwnerRecord) -> None: ...
    async def renew_owner(self, owner_id: str, lease_until: float) -> None:
        """One statement per interval for all of an owner's episodes."""
        ...

    async def drop_owner(self, owner_id: str) -> None: ...
    async def owners(self) -> builtins.list[OwnerRecord]: ...
    async def meta(self, key: str, default: str | None) -> str | None:
        """The stored value of `key`, set to `default` by the first caller (None: only read it)."""
        ...

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        """Compare-and-set a named lease kept in `meta`: taken (until `until`, epoch seconds) when nobody holds
        it, `holder` already holds it, or its holder's lease ended at or before `now`; True if `holder` has it."""
        ...

    async def lease(self, name: str) -> Lease | None:
        """Who holds the named lease, and until when (it may have ended); None if it was never taken."""
        ...

    async def owned_counts(self) -> dict[str, OwnedCount]:
        """Per owner: how many unfinished episodes it holds, and how many of those are live."""
        ...

    # -- routes: which episode an outside name (a key slot `key:PRINCIPAL:KEY`, or `session:ID`) belongs to --
    async def add_route(self, route: str, episode_id: str, handshake: JSONObject | None = None) -> None:
        """Point `route` at `episode_id` (a reused key moves to its newest episode); a session route keeps the
        `initialize` params it was opened with."""
        ...

    async def route_target(self, route: str) -> RouteTarget | None:
        """The unfinished episode `route` points at, with its holder's row (one read)."""
        ...

    async def orphans(self, at: float, limit: int = 100) -> builtins.list[tuple[str, str]]:
        """(episode id, route) of live episodes whose holder is gone by its lease at epoch `at`, or nobody."""
        ...

    async def pending_end(self, episode_id: str) -> PendingEnd | None:
        """One unfinished episode with its unreleased instances (what adopting it needs)."""
        ...

    async def route_owner(self, route: str) -> OwnerRecord | None:
        """The owner holding the unfinished episode `route` points at, if that owner has a row."""
        ...

    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None: ...
