"""The SQLite schema and its versioned migrations, applied in order when a store is opened."""

from __future__ import annotations

SCHEMA_VERSION = 6

# Version 1: the episode record.
_V1 = (
    """CREATE TABLE episodes (
        id TEXT PRIMARY KEY, principal TEXT NOT NULL, task_key TEXT, started_at TEXT NOT NULL,
        ended_at TEXT, end_reason TEXT, answer TEXT, submitted_at TEXT,
        reward TEXT, verifier TEXT)""",  # reward, verifier: JSON objects
    "CREATE INDEX episodes_by_start ON episodes (started_at, id)",
    "CREATE INDEX episodes_by_task ON episodes (task_key, started_at)",
    """CREATE TABLE instances (
        episode_id TEXT NOT NULL REFERENCES episodes (id), instance_id TEXT NOT NULL, alias TEXT NOT NULL,
        provider TEXT NOT NULL CHECK (provider IN ('local', 'fleet')), spec TEXT NOT NULL,
        created_at TEXT NOT NULL, released_at TEXT, UNIQUE (episode_id, instance_id))""",
    """CREATE TABLE calls (
        episode_id TEXT NOT NULL REFERENCES episodes (id), seq INTEGER NOT NULL, tool TEXT NOT NULL,
        arguments TEXT NOT NULL, result_bytes INTEGER NOT NULL, is_error INTEGER NOT NULL,
        started_at TEXT NOT NULL, duration_ms REAL NOT NULL, PRIMARY KEY (episode_id, seq)) WITHOUT ROWID""",
)

# Version 2: the durable end. Rows written by version 1 are taken as closed (it kept no end state).
_V2 = (
    "ALTER TABLE episodes ADD COLUMN state TEXT NOT NULL DEFAULT 'closed'",
    "ALTER TABLE episodes ADD COLUMN owner TEXT",
    "ALTER TABLE episodes ADD COLUMN task TEXT",  # the bound task as JSON, written when the end begins
    "ALTER TABLE episodes ADD COLUMN graded_at TEXT",
    "ALTER TABLE episodes ADD COLUMN closed_at TEXT",
    "CREATE INDEX episodes_unfinished ON episodes (state) WHERE state != 'closed'",
    "ALTER TABLE instances ADD COLUMN url TEXT",  # never headers: they hold the Fleet key
    "ALTER TABLE instances ADD COLUMN data_dir TEXT",
    "ALTER TABLE instances ADD COLUMN expires_at REAL",  # epoch seconds (the platform's TTL)
    """CREATE TABLE owners (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL,
        lease_until REAL NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

# Version 3: where each owner can be reached by other replicas (forwarding to the owner of an episode).
_V3 = ("ALTER TABLE owners ADD COLUMN address TEXT",)

# Version 4: which account an instance lives in, so that only a process holding that account's credentials
# finishes its episode (two deployments may share one store file).
_V4 = ("ALTER TABLE instances ADD COLUMN origin TEXT",)

# Version 5: what identifies an episode from outside (its key slot, its handshake-era session ids), so that a
# replica a request lands on can find the owner and forward to it. Written only when the store is shared.
_V5 = (
    """CREATE TABLE routes (
        route TEXT PRIMARY KEY, episode_id TEXT NOT NULL REFERENCES episodes (id)) WITHOUT ROWID""",
    "CREATE INDEX routes_by_episode ON routes (episode_id)",
)

# Version 6: how a handshake-era session was opened (its `initialize` params as JSON), so that a replica adopting
# the episode of a dead owner can revive the session under the same id.
_V6 = ("ALTER TABLE routes ADD COLUMN handshake TEXT",)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6)  # MIGRATIONS[n - 1] takes a store to version n
