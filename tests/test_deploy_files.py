"""The shipped deployment files: deploy/haproxy.cfg checked by HAProxy itself and run in front of three real
replicas on one real PostgreSQL database."""

from __future__ import annotations

import subprocess
import uuid

import anyio
import pytest
from haproxy_front import CONFIG, config_env, haproxy, haproxy_binary
from helpers import ROOT
from pg_cluster import PgCluster
from test_replicas import MODERN, Replica, backend_pid, client, replica, wait_route

HAPROXY = haproxy_binary()
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)")


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None
    return subprocess.run(
        [HAPROXY, "-c", "-dW", "-f", str(CONFIG)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@needs_haproxy
@pytest.mark.parametrize("count", [1, 2, 3])
def test_haproxy_accepts_the_file_with_one_to_three_replicas(count: int) -> None:
    replicas = [f"127.0.0.1:{18001 + i}" for i in range(count)]
    done = _check(config_env("127.0.0.1:18000", replicas, "/tmp/fmp-check.sock"))
    assert done.returncode == 0, done.stdout + done.stderr  # -dW: a warning fails the check too


@needs_haproxy
@pytest.mark.parametrize("missing", ["FMP_BIND", "FMP_REPLICA_1"])
def test_haproxy_names_a_missing_variable(missing: str) -> None:
    env = config_env("127.0.0.1:18000", ["127.0.0.1:18001"])
    del env[missing]
    done = _check(env)
    assert done.returncode != 0 and f"{missing} is not set" in done.stdout + done.stderr


def test_the_file_checks_readiness_not_liveness_and_keys_what_the_proxy_reads() -> None:
    """The probe and the keys HAProxy routes on are the ones the proxy serves and reads."""
    from fleet_mcp_proxy.front.identity import EPISODE_HEADER, EPISODE_QUERY

    text = CONFIG.read_text()
    assert "option httpchk GET /readyz" in text
    assert f"url_param({EPISODE_QUERY})" in text and f"req.hdr({EPISODE_HEADER})" in text
    assert "stick on req.hdr(mcp-session-id)" in text and "stick store-response res.hdr(mcp-session-id)" in text
    assert (ROOT / "deploy" / "haproxy.cfg") == CONFIG


async def _forwarded(replicas: list[Replica]) -> list[int]:
    return [int((await r.status())["forwarded"]) for r in replicas]


@needs_haproxy
@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_haproxy_sticks_sessions_and_hashes_episode_keys_onto_one_replica(pg_cluster: PgCluster) -> None:
    store = pg_cluster.new_database()
    with anyio.fail_after(150):
        async with replica(store) as r1, replica(store) as r2, replica(store) as r3:
            replicas = [r1, r2, r3]
            async with haproxy([r.base.removeprefix("http://") for r in replicas]) as front:
                # Handshake-era sessions: each is stuck to the replica that issued its id, and every later
                # request lands there (no replica ever forwards one).
                sessions: dict[str, int] = {}
                for _ in range(3):
                    async with client(front.url, "legacy") as c:
                        first = await backend_pid(c)
                        for _ in range(4):
                            assert await backend_pid(c) == first
                        echoed = await c.call_tool("echo", {"text": "via haproxy"})
                        assert not echoed.is_error
                        table = await front.stuck_server_ids()
                        new = set(table) - set(sessions)
                        assert len(new) == 1, table
                        session_id = new.pop()
                        sessions[session_id] = table[session_id]
                        owner = await wait_route(store, f"session:{session_id}")
                        assert owner.address == replicas[table[session_id] - 1].base
                assert len(set(sessions.values())) >= 2  # new sessions are spread, not all on one replica
                assert await _forwarded(replicas) == [0, 0, 0]

                # Keyed episodes: every connection for one key, by URL or by header, lands on one replica.
                for n in range(2):
                    key = f"hap-{n}-{uuid.uuid4().hex[:10]}"
                    pids = set()
                    for _ in range(3):
                        async with client(f"{front.url}?episode={key}", MODERN) as c:
                            pids.add(await backend_pid(c))
                        async with client(front.url, MODERN, headers={"Fleet-Episode": key}) as c:
                            pids.add(await backend_pid(c))
                    assert len(pids) == 1  # one backend: the episode was never opened twice
                    owner = await wait_route(store, f"key:anonymous:{key}")
                    assert owner.address in {r.base for r in replicas}
                assert await _forwarded(replicas) == [0, 0, 0]

                # A stick entry whose server left (here: put in maintenance): the request goes elsewhere, and
                # that replica forwards it to the live owner, so the session carries on with its state.
                async with client(front.url, "legacy") as c:
                    first = await backend_pid(c)
                    (session_id, server_id), *_ = [
                        (s, i) for s, i in (await front.stuck_server_ids()).items() if s not in sessions
                    ]
                    await wait_route(store, f"session:{session_id}")
                    await front.ask(f"disable server replicas/r{server_id}")
                    assert await backend_pid(c) == first
                    hops = await _forwarded(replicas)
                    assert hops[server_id - 1] == 0 and sum(hops) >= 1
