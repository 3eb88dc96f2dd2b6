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
        except anyio.ClosedResourceError:  # close() ran out of time and dropped the rest of the queue
            pass
        finally:
            self._drained.set()

    async def close(self, timeout: float) -> None:
        """Write what is queued (bounded, shielded), then close the store, even when the writes ran out of time.

        Records still queued at the deadline are dropped with a warning that counts them; the one being written
        then, if any, finishes or fails on its own before the store closes (also bounded).
        """
        self._send.close()
        if self.store is None:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(timeout):
                await self._drained.wait()
            lost = 0
            if not self._drained.is_set():
                while True:
                    try:
                        self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                    lost += 1
                self._receive.close()  # the writer stops after the record it is on
                logger.warning(
                    "episode store %s: %d queued record(s) not written within the %g s shutdown budget; "
                    "those episodes' records are incomplete",
                    getattr(self.store, "path", "(store)"),
                    lost,
                    timeout,
                )
            with anyio.move_on_after(timeout) as closing:
                await self.store.aclose()
            if closing.cancelled_caught:
                logger.error("episode store %s could not be closed in time", getattr(self.store, "path", "(store)"))
