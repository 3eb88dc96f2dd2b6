"""Database rows back into records (the columns of `schema.py`; SQLite rows and asyncpg records alike)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, cast

from .records import (
    CallRecord,
    EpisodeRecord,
    InstanceRecord,
    JSONObject,
    OwnerRecord,
    PendingEnd,
    PendingInstance,
    RouteTarget,
    from_iso,
)

# One read for a request that landed away from its episode: the route, its episode's state and its holder's row.
ROUTE_TARGET = """SELECT r.episode_id, r.handshake, e.state, e.owner AS holder, o.id AS owner_row, o.host, o.pid,
    o.started_at AS owner_started, o.lease_until, o.address
    FROM routes r JOIN episodes e ON e.id = r.episode_id LEFT JOIN owners o ON o.id = e.owner
    WHERE r.route = {0} AND e.state <> 'closed'"""


class Row(Protocol):
    """A row read by column name: `sqlite3.Row` and `asyncpg.Record` both are."""

    def __getitem__(self, key: str, /) -> Any: ...


def episode_fields(row: Row) -> dict[str, Any]:
    return {
        "episode_id": row["id"],
        "principal": row["principal"],
        "task_key": row["task_key"],
        "started_at": from_iso(row["started_at"]),
        "ended_at": time_of(row["ended_at"]),
        "end_reason": row["end_reason"],
    }


def time_of(text: str | None) -> datetime | None:
    return None if text is None else from_iso(text)


def json_object(text: str | None) -> JSONObject | None:
    return None if text is None else cast(JSONObject, json.loads(text))


def instance_of(row: Row) -> InstanceRecord:
    return InstanceRecord(
        alias=row["alias"],
        instance_id=row["instance_id"],
        provider=row["provider"],
        spec=row["spec"],
        created_at=from_iso(row["created_at"]),
        released_at=time_of(row["released_at"]),
    )


def call_of(row: Row) -> CallRecord:
    return CallRecord(
        seq=row["seq"],
        tool=row["tool"],
        arguments=json.loads(row["arguments"]),
        result_bytes=row["result_bytes"],
        is_error=bool(row["is_error"]),
        started_at=from_iso(row["started_at"]),
        duration_ms=row["duration_ms"],
    )


def owner_of(row: Row) -> OwnerRecord:
    return OwnerRecord(
        owner_id=row["id"],
        host=row["host"],
        pid=row["pid"],
        started_at=from_iso(row["started_at"]),
        lease_until=row["lease_until"],
        address=row["address"],
    )


# Unfinished episode rows, each with whether another replica could find it by an outside name (adopt it).
UNFINISHED = """SELECT e.*, EXISTS (SELECT 1 FROM routes r WHERE r.episode_id = e.id) AS routed
    FROM episodes e WHERE e.state <> 'closed' {0} ORDER BY e.started_at"""

# Live episodes nobody holds any more (no owner, a gone owner row, or a lapsed lease), with one outside name each:
# a key slot when it has one, else the session it was opened with. Same-host pid checks are left to the caller.
ORPHANS = """SELECT e.id, MIN(r.route) AS route FROM episodes e JOIN routes r ON r.episode_id = e.id
    LEFT JOIN owners o ON o.id = e.owner
    WHERE e.state = 'live' AND (o.id IS NULL OR o.lease_until < {0}) GROUP BY e.id ORDER BY e.id LIMIT {1}"""


def route_target_of(row: Row) -> RouteTarget:
    owner = None
    if row["owner_row"] is not None:
        owner = OwnerRecord(
            owner_id=row["owner_row"],
            host=row["host"],
            pid=row["pid"],
            started_at=from_iso(row["owner_started"]),
            lease_until=row["lease_until"],
            address=row["address"],
        )
    return RouteTarget(
        episode_id=row["episode_id"],
        state=row["state"],
        owner_id=row["holder"],
        owner=owner,
        handshake=json_object(row["handshake"]),
    )


def pending_ends(episodes: Iterable[Row], instances: Iterable[Row]) -> list[PendingEnd]:
    """Unfinished episode rows with their unreleased instances."""
    held: dict[str, list[PendingInstance]] = {}
    for row in instances:
        held.setdefault(row["episode_id"], []).append(
            PendingInstance(
                alias=row["alias"],
                instance_id=row["instance_id"],
                provider=row["provider"],
                url=row["url"],
                data_dir=row["data_dir"],
                expires_at=row["expires_at"],
                origin=row["origin"],
            )
        )
    return [
        PendingEnd(
            episode_id=row["id"],
            principal=row["principal"],
            state=row["state"],
            owner=row["owner"],
            end_reason=row["end_reason"],
            task=json_object(row["task"]),
            answer=row["answer"],
            reward=json_object(row["reward"]),
            instances=tuple(held.get(row["id"], ())),
            routed=bool(row["routed"]),
        )
        for row in episodes
    ]


def record_of(row: Any, instances: Iterable[Any], calls: Iterable[Any]) -> EpisodeRecord:
    """One episode row with its instance and call rows, as either store reads them."""
    return EpisodeRecord(
        **episode_fields(row),
        answer=row["answer"],
        submitted_at=time_of(row["submitted_at"]),
        reward=json_object(row["reward"]),
        verifier=json_object(row["verifier"]),
        instances=tuple(instance_of(i) for i in instances),
        calls=tuple(call_of(c) for c in calls),
        state=row["state"],
        graded_at=time_of(row["graded_at"]),
        closed_at=time_of(row["closed_at"]),
    )
