"""Durable episode records for RL training: what is kept, the `EpisodeStore` interface, SQLite and PostgreSQL."""

from .opening import is_postgres_url, open_any_store
from .records import (
    CallRecord,
    DuplicateRecord,
    EpisodeRecord,
    EpisodeStore,
    EpisodeSummary,
    InstanceRecord,
    JSONObject,
    Provider,
    RecordNotFound,
    StoreError,
    to_iso,
)
from .schema import SCHEMA_VERSION
from .sqlite import SQLiteStore, open_store

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "DuplicateRecord",
    "EpisodeRecord",
    "EpisodeStore",
    "EpisodeSummary",
    "InstanceRecord",
    "JSONObject",
    "Provider",
    "RecordNotFound",
    "SQLiteStore",
    "StoreError",
    "is_postgres_url",
    "open_any_store",
    "open_store",
    "to_iso",
]
