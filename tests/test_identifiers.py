"""Identifiers the proxy interpolates, and redirects it never follows (R15).

Bad env keys, versions, episode keys and resource URIs are refused with 0 outbound requests; instance ids
and URLs that Fleet returns are checked before use; redirects from Fleet, instances or URL backends are
never followed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from canaries import FLEET_KEY
from edge_helpers import MCP_HEADERS, Recording, Seen, ok_app, redirect_to, serve
from fleet_emulator import Emulator, running_emulator
from helpers import http_client, proxy_http
from mcp import MCPError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_mcp_proxy import identifiers as ids
from fleet_mcp_proxy.config import ConfigError, ProxyConfig, load_config
from fleet_mcp_proxy.tasks import TaskFileError, load_tasks

HOSTILE = ["../etc", "%2e%2e/x", "a/b", "a?b=1", "a#b", "a\r\nX: y", "a\nb", "a\x00b", "a" * 300, "a\n", " a", ""]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_match_no_identifier_rule(value: str) -> None:
    checks = (ids.is_env_spec, ids.is_version, ids.is_instance_id, ids.is_episode_key, ids.is_principal)
    assert not any(check(value) for check in checks)


def test_ordinary_identifiers_pass() -> None:
    assert ids.is_env_spec("fira:v2.3.0") and ids.is_env_spec("tracker") and ids.is_version("v1.0.0")
    assert ids.is_instance_id("inst-0001-abcdef") and ids.is_episode_key("run-7:ep.3")
    assert ids.is_instance_url("https://inst-1.fleetai.com/") and ids.is_instance_url("http://127.0.0.1:9/x/")
    for url in ("javascript:alert(1)", "http://", "http://u:p@host/", "http://host/\r\nX: y", "ftp://host/"):
        assert not ids.is_instance_url(url), url


@pytest.mark.parametrize("spec", ["../etc", "env?x=1", "env:v1\nx", "env:v1:v2", "env#x"])
def test_bad_fleet_env_keys_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"fleet": {"api_key": FLEET_KEY}}, env_args=(f"x=fleet:{spec}",), environ={})
    assert err.value.key.startswith("env.x") and "ENV_KEY" in err.value.problem


@pytest.mark.parametrize(("field", "value"), [("env_key", "../x"), ("version", "v1/../../x"), ("data_key", "d?x")])
def test_bad_task_identifiers_are_refused_at_load(tmp_path: Path, field: str, value: str) -> None:
    path = tmp_path / "tasks.json"
    entry = {"task_key": "t", "prompt": "p", "env_key": "tracker", field: value}
    path.write_text(json.dumps([entry]), encoding="utf-8")
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    assert field in str(err.value)


# -- against the running proxy, with the Fleet emulator counting every request --------------------------------------
def fleet_config(emu: Emulator, **fleet: Any) -> ProxyConfig:
    settings = {"run_id": f"t-{uuid.uuid4().hex[:8]}", "api_key": FLEET_KEY, "base_url": emu.base_url, **fleet}
    return load_config(overrides={"fleet": settings}, env_args=("tracker=fleet:tracker",), environ={})


def calls(emu: Emulator) -> int:
    return sum(emu.state.request_counts.values())


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["../x", "a%0Ab", "a b", "k?x=1", "a" * 200])
async def test_bad_episode_keys_get_invalid_params_and_no_fleet_call(key: str) -> None:
    async with running_emulator(FLEET_KEY) as emu, proxy_http(fleet_config(emu)) as proxy:
        before = calls(emu)
        async with httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(20):
                by_query = await http.post(proxy.url, params={"episode": key}, content=b"{}", headers=MCP_HEADERS)
                by_header = await http.post(
                    proxy.url, content=b"{}", headers={**MCP_HEADERS, "Fleet-Episode": key.replace("\n", "")}
                )
        for response in (by_query, by_header):
            assert response.status_code == 400 and response.json()["error"]["code"] == -32602
        assert proxy.state.registry.episodes == {} and calls(emu) == before


@pytest.mark.anyio
async def test_hostile_resource_uris_are_unknown_resources_with_no_fleet_call() -> None:
    uris = [
        "fleet://episode/current/../reward",
        "fleet://episode/current/%2e%2e/reward",
        "fleet://instances/../tracker",
        "fleet://instances/tracker/../../x",
        "fleet://instances/tracker?x=1",
        "fleet://instances/tracker#x",
        "fleet://episode/current/reward\r\nX: y",
        "fleet://outputs/../../etc/passwd",
        "fleet://" + "a" * 300,
    ]
    async with running_emulator(FLEET_KEY) as emu, proxy_http(fleet_config(emu)) as proxy:
        before = calls(emu)
        async with http_client(f"{proxy.url}?episode=uris", "2026-07-28") as c:
            with anyio.fail_after(30):
                for uri in uris:
                    with pytest.raises(MCPError) as err:
                        await c.read_resource(uri)
                    assert err.value.error.code == -32602, uri
        assert calls(emu) == before, "no Fleet call, nothing provisioned"
        assert all(not e.instances for e in proxy.state.registry.episodes.values())


# -- what Fleet returns ----------------------------------------------------------------------------------------------
class RewriteCreate:
    """Bends the JSON answer to `POST /v1/env/instances` (a Fleet that returns something unexpected)."""

    def __init__(self, app: ASGIApp, mutate: Callable[[dict[str, Any]], None], seen: Seen) -> None:
        self.app, self.mutate, self.seen = app, mutate, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.requests.append((f"{scope['method']} {scope['path']}", {}))
        if scope["type"] != "http" or (scope["method"], scope["path"]) != ("POST", "/v1/env/instances"):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = b""

        async def hold(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            if start["status"] == 200:
                data = json.loads(body)
                self.mutate(data)
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, hold)


def _set_id(data: dict[str, Any]) -> None:
    data["instance_id"] = "inst-1/../../v1/env/instances/batch?run_id=x#"


def _set_url(data: dict[str, Any]) -> None:
    data["urls"]["root"] = "javascript:alert(1)//"


@pytest.mark.anyio
@pytest.mark.parametrize(("mutate", "expected"), [(_set_id, "not a plain name"), (_set_url, "not an http(s) URL")])
async def test_an_instance_id_or_url_from_fleet_that_is_not_plain_is_never_used(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    seen = Seen()
    async with (
        running_emulator(FLEET_KEY, wrap=lambda app: RewriteCreate(app, mutate, seen)) as emu,
        proxy_http(fleet_config(emu)) as proxy,
        http_client(f"{proxy.url}?episode=bent", "2026-07-28") as c,
    ):
        with anyio.fail_after(60):
            result = await c.call_tool("list_projects", {})
        assert result.is_error and expected in result.content[0].text  # type: ignore[union-attr]
    paths = [path for path, _ in seen.requests]
    per_instance = [p for p in paths if re.match(r"^\w+ /v1/env/instances/(?!batch$)", p)]
    if mutate is _set_id:  # the shutdown backstop may release the instance by the plain id Fleet lists it under
        bent = [p for p in per_instance if not re.fullmatch(r"\w+ /v1/env/instances/inst-\d+-[0-9a-f]+", p)]
        assert bent == [], f"the bad id reached a URL path: {per_instance}"
    assert not [p for p in paths if "/mcp" in p], "nothing connected to the instance"


# -- redirects are never followed ------------------------------------------------------------------------------------
async def _redirected_episode(redirects: Callable[[Scope], bool], target_path: str, episode: str) -> Seen:
    """A Fleet episode whose matching requests are answered with a redirect elsewhere; what reached elsewhere."""
    attacker = Seen()
    async with serve(Recording(ok_app(), attacker), lifespan="off") as elsewhere:

        def bend(app: ASGIApp) -> ASGIApp:
            redirect = redirect_to(f"{elsewhere}{target_path}")

            async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http" and redirects(scope):
                    await redirect(scope, receive, send)
                else:
                    await app(scope, receive, send)

            return wrapped

        async with (
            running_emulator(FLEET_KEY, wrap=bend) as emu,
            proxy_http(fleet_config(emu, provision_timeout=5)) as proxy,
            http_client(f"{proxy.url}?episode={episode}", "2026-07-28") as c,
        ):
            with anyio.fail_after(60):
                result = await c.call_tool("list_projects", {})
            assert result.is_error, result
    return attacker


@pytest.mark.anyio
async def test_an_instance_url_that_redirects_is_not_followed() -> None:
    attacker = await _redirected_episode(
        lambda scope: re.match(r"^/inst-[^/]+/(api/v1/)?mcp", scope["path"]) is not None, "/mcp", "redirected"
    )
    assert attacker.requests == [], "the redirect target was never contacted"


@pytest.mark.anyio
async def test_a_fleet_api_redirect_is_not_followed() -> None:
    attacker = await _redirected_episode(
        lambda scope: (scope["method"], scope["path"]) == ("POST", "/v1/env/instances"), "/v1/env/instances", "api"
    )
    assert attacker.requests == [], "the Fleet API key never went to the redirect target"


@pytest.mark.anyio
async def test_a_url_backend_that_redirects_is_not_followed() -> None:
    attacker = Seen()
    async with (
        serve(Recording(ok_app(), attacker), lifespan="off") as elsewhere,
        serve(redirect_to(f"{elsewhere}/mcp"), lifespan="off") as redirector,
    ):
        config = load_config(env_args=(f"site={redirector}/mcp",), overrides={"record_episodes": False}, environ={})
        async with proxy_http(config) as proxy, http_client(f"{proxy.url}?episode=r", "2026-07-28") as c:
            with anyio.fail_after(60):
                with pytest.raises(MCPError):
                    await c.list_tools()
    assert attacker.requests == []
