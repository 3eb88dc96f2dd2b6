"""A small keep-alive HTTP/1.1 client for the tool-call fast lane.

Measured on loopback (benchmarks/, docs/benchmarks.md), httpx, httpcore and aiohttp each add 0.5 to 2 ms to a
forwarded call, several times the whole budget a proxy has. This client does only what the fast lane needs:
POST a body to one origin, read a Content-Length, chunked or close-delimited answer as it streams, and keep
the connection for the next call. Anything it does not understand fails the call over to the SDK path.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..tls import client_context

_MAX_HEAD = 64 * 1024
_READ = 256 * 1024


class LaneError(Exception):
    """The exchange failed. `sent` is False when the server cannot have seen the request."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(eq=False)
class _Conn:
    stream: anyio.abc.ByteStream
    reader: BufferedByteReceiveStream
    idle_since: float = 0.0
    reused: bool = False

    def stale(self, now: float, keepalive: float) -> bool:
        if now - self.idle_since > keepalive or self.reader.buffer:
            return True  # too old, or bytes arrived between answers: the server spoke out of turn
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        return sock is None or not _quiet(sock.fileno())


def _quiet(fd: int) -> bool:
    """True when an idle socket has nothing to read: no close from the server, no stray bytes.

    A non-blocking peek works on any descriptor number (`select` raises past 1023) and on whatever object the
    event loop hands out as the socket (asyncio's and uvloop's wrappers refuse `recv`): it wraps the bare fd
    without owning it.
    """
    if fd < 0:
        return False  # the transport already closed it
    try:
        probe = socket.socket(fileno=fd)
    except OSError:
        return False  # not a socket any more
    try:
        probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False  # reset
    finally:
        probe.detach()  # the fd stays the transport's
    return False  # b"": the server closed; a byte: it spoke out of turn


@dataclass(eq=False)
class Http1Response:
    status: int
    headers: dict[bytes, bytes]
    _conn: _Conn
    _pool: Http1Pool
    _length: int | None
    _chunked: bool
    _keep: bool
    _done: bool = field(default=False)
    _released: bool = field(default=False)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives. The connection returns to the pool once the body has been read."""
        reader = self._conn.reader
        try:
            if self._chunked:
                while True:
                    size_line = await reader.receive_until(b"\r\n", 1024)
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        while await reader.receive_until(b"\r\n", _MAX_HEAD):
                            pass  # trailers
                        break
                    while size:
                        piece = await reader.receive(min(size, _READ))
                        size -= len(piece)
                        yield piece
                    await reader.receive_exactly(2)
            elif self._length is not None:
                left = self._length
                while left:
                    piece = await reader.receive(min(left, _READ))
                    left -= len(piece)
                    yield piece
            else:
                self._keep = False
                while True:
                    try:
                        yield await reader.receive(_READ)
                    except anyio.EndOfStream:
                        break
            self._done = True
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead, ValueError) as exc:
            raise LaneError("the backend closed the connection mid-answer", sent=True) from exc
        finally:
            await self.release()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def release(self) -> None:
        """Pool the connection if its body was read to the end; close it otherwise. Idempotent."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.idle_since = anyio.current_time()
        if self._done and self._keep and len(self._pool._idle) < self._pool._max_idle:
            self._pool._idle.append(conn)
        else:
            await self._pool._discard(conn)


class Http1Pool:
    """Connections to one origin; at most `max_idle` kept between calls, each for at most `keepalive` s."""

    def __init__(self, url: str, *, keepalive: float = 4.0, max_idle: int = 64, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the fast lane speaks plain http and https only")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode("ascii")
        self._keepalive = keepalive
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._ssl: ssl.SSLContext | None = client_context() if self._tls else None

    async def _connect(self, *, pooled: bool = True) -> _Conn:
        now = anyio.current_time()
        while pooled and self._idle:
            conn = self._idle.pop()
            if not conn.stale(now, self._keepalive):
                conn.reused = True
                return conn
            await self._discard(conn)
        try:
            with anyio.fail_after(self._connect_timeout):
                stream: anyio.abc.ByteStream
                if self._ssl is not None:
                    stream = await anyio.connect_tcp(
                        self._host, self._port, ssl_context=self._ssl, tls_standard_compatible=False
                    )
                else:
                    stream = await anyio.connect_tcp(self._host, self._port)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise LaneError("nothing accepted the connection", sent=False) from exc
        return _Conn(stream, BufferedByteReceiveStream(stream))

    async def _discard(self, conn: _Conn) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await conn.stream.aclose()

    async def post(self, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Http1Response:
        """Send one POST and read the answer's head; the body is read through the response.

        Raises:
            LaneError: connecting, sending or reading the head failed.
        """
        return await self.send(b"POST", headers, body)

    async def send(self, method: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes = b"") -> Http1Response:
        """Send one request (POST, GET or DELETE) and read the answer's head, as `post` does."""
        head = [method, b" ", self.path.encode("ascii"), b" HTTP/1.1\r\nhost: ", self.authority]
        head.append(b"\r\ncontent-length: " + str(len(body)).encode("ascii") + b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        request = b"".join(head) + body
        conn = await self._connect()
        while True:
            try:
                await conn.stream.send(request)
                break
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                await self._discard(conn)
                if not conn.reused:
                    raise LaneError("the connection broke before the request was sent", sent=False) from exc
            # A pooled connection the server dropped after the check: nothing went out, so once more on a new one.
            conn = await self._connect(pooled=False)
        try:
            return self._parse_head(conn, await conn.reader.receive_until(b"\r\n\r\n", _MAX_HEAD))
        except BaseException as exc:
            await self._discard(conn)
            if isinstance(exc, OSError | anyio.BrokenResourceError | anyio.EndOfStream | anyio.IncompleteRead):
                raise LaneError("the backend closed the connection without answering", sent=True) from exc
            if isinstance(exc, anyio.DelimiterNotFound | ValueError):
                raise LaneError("the backend answered something that is not HTTP/1.1", sent=True) from exc
            raise

    def _parse_head(self, conn: _Conn, raw: bytes) -> Http1Response:
        lines = raw.split(b"\r\n")
        version, status_text = lines[0].split(b" ", 2)[:2]
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not HTTP/1.x")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError("malformed header line")
            headers[name.strip().lower()] = value.strip()
        status = int(status_text)
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        length = None if chunked else headers.get(b"content-length")
        keep = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        if status in (204, 304) or 100 <= status < 200:
            length = b"0"
        return Http1Response(status, headers, conn, self, int(length) if length is not None else None, chunked, keep)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)
