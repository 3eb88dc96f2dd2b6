"""The PostgreSQL schema and its versioned migrations: the SQLite schema (`schema.py`) in PostgreSQL's types.

Version n here is version n there, so both stores report one `SCHEMA_VERSION`; a new migration goes into both.
Times stay fixed-width ISO text and JSON stays text, so rows read back exactly as from SQLite. Keys and times
compare in the "C" collation: byte order, whatever the database's locale, is the order `export` pages by.
"""

from __future__ import annotations

# Version 1: the episode record. `last_seq` numbers calls atomically (one row lock) across connections.
_V1 = (
    """CREATE TABLE episodes (
        id TEXT COLLATE "C" PRIMARY KEY, principal TEXT NOT NULL, task_key TEXT COLLATE "C",
        started_at TEXT COLLATE "C" NOT NULL, ended_at TEXT, end_reason TEXT, answer TEXT, submitted_at TEXT,
        reward TEXT, verifier TEXT, last_seq INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX episodes_by_start ON episodes (started_at, id)",
    "CREATE INDEX episodes_by_task ON episodes (task_key, started_at)",
    """CREATE TABLE instances (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        episode_id TEXT COLLATE "C" NOT NULL REFERENCES episodes (id), instance_id TEXT NOT NULL,
        alias TEXT NOT NULL, provider TEXT NOT NULL CHECK (provider IN ('local', 'fleet')), spec TEXT NOT NULL,
        created_at TEXT NOT NULL, released_at TEXT, UNIQUE (episode_id, instance_id))""",
    """CREATE TABLE calls (
        episode_id TEXT COLLATE "C" NOT NULL REFERENCES episodes (id), seq INTEGER NOT NULL, tool TEXT NOT NULL,
        arguments TEXT NOT NULL, result_bytes BIGINT NOT NULL, is_error BOOLEAN NOT NULL,
        started_at TEXT NOT NULL, duration_ms DOUBLE PRECISION NOT NULL, PRIMARY KEY (episode_id, seq))""",
)

# Version 2: the durable end.
_V2 = (
    "ALTER TABLE episodes ADD COLUMN state TEXT NOT NULL DEFAULT 'closed'",
    "ALTER TABLE episodes ADD COLUMN owner TEXT",
    "ALTER TABLE episodes ADD COLUMN task TEXT",
    "ALTER TABLE episodes ADD COLUMN graded_at TEXT",
    "ALTER TABLE episodes ADD COLUMN closed_at TEXT",
    "CREATE INDEX episodes_unfinished ON episodes (state) WHERE state <> 'closed'",
    "ALTER TABLE instances ADD COLUMN url TEXT",  # never headers: they hold the Fleet key
    "ALTER TABLE instances ADD COLUMN data_dir TEXT",
    "ALTER TABLE instances ADD COLUMN expires_at DOUBLE PRECISION",
    """CREATE TABLE owners (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

# Version 3: where each owner can be reached by other replicas.
_V3 = ("ALTER TABLE owners ADD COLUMN address TEXT",)

# Version 4: which account an instance lives in (see `schema.py`).
_V4 = ("ALTER TABLE instances ADD COLUMN origin TEXT",)

# Version 5: routes from an episode's outside names to its id (see `schema.py`).
_V5 = (
    """CREATE TABLE routes (
        route TEXT COLLATE "C" PRIMARY KEY, episode_id TEXT COLLATE "C" NOT NULL REFERENCES episodes (id))""",
    "CREATE INDEX routes_by_episode ON routes (episode_id)",
)

# Version 6: a session route's `initialize` params (see `schema.py`).
_V6 = ("ALTER TABLE routes ADD COLUMN handshake TEXT",)

# PG_MIGRATIONS[n - 1] takes a store to version n
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
