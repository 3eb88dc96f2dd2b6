"""Edge limits (R7, R9): exposure check, Host/Origin, body size, hostile JSON, and the caps per principal."""

from __future__ import annotations

import json
import subprocess
import uuid

import anyio
import httpx2
import pytest
from canaries import FLEET_KEY
from edge_helpers import INITIALIZE, MCP_HEADERS
from fleet_emulator import running_emulator
from helpers import PY, ROOT, child_env, config_with, http_client, kitchen_cmd, proxy_http, wait_until
from mcp import MCPError

from fleet_mcp_proxy.config import ConfigError, check_exposure, load_config

KITCHEN = f"kitchen={kitchen_cmd('kitchen')}"
MIB = 1024 * 1024


# -- exposure ---------------------------------------------------------------------------------------------------
def test_a_non_loopback_bind_without_an_allow_list_refuses_to_start() -> None:
    args = [PY, "-m", "fleet_mcp_proxy", "serve", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "proxy.allowed_hosts" in done.stderr and "0.0.0.0" in done.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_binds_need_no_allow_list(host: str) -> None:
    check_exposure(load_config(overrides={"host": host}, environ={}))


def test_an_explicit_allow_list_permits_a_wider_bind() -> None:
    check_exposure(load_config(overrides={"host": "0.0.0.0", "allowed_hosts": ["proxy.internal:8000"]}, environ={}))
    with pytest.raises(ConfigError) as err:
        check_exposure(load_config(overrides={"host": "10.1.2.3"}, environ={}))
    assert err.value.key == "proxy.allowed_hosts"


# -- Host, Origin, Content-Type -------------------------------------------------------------------------------------
def _host_variants(port: int) -> list[str]:
    bases = ["proxy.example", "PROXY.EXAMPLE", "proxy.example.", "xn--proxy-9ya.example", "evil.example", "10.0.0.1"]
    bases += ["[::ffff:127.0.0.2]", "[fe80::1]", "proxy.example.evil.example", "127.0.0.1.nip.io", "0x7f000001"]
    variants = [f"{b}:{p}" for b in bases for p in (port, 80, 443, 8000, 65535)] + bases
    return [v for v in variants if v != "proxy.example:8000"]


@pytest.mark.anyio
async def test_hosts_and_origins_off_the_allow_list_are_refused_before_any_session() -> None:
    config = config_with(KITCHEN, allowed_hosts=["proxy.example:8000"], allowed_origins=["https://app.example"])
    async with proxy_http(config) as proxy, httpx2.AsyncClient(timeout=10) as http:
        port = int(proxy.url.rsplit(":", 1)[1].split("/")[0])
        hosts = _host_variants(port)
        origins = [
            f"{scheme}://{host}"
            for scheme in ("http", "https", "null")
            for host in ("evil.example", "app.example.evil", "APP.EXAMPLE", "app.example:443", "localhost.evil")
        ] + ["null", "https://app.example.", "file://"]
        with anyio.fail_after(60):
            by_host = [
                (await http.post(proxy.url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": host})).status_code
                for host in hosts
            ]
            by_origin = [
                (await http.post(proxy.url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": o})).status_code
                for o in origins
            ]
            no_json = await http.post(
                proxy.url, content=json.dumps(INITIALIZE), headers={**MCP_HEADERS, "Content-Type": "text/plain"}
            )
            allowed = await http.post(
                proxy.url,
                json=INITIALIZE,
                headers={**MCP_HEADERS, "Host": "proxy.example:8000", "Origin": "https://app.example"},
            )
        print(f"\nR9: {len(hosts)} hosts -> {set(by_host)}, {len(origins)} origins -> {set(by_origin)}")
        assert by_host == [421] * len(hosts)
        assert by_origin == [403] * len(origins)
        assert no_json.status_code == 400
        assert allowed.status_code == 200 and allowed.headers.get("mcp-session-id")
        assert proxy.state.registry.episodes == {}


# -- body size -------------------------------------------------------------------------------------------------
async def _raw_post(url: str, *, declared: int | None, send_body: int, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """POST through a raw socket; stop sending as soon as an answer arrives. Returns (status line, bytes sent)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    length = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{length}\r\n\r\n"
    ).encode()
    sent = 0
    answer = b""
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(head)

        async def feed() -> None:
            nonlocal sent
            block = b"[" * chunk
            try:
                while sent < send_body:
                    piece = block if declared is not None else b"%x\r\n%s\r\n" % (len(block), block)
                    await stream.send(piece)
                    sent += len(block)
                if declared is None:
                    await stream.send(b"0\r\n\r\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return  # the server closed after answering: exactly what a limit should do

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            try:
                answer = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                answer = b""
            tg.cancel_scope.cancel()
    return answer.split(b"\r\n", 1)[0], sent


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_one_mib_gets_413_with_no_session_and_no_fleet_call(framing: str) -> None:
    async with running_emulator(FLEET_KEY) as emu:
        settings = {"run_id": f"t-{uuid.uuid4().hex[:8]}", "api_key": FLEET_KEY, "base_url": emu.base_url}
        config = load_config(overrides={"fleet": settings}, env_args=("tracker=fleet:tracker",), environ={})
        assert config.max_request_body == MIB, "the default limit is 1 MiB"
        async with proxy_http(config) as proxy:
            baseline = sum(emu.state.request_counts.values())  # the startup sweep for orphans
            declared = 10 * MIB if framing == "content-length" else None
            with anyio.fail_after(30):
                status, sent = await _raw_post(proxy.url, declared=declared, send_body=10 * MIB)
            print(f"\nR7 {framing}: {status.decode()} after {sent / 1024:.0f} KiB sent")
            assert status == b"HTTP/1.1 413 Request Entity Too Large"
            assert proxy.state.registry.episodes == {}
            assert sum(emu.state.request_counts.values()) == baseline, "no Fleet call"
            with anyio.fail_after(30):  # and the proxy still serves
                status, _ = await _raw_post(proxy.url, declared=None, send_body=0)
            assert status.startswith(b"HTTP/1.1 4"), "an empty body is a client error, not a crash"


@pytest.mark.anyio
async def test_deeply_nested_json_is_a_parse_error_and_the_proxy_stays_up() -> None:
    async with proxy_http(config_with(KITCHEN)) as proxy, httpx2.AsyncClient(timeout=30) as http:
        nested = "[" * 100_000 + "]" * 100_000
        with anyio.fail_after(30):
            response = await http.post(proxy.url, content=nested, headers=MCP_HEADERS)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == -32700
            async with http_client(f"{proxy.url}?episode=after-nesting", "2026-07-28") as c:
                assert not (await c.call_tool("echo", {"text": "still here"})).is_error
        assert len(proxy.state.registry.episodes) == 1


# -- caps per principal ------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_open_episodes_are_capped_per_principal_with_a_message_naming_the_key() -> None:
    async with proxy_http(config_with(KITCHEN, max_episodes_per_principal=2)) as proxy:
        urls = [f"{proxy.url}?episode=cap-{i}" for i in range(3)]
        with anyio.fail_after(60):
            for url in urls[:2]:
                async with http_client(url, "2026-07-28") as c:
                    assert not (await c.call_tool("echo", {"text": "x"})).is_error
            async with http_client(urls[2], "2026-07-28") as c:
                with pytest.raises(MCPError) as err:
                    await c.call_tool("echo", {"text": "x"})
            assert "max_episodes_per_principal" in str(err.value)
            assert len(proxy.state.registry.episodes) == 2
            async with httpx2.AsyncClient(timeout=10) as http:
                assert (await http.delete(urls[0])).status_code == 204
            await wait_until(lambda: len(proxy.state.registry.episodes) == 1, 30, "episode ended")
            async with http_client(urls[2], "2026-07-28") as c:
                assert not (await c.call_tool("echo", {"text": "x"})).is_error, "a freed slot can be used"


@pytest.mark.anyio
async def test_concurrent_tool_calls_are_capped_per_principal() -> None:
    async with proxy_http(config_with(KITCHEN, max_calls_per_principal=1)) as proxy:
        async with http_client(proxy.url) as c, anyio.create_task_group() as tg:
            with anyio.fail_after(60):
                await c.call_tool("echo", {"text": "warm up"})
                tg.start_soon(c.call_tool, "block", {})
                await wait_until(lambda: proxy.state.limits.calls.get("anonymous") == 1, 30, "call in flight")
                refused = await c.call_tool("echo", {"text": "second"})
            assert refused.is_error and "max_calls_per_principal" in refused.content[0].text  # type: ignore[union-attr]
            tg.cancel_scope.cancel()
        await wait_until(lambda: not proxy.state.limits.calls, 30, "the cancelled call is no longer counted")


@pytest.mark.anyio
async def test_leased_instances_are_capped_per_principal_before_anything_is_provisioned() -> None:
    envs = (f"a={kitchen_cmd('a')}", f"b={kitchen_cmd('b')}")
    async with proxy_http(config_with(*envs, max_leases_per_principal=3)) as proxy:
        with anyio.fail_after(60):
            async with http_client(f"{proxy.url}?episode=one", "2026-07-28") as c:
                assert not (await c.call_tool("only_a", {})).is_error
            async with http_client(f"{proxy.url}?episode=two", "2026-07-28") as c:
                refused = await c.call_tool("only_a", {})
            assert refused.is_error and "max_leases_per_principal" in refused.content[0].text  # type: ignore[union-attr]
            second = next(e for e in proxy.state.registry.episodes.values() if e.key.endswith(":two"))
            assert second.instances == {}, "nothing was provisioned for the refused episode"
            async with httpx2.AsyncClient(timeout=10) as http:
                await http.delete(f"{proxy.url}?episode=one")
            await wait_until(lambda: not proxy.state.limits.leases, 30, "the ended episode's leases are released")
            async with http_client(f"{proxy.url}?episode=two", "2026-07-28") as c:
                assert not (await c.call_tool("only_b", {})).is_error
