"""SQLite rows back into records (the columns are those of the schema in `sqlite.py`)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, cast

from .records import CallRecord, InstanceRecord, JSONObject, from_iso


def episode_fields(row: sqlite3.Row) -> dict[str, Any]:
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


def instance_of(row: sqlite3.Row) -> InstanceRecord:
    return InstanceRecord(
        alias=row["alias"],
        instance_id=row["instance_id"],
        provider=row["provider"],
        spec=row["spec"],
        created_at=from_iso(row["created_at"]),
        released_at=time_of(row["released_at"]),
    )


def call_of(row: sqlite3.Row) -> CallRecord:
    return CallRecord(
        seq=row["seq"],
        tool=row["tool"],
        arguments=json.loads(row["arguments"]),
        result_bytes=row["result_bytes"],
        is_error=bool(row["is_error"]),
        started_at=from_iso(row["started_at"]),
        duration_ms=row["duration_ms"],
    )
