"""Inbound bearer auth (R10, R11): tokens from config or environment, 401 + WWW-Authenticate, principal binding."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import httpx2
import pytest
from canaries import CLIENT_TOKEN, leaked
from edge_helpers import INITIALIZE, MCP_HEADERS
from helpers import config_with, http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.config import TOKEN_ENV, ConfigError, ProxyConfig, load_config
from fleet_mcp_proxy.front.auth import REDACTED, StaticTokenVerifier

BOB_TOKEN = "bob-token-0123456789abcdef"


def auth_config(tmp_path: Path | None = None, **proxy: object) -> ProxyConfig:
    extra = {"store_path": str(tmp_path / "episodes.sqlite3")} if tmp_path else {}
    tokens = {"alice": CLIENT_TOKEN, "bob": BOB_TOKEN}
    return config_with(f"kitchen={kitchen_cmd('kitchen')}", auth={"tokens": tokens}, **extra, **proxy)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- configuration --------------------------------------------------------------------------------------------
def test_tokens_come_from_the_auth_section_with_interpolation_and_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[auth.tokens]\nalice = "${ALICE_TOKEN}"\n', encoding="utf-8")
    config = load_config(path, environ={"ALICE_TOKEN": CLIENT_TOKEN, TOKEN_ENV: BOB_TOKEN})
    assert dict(config.auth.tokens) == {"alice": CLIENT_TOKEN, "default": BOB_TOKEN}
    assert config.auth.enabled and not load_config(environ={}).auth.enabled
    assert not leaked(repr(config)), "the config's repr must not show tokens"


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ({"alice": "short"}, "at least 16"),
        ({"alice": CLIENT_TOKEN + " x"}, "without spaces"),
        ({"a:b": CLIENT_TOKEN}, "principal 'a:b'"),
        ({"alice": CLIENT_TOKEN, "bob": CLIENT_TOKEN}, "share one token"),
    ],
)
def test_weak_or_ambiguous_tokens_are_config_errors_that_never_quote_the_token(
    tokens: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"auth": {"tokens": tokens}}, environ={})
    assert err.value.key == "auth.tokens" and problem in err.value.problem
    assert not leaked(str(err.value))


def test_a_missing_token_variable_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[auth]\ntokens = { alice = "${ALICE_TOKEN}" }\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "auth.tokens.alice" and "ALICE_TOKEN" in err.value.problem


@pytest.mark.anyio
async def test_the_verifier_compares_every_token_and_never_hands_the_credential_on() -> None:
    verifier = StaticTokenVerifier({"alice": CLIENT_TOKEN, "bob": BOB_TOKEN})
    alice, bob = await verifier.verify_token(CLIENT_TOKEN), await verifier.verify_token(BOB_TOKEN)
    assert alice is not None and alice.client_id == "alice" and alice.token == REDACTED
    assert bob is not None and bob.client_id == "bob"
    for wrong in ("", CLIENT_TOKEN[:-1], CLIENT_TOKEN + "x", CLIENT_TOKEN.upper(), "\x00" * 40):
        assert await verifier.verify_token(wrong) is None


# -- the HTTP front -----------------------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-a-valid-token-at-all"), bearer(CLIENT_TOKEN[:-1]), {"Authorization": f"Basic {CLIENT_TOKEN}"}],
    ids=["none", "wrong", "truncated", "basic"],
)
async def test_requests_without_a_valid_token_get_401_and_touch_nothing(headers: dict[str, str]) -> None:
    async with proxy_http(auth_config()) as proxy, httpx2.AsyncClient(timeout=10) as http:
        base = proxy.url.removesuffix("/mcp")
        with anyio.fail_after(20):
            refused = await http.post(proxy.url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            others = [await http.get(base + path, headers=headers) for path in ("/episodes/abc", "/status", "/nope")]
            health = await http.get(base + "/healthz")
        for response in (refused, *others):
            assert response.status_code == 401, (response.request.url, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer ")
            assert "mcp-session-id" not in response.headers
            assert not leaked(response.text)
        assert health.status_code == 200, "the liveness probe needs no token"
        assert proxy.state.registry.episodes == {}


@pytest.mark.anyio
async def test_a_valid_token_is_served_as_its_principal() -> None:
    async with proxy_http(auth_config()) as proxy, http_client(proxy.url, headers=bearer(CLIENT_TOKEN)) as c:
        with anyio.fail_after(30):
            result = await c.call_tool("echo", {"text": "hi"})
        assert not result.is_error, result
        (episode,) = proxy.state.registry.episodes.values()
        assert episode.principal == "alice"


async def _initialize(http: httpx2.AsyncClient, url: str, token: str) -> str:
    response = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer(token)})
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


@pytest.mark.anyio
async def test_another_principals_session_id_gets_the_same_bytes_as_an_unknown_one() -> None:
    ping = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    async with proxy_http(auth_config()) as proxy, httpx2.AsyncClient(timeout=10) as http:
        with anyio.fail_after(30):
            alices = await _initialize(http, proxy.url, CLIENT_TOKEN)

            async def as_bob(session_id: str) -> httpx2.Response:
                headers = {**MCP_HEADERS, **bearer(BOB_TOKEN), "Mcp-Session-Id": session_id}
                return await http.post(proxy.url, json=ping, headers=headers)

            stolen = await as_bob(alices)
            unknown = await as_bob(uuid.uuid4().hex)
        assert stolen.status_code == unknown.status_code == 404
        assert stolen.content == unknown.content
        assert proxy.state.registry.episodes == {}, "no episode (and no backend) for a rejected request"


@pytest.mark.anyio
async def test_episode_keys_live_in_each_principals_own_namespace() -> None:
    async with proxy_http(auth_config()) as proxy:
        url = f"{proxy.url}?episode=shared-name"
        with anyio.fail_after(60):
            async with http_client(url, "2026-07-28", headers=bearer(CLIENT_TOKEN)) as alice:
                await alice.call_tool("echo", {"text": "alice was here"})
            async with httpx2.AsyncClient(timeout=10) as http:
                # Bob ending "shared-name" ends nothing of Alice's: the same 204 an unknown key gets.
                gone = await http.delete(url, headers=bearer(BOB_TOKEN))
                unknown = await http.delete(f"{proxy.url}?episode=never-used", headers=bearer(BOB_TOKEN))
            assert gone.status_code == unknown.status_code == 204 and gone.content == unknown.content
            async with http_client(url, "2026-07-28", headers=bearer(BOB_TOKEN)) as bob:
                await bob.call_tool("echo", {"text": "bob"})
        owners = sorted(e.principal for e in proxy.state.registry.episodes.values())
        assert owners == ["alice", "bob"], "same key, two principals, two episodes"
        assert all(not e.ended for e in proxy.state.registry.episodes.values())


@pytest.mark.anyio
async def test_an_episode_record_is_not_found_for_another_principal(tmp_path: Path) -> None:
    async with proxy_http(auth_config(tmp_path)) as proxy, httpx2.AsyncClient(timeout=10) as http:
        base = proxy.url.removesuffix("/mcp")
        with anyio.fail_after(60):
            async with http_client(proxy.url, headers=bearer(CLIENT_TOKEN)) as c:
                await c.call_tool("echo", {"text": "x"})
                (episode,) = proxy.state.registry.episodes.values()
            mine: list[httpx2.Response] = []

            async def recorded() -> bool:
                mine.append(await http.get(f"{base}/episodes/{episode.id}", headers=bearer(CLIENT_TOKEN)))
                return mine[-1].status_code == 200

            while not await recorded():
                await anyio.sleep(0.05)
            theirs = await http.get(f"{base}/episodes/{episode.id}", headers=bearer(BOB_TOKEN))
            unknown = await http.get(f"{base}/episodes/{uuid.uuid4().hex[:16]}", headers=bearer(BOB_TOKEN))
        assert mine[-1].json()["principal"] == "alice"
        assert theirs.status_code == unknown.status_code == 404 and theirs.content == unknown.content
