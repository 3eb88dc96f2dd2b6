"""Slow clients (R8): header deadlines close slowloris connections while normal clients keep working.

Time is the subject here, so the slow connections really trickle bytes on real sockets. Figures are printed,
never asserted: what is asserted is that every slow connection is closed and every normal call succeeds.
"""

from __future__ import annotations

import statistics
from typing import Any

import anyio
import httpx2
import pytest
from edge_helpers import ok_app, serve
from helpers import config_with, http_client, kitchen_cmd, proxy_http, stop_process
from scaleout_helpers import serve as spawn_cli

from fleet_mcp_proxy.front import slowclients

KITCHEN = f"kitchen={kitchen_cmd('kitchen')}"
SLOW = 200  # slow connections held open at once


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    return host, int(port)


async def _slow_connection(address: tuple[str, int], lifetimes: list[float], *, trickle: bool) -> None:
    """Send a request line, then one header byte every 0.2 s (or nothing) until the server hangs up."""
    started = anyio.current_time()
    async with await anyio.connect_tcp(*address) as stream:
        if trickle:
            await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def drip() -> None:
            try:
                while trickle:
                    await stream.send(b"x")
                    await anyio.sleep(0.2)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(drip)
            try:
                while await stream.receive():  # the 408, then end of stream
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            tg.cancel_scope.cancel()
    lifetimes.append(anyio.current_time() - started)


@pytest.mark.anyio
async def test_slowloris_connections_are_closed_while_a_normal_client_keeps_working() -> None:
    config = config_with(KITCHEN, header_timeout=1.0)
    async with proxy_http(config) as proxy:
        address = _address(proxy.url)
        lifetimes: list[float] = []
        latencies: list[float] = []
        async with http_client(proxy.url) as c:
            with anyio.fail_after(60):
                await c.call_tool("echo", {"text": "warm up"})
                for _ in range(10):  # the baseline, before any slow client
                    clock = anyio.current_time()
                    assert not (await c.call_tool("echo", {"text": "baseline"})).is_error
                    latencies.append(anyio.current_time() - clock)
                baseline = list(latencies)
                latencies.clear()
                async with anyio.create_task_group() as tg:
                    for i in range(SLOW):
                        tg.start_soon(lambda i=i: _slow_connection(address, lifetimes, trickle=i % 4 != 0))
                    for _ in range(40):  # while they trickle
                        clock = anyio.current_time()
                        result = await c.call_tool("echo", {"text": "normal"})
                        latencies.append(anyio.current_time() - clock)
                        assert not result.is_error, result
                        await anyio.sleep(0.02)
        assert len(lifetimes) == SLOW, "every slow connection was closed by the server"
        p99 = statistics.quantiles(latencies, n=100)[-1]
        print(
            f"\nR8: {SLOW} slow connections closed after {min(lifetimes):.2f}..{max(lifetimes):.2f} s "
            f"(deadline 1 s); normal calls p50 {statistics.median(baseline) * 1000:.1f} ms before, "
            f"{statistics.median(latencies) * 1000:.1f} ms during (p99 {p99 * 1000:.1f} ms)"
        )


@pytest.mark.anyio
async def test_beyond_limit_concurrency_new_connections_get_503_not_a_hang() -> None:
    config = config_with(KITCHEN, header_timeout=1.0, limit_concurrency=10)
    async with proxy_http(config) as proxy:
        address = _address(proxy.url)
        base = proxy.url.removesuffix("/mcp")
        lifetimes: list[float] = []
        async with anyio.create_task_group() as tg, httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(30):
                for _ in range(10):
                    tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=False))
                statuses: list[int] = []
                while not statuses or statuses[-1] != 503:  # 200 until all ten idle connections are accepted
                    statuses.append((await http.get(base + "/healthz", headers={"Connection": "close"})).status_code)
        assert set(statuses) <= {200, 503}, "a full server answers 503 at once: no hang, no reset"
        assert len(lifetimes) == 10
        async with httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(10):
                again = await http.get(base + "/healthz")
        assert again.status_code == 200, "the idle connections' slots came back when the deadline closed them"


def _protocols() -> list[Any]:
    protocols: list[Any] = [slowclients.HeaderDeadlineProtocol]
    httptools_protocol = getattr(slowclients, "HttpToolsHeaderDeadlineProtocol", None)
    if httptools_protocol is not None:
        protocols.append(
            pytest.param(
                httptools_protocol,
                marks=pytest.mark.skipif(
                    not _has_httptools(), reason="httptools is not installed: uvicorn cannot use its parser"
                ),
            )
        )
    return protocols


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


async def _answer(stream: Any, request: bytes) -> bytes:
    """Send one request on an open connection and read its whole answer (Content-Length framed)."""
    await stream.send(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += await stream.receive()
    return head.split(b"\r\n", 1)[0]


async def _read_body_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers only once the whole request body is in, as the MCP endpoint does."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _trickled_body(address: tuple[str, int], path: bytes = b"/") -> tuple[bytes, int]:
    """Complete headers, then a declared 10,000-byte body one byte every 0.1 s. (what came back, bytes sent)."""
    head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Accept: application/json, text/event-stream\r\nContent-Length: 10000\r\n\r\n"
    sent = 0
    answer = b""
    async with await anyio.connect_tcp(*address) as stream:
        await stream.send(head)

        async def drip() -> None:
            nonlocal sent
            try:
                while True:
                    await stream.send(b" ")
                    sent += 1
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(drip)
            try:
                while chunk := await stream.receive():
                    answer += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            tg.cancel_scope.cancel()
    return answer, sent


@pytest.mark.anyio
@pytest.mark.parametrize("base", _protocols())
async def test_each_protocol_times_out_headers_but_not_requests_or_kept_alive_connections(base: type) -> None:
    protocol = type("Protocol", (base,), {"header_timeout": 0.5})
    async with serve(ok_app(), http=protocol, lifespan="off") as url:
        address = _address(url)
        lifetimes: list[float] = []
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with anyio.fail_after(20):
            # One raw connection: a client library would silently reconnect if the server dropped it.
            async with await anyio.connect_tcp(*address) as stream:
                first = await _answer(stream, request)
                await anyio.sleep(0.7)  # idle on the kept-alive connection longer than the header deadline
                second = await _answer(stream, request)  # the same connection: it gets a fresh deadline
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=True))
                tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=False))
        assert first == second == b"HTTP/1.1 200 OK"
        assert len(lifetimes) == 2
        print(f"\n{base.__name__}: slow connections closed after {', '.join(f'{t:.2f} s' for t in lifetimes)}")


@pytest.mark.anyio
@pytest.mark.parametrize("base", _protocols())
async def test_each_protocol_cuts_off_a_trickled_body_at_its_deadline_but_not_a_prompt_one(base: type) -> None:
    protocol = type("Protocol", (base,), {"header_timeout": 5.0, "body_timeout": 0.5})
    async with serve(_read_body_app, http=protocol, lifespan="off") as url:
        address = _address(url)
        with anyio.fail_after(20):  # the body alone would take 1,000 s
            answer, sent = await _trickled_body(address)
            async with await anyio.connect_tcp(*address) as stream:
                body = b"x" * 50_000
                head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
                prompt = await _answer(stream, head + body)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert sent < 10_000
        assert prompt == b"HTTP/1.1 200 OK"


@pytest.mark.anyio
async def test_the_proxy_closes_a_connection_whose_body_trickles_past_body_timeout() -> None:
    async with proxy_http(config_with(KITCHEN, body_timeout=1.0)) as proxy:
        with anyio.fail_after(30):
            answer, sent = await _trickled_body(_address(proxy.url), b"/mcp")
            async with http_client(proxy.url) as c:
                assert not (await c.call_tool("echo", {"text": "prompt"})).is_error
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert sent < 10_000


async def _response(stream: Any) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, read off a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += await stream.receive()
    return head


@pytest.mark.anyio
async def test_a_kept_alive_connection_outlives_the_clients_own_expiry() -> None:
    """httpx keeps an idle connection for 5 s, and so did uvicorn: a client reusing one just as the server closed
    it lost its POST underneath. The proxy keeps idle connections longer (`keep_alive_timeout`), so the client is
    the one that lets go."""
    config = config_with(KITCHEN)
    async with proxy_http(config) as proxy:
        host, port = _address(proxy.url)
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        with anyio.fail_after(60):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(request)
                assert (await _response(stream)).startswith(b"HTTP/1.1 200")
                await anyio.sleep(httpx2.Limits().keepalive_expiry + 1.0)  # idle past the client's expiry: the subject
                await stream.send(request)
                assert (await _response(stream)).startswith(b"HTTP/1.1 200")  # the same connection still serves


@pytest.mark.anyio
async def test_the_listen_queue_is_the_kernels_ceiling_not_uvicorns() -> None:
    """4,096 arrivals at once overflowed the accept queue: asyncio re-listens with uvicorn's `backlog` (2,048),
    whatever the CLI asked for. The served socket's queue, as the kernel reports it, is now its own ceiling."""
    somaxconn = int(await anyio.Path("/proc/sys/net/core/somaxconn").read_text())
    running = await spawn_cli("--env", KITCHEN)
    try:
        with anyio.fail_after(30):
            listing = await anyio.run_process(["ss", "-ltnH", f"sport = :{running.port}"])
    finally:
        stop_process(running.proc)
    (line,) = listing.stdout.decode().splitlines()
    backlog = int(line.split()[2])  # Send-Q of a listening socket: its backlog
    assert backlog == min(somaxconn, slowclients.LISTEN_BACKLOG) > 2048, line
