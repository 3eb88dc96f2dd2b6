"""Writes the durable episode record in order, off the request path.

Requests only enqueue; one writer task applies the writes to the store in the order they happened. It takes
everything queued (up to `BATCH_LIMIT` records) and commits each run of emitted records in ONE transaction
(group commit); a `commit` is written on its own, durable when its caller is told. A record that finds the
writer idle is written at once, unless records are coming faster than `GATHER` apart: then the writer waits
`GATHER` (5 ms) for more first.

Crash-loss window: what was not yet committed, i.e. the batch being written (at most `BATCH_LIMIT` records,
all or none of it), the records gathered in the last `GATHER`, and whatever was queued behind them. The writer
keeps up within milliseconds, so that is the records of the last few milliseconds. A store that fails never
fails a request, and a record the store refuses costs only itself: its batch is written again one by one.
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
from .store.records import BATCHABLE, Write

logger = logging.getLogger(__name__)

BATCH_LIMIT = 256  # records per transaction: bounds the crash-loss window and how long one write holds the store
# When records come faster than this (the first of a batch within this long of the last write's end), the writer
# waits this long for more before writing: measured, it halves the writer's CPU per record at 2-4 ms between
# calls; at 8 ms between calls waiting would cost more than it saves, so records that far apart never wait.
GATHER = 0.005


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
        self._in_hand = 0  # records taken off the queue and not yet written
        self._last_write = -math.inf  # when the last batch was written (anyio clock)

    @property
    def backlog(self) -> int:
        """Records queued and not yet written."""
        return self._send.statistics().current_buffer_used + self._in_hand

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
            async for first in self._receive:
                batch = [first]
                self._in_hand = 1
                if first[3] is None and anyio.current_time() - self._last_write < GATHER:
                    with anyio.CancelScope(shield=True):  # bounded; the record in hand is not dropped
                        await anyio.sleep(GATHER)
                while len(batch) < BATCH_LIMIT:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                self._in_hand = len(batch)
                try:
                    await self._write(batch)
                finally:
                    self._in_hand = 0
                    self._last_write = anyio.current_time()
        except anyio.ClosedResourceError:  # close() ran out of time and dropped the rest of the queue
            pass
        finally:
            self._drained.set()

    async def _write(self, batch: list[_Item]) -> None:
        """In order: each run of emitted records in one transaction, each `commit` on its own."""
        run: list[Write] = []
        for method, args, kwargs, written in batch:
            if written is None and method in BATCHABLE:
                run.append((method, args, kwargs))
                continue
            await self._apply(run)
            run = []
            await self._one(method, args, kwargs, written)
        await self._apply(run)

    async def _apply(self, run: list[Write]) -> None:
        if not run:
            return
        assert self.store is not None
        try:
            await self.store.apply(run)
        except Exception:
            if len(run) > 1:  # one bad record must not lose the others: write them one by one
                logger.warning("episode store: a batch of %d records was refused; writing them one by one", len(run))
                for method, args, kwargs in run:
                    await self._one(method, args, kwargs, None)
            else:
                _log_failure(run[0][0], run[0][1])

    async def _one(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], written: _Written | None) -> None:
        try:
            result = await getattr(self.store, method)(*args, **kwargs)
        except Exception:
            _log_failure(method, args)
        else:
            if written is not None:
                written.ok, written.result = True, result
        finally:
            if written is not None:
                written.done.set()

    async def close(self, timeout: float) -> None:
        """Write what is queued (bounded, shielded), then close the store, even when the writes ran out of time.

        Records still queued at the deadline are dropped with a warning that counts them; the batch being written
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


def _log_failure(method: str, args: tuple[Any, ...]) -> None:
    """Names the write and its episode, never its arguments (a call's may hold whatever the agent sent)."""
    at = 1 if method == "add_route" else 0  # add_route(route, episode_id, ...)
    episode = args[at] if method in BATCHABLE and len(args) > at and isinstance(args[at], str) else None
    logger.exception("episode store: %s%s failed", method, f" for episode {episode}" if episode else "")
