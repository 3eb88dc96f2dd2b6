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


class _Written:
    """Tells a `commit` caller that its write (queued behind every earlier one) is durable, and its result."""

    __slots__ = ("done", "ok", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.ok = False


_Item = tuple[str, tuple[Any, ...], dict[str, Any], _Written | None]


class Recorder:
    """The proxy's single writer to the episode store."""

    def __init__(self, store: EpisodeStore | None) -> None:
        self.store = store
        self._send: MemoryObjectSendStream[_Item]
        self._receive: MemoryObjectReceiveStream[_Item]
        self._send, self._receive = anyio.create_memory_object_stream(math.inf)
        self._drained = anyio.Event()

    @property
    def backlog(self) -> int:
        """Records queued and not yet written."""
        return self._send.statistics().current_buffer_used

    def emit(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue one store call (`open_episode`, `add_call`, ...); never blocks, never raises."""
        if self.store is not None:
            self._queue((method, args, kwargs, None))

    async def commit(self, method: str, *args: Any, timeout: float = 10.0) -> tuple[bool, Any]:
        """Write and wait until it is durable (in order after everything emitted before); (written, result).

        For the end's transitions, which must be on disk before they are acted on. Shielded and bounded: a
        store that cannot keep up gives (False, None), and the caller goes on as if nothing were recorded.
        """
        if self.store is None:
            return False, None
        written = _Written()
        if not self._queue((method, args, {}, written)):
            return False, None
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            await written.done.wait()
        return written.ok, written.result

    def _queue(self, item: _Item) -> bool:
        try:
            self._send.send_nowait(item)
        except anyio.ClosedResourceError:  # after shutdown closed the store: nothing left to write to
            logger.warning("episode store closed; %s was not recorded", item[0])
            return False
        return True

    async def run(self) -> None:
        try:
            async for method, args, kwargs, written in self._receive:
                try:
                    result = await getattr(self.store, method)(*args, **kwargs)
                except Exception:
                    logger.exception("episode store: %s failed", method)
                else:
                    if written is not None:
                        written.ok, written.result = True, result
                finally:
                    if written is not None:
                        written.done.set()
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
