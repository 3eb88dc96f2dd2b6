"""Which store a setting names: a postgresql:// URL is the shared PostgreSQL store, anything else a SQLite file."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .records import EpisodeStore
from .sqlite import open_store


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def describe(url: str) -> str:
    """`PostgreSQL DB at HOST:PORT` for a connection URL: no user, password or query (which may hold one)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2] or ",".join(parse_qs(parts.query).get("host", [])) or "localhost"
    return f"PostgreSQL {parts.path.lstrip('/') or '(default database)'} at {hosts}"


async def open_any_store(target: str | Path, *, create: bool = True) -> EpisodeStore:
    """Open (and, with `create`, create or migrate) the store at a PostgreSQL URL or a SQLite path.

    `create=False` is for readers: nothing is created, converted or migrated.

    Raises:
        StoreError: naming the file, or the host and database (never a password).
    """
    if is_postgres_url(target):
        from .postgres import open_postgres_store  # asyncpg only loads when a deployment uses it

        return await open_postgres_store(str(target), create=create)
    return await open_store(target, create=create)
