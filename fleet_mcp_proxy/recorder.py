"""Writes the durable episode record in order, off the request path.

Requests only enqueue; one writer task applies the writes to the store in the order they happened, each
committed at once. A crash loses what was not yet written: the call in flight, plus any record the writer
had not reached (it keeps up within milliseconds). A store that fails never fails a request.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .store import EpisodeStore

logger = logging.getLogger(__name__)


def default_store_path() -> Path:
    """`$XDG_STATE_HOME/fleet-mcp-proxy/episodes.sqlite3` (default `~/.local/state/...`)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleet-mcp-proxy" / "episodes.sqlite3"


def now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    """The proxy's single writer to the episode store."""

    def __init__(self, store: EpisodeStore | None) -> None:
        self.store = store
        self._send: MemoryObjectSendStream[tuple[str, tuple[Any, ...]]]
        self._receive: MemoryObjectReceiveStream[tuple[str, tuple[Any, ...]]]
        self._send, self._receive = anyio.create_memory_object_stream(math.inf)
        self._drained = anyio.Event()

    def emit(self, method: str, *args: Any) -> None:
        """Queue one store call (`open_episode`, `add_call`, ...); never blocks, never raises."""
        if self.store is not None:
            try:
                self._send.send_nowait((method, args))
            except anyio.ClosedResourceError:  # after shutdown closed the store: nothing left to write to
                logger.warning("episode store closed; %s was not recorded", method)

    async def run(self) -> None:
        try:
            async for method, args in self._receive:
                try:
                    await getattr(self.store, method)(*args)
                except Exception:
                    logger.exception("episode store: %s failed", method)
        finally:
            self._drained.set()

    async def close(self, timeout: float) -> None:
        """Write what is queued (bounded, shielded), then close the store."""
        self._send.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            if self.store is not None:
                await self._drained.wait()
                await self.store.aclose()
