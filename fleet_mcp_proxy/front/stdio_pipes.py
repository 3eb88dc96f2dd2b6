"""The process's stdin and stdout as non-blocking descriptors on the event loop, not through worker threads.

The SDK's `stdio_server` reads and writes every line through a thread; on two cores those hand-offs are a good
part of a stdio call. While serving, fd 0 reads the null device and fd 1 writes to stderr (as the SDK arranges),
so a child or a stray print never touches the protocol; both, and the descriptors' flags, are restored after.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress

import anyio

_CHUNK = 1 << 16


def _pollable(fd: int) -> bool:
    """A pipe or a socket: what the event loop can watch (a file or /dev/null cannot be)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextmanager
def claimed_stdio() -> Iterator[tuple[int, int] | None]:
    """Private non-blocking duplicates of stdin and stdout; None (nothing changed) when they cannot be watched."""
    if not (_pollable(0) and _pollable(1)):
        yield None
        return
    fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (0, 1)]
    flags = [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in fds]
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(2, 1)
        for fd, flag in zip(fds, flags, strict=True):
            fcntl.fcntl(fd, fcntl.F_SETFL, flag | os.O_NONBLOCK)
        yield fds[0], fds[1]
    finally:
        os.close(null)
        for std, fd, flag in zip((0, 1), fds, flags, strict=True):
            with suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flag)  # the descriptions may be shared with the parent
                os.dup2(fd, std)
            with suppress(OSError):
                os.close(fd)


async def read_lines(fd: int) -> AsyncIterator[bytes]:
    """Newline-delimited messages from `fd` until end of file (a last line without newline included)."""
    buffer = b""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        except OSError:
            chunk = b""
        if not chunk:
            if buffer.strip():
                yield buffer
            return
        if b"\n" not in chunk:
            buffer += chunk
            continue
        lines = (buffer + chunk).split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if line.strip():
                yield line


class LineWriter:
    """Writes whole lines to `fd` in the order they are given, from any task; waits only when the pipe is full."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._backlog = bytearray()
        self._flushing = anyio.Lock()
        self.broken = False  # the reader went away: nothing more can be delivered

    async def write(self, line: bytes) -> None:
        if self.broken:
            return
        if not self._backlog:
            try:
                written = os.write(self._fd, line)
            except BlockingIOError:
                written = 0
            except OSError:
                self.broken = True
                return
            if written == len(line):
                return
            line = line[written:]
        self._backlog += line
        async with self._flushing:  # whoever holds it writes everybody's backlog, in order
            while self._backlog and not self.broken:
                await anyio.wait_writable(self._fd)
                try:
                    written = os.write(self._fd, self._backlog)
                except BlockingIOError:
                    continue
                except OSError:
                    self.broken = True
                    self._backlog.clear()
                    return
                del self._backlog[:written]
