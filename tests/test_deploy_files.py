"""The shipped deployment files: deploy/haproxy.cfg checked by HAProxy itself and run in front of three real
replicas on one real PostgreSQL database."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from haproxy_front import CONFIG, config_env, haproxy, haproxy_binary
from helpers import ROOT, config_with, proxy_http
from pg_cluster import PgCluster
from test_replicas import MODERN, Replica, backend_pid, client, replica, wait_route

from fleet_mcp_proxy.config import ProxyConfig, load_config

HAPROXY = haproxy_binary()
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)")


def _check(env: dict[str, str], strict: bool = True) -> subprocess.CompletedProcess[str]:
    """`haproxy -c`; strict: with -dW, a warning fails the check too."""
    assert HAPROXY is not None
    command = [HAPROXY, "-c", *(["-dW"] if strict else []), "-f", str(CONFIG)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


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


# --- docker-compose.yml and deploy/k8s: parsed, and held to what the proxy and HAProxy really accept ---------

COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
REPLICA_TOML = ROOT / "deploy" / "replica.toml"
_VAR = re.compile(r"\$\{(\w+)\}")


def _toml_vars() -> set[str]:
    """The ${VAR}s deploy/replica.toml reads (comments aside)."""
    lines = [line.split("#", 1)[0] for line in REPLICA_TOML.read_text().splitlines()]
    return set(_VAR.findall("\n".join(lines)))


def _yaml_docs(path: Path) -> dict[str, dict[str, Any]]:
    """kind/name -> manifest."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text()) if d}


def _replica_config(env: dict[str, str]) -> ProxyConfig:
    """deploy/replica.toml as a replica with ENV loads it (placeholders of the orchestrator made concrete)."""
    concrete = {k: re.sub(r"\$\{[^}]*\}|\$\(\w+\)", "x", v) for k, v in env.items()}
    concrete["FMP_ADVERTISE"] = re.sub(r"//x:", "//10.0.0.5:", concrete.get("FMP_ADVERTISE", ""))
    return load_config(REPLICA_TOML, environ=concrete)


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_compose_runs_postgres_three_replicas_and_haproxy_consistently() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "replica1", "replica2", "replica3", "haproxy"}
    haproxy_env = services["haproxy"]["environment"]
    for n in (1, 2, 3):
        name = f"replica{n}"
        svc = services[name]
        assert svc["build"] == "."
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert _toml_vars() <= set(env)  # every ${VAR} of the file is set
        config = _replica_config(env)
        assert config.store.url is not None and config.store.url.startswith("postgresql://")
        assert "@postgres:5432/" in env["FMP_STORE_URL"]
        assert env["FMP_ADVERTISE"] == f"http://{name}:{config.port}"
        assert haproxy_env[f"FMP_REPLICA_{n}"] == f"{name}:{config.port}"
        config_path = svc["command"][svc["command"].index("--config") + 1]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        assert (ROOT / mounts[config_path]).resolve() == REPLICA_TOML
        assert _seconds(svc["stop_grace_period"]) > config.shutdown_grace + 5  # the drain ends before SIGKILL
        assert "postgres" in svc["depends_on"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["haproxy"]["volumes"]}
    assert (ROOT / mounts["/usr/local/etc/haproxy/haproxy.cfg"]).resolve() == CONFIG
    published = services["haproxy"]["ports"][0].split(":")[-1]
    assert haproxy_env["FMP_BIND"].rsplit(":", 1)[1] == published


@needs_haproxy
def test_haproxy_accepts_the_file_with_the_compose_and_k8s_environments() -> None:
    compose_env = {
        k: str(v) for k, v in yaml.safe_load(COMPOSE.read_text())["services"]["haproxy"]["environment"].items()
    }
    haproxy_pod = _yaml_docs(K8S / "haproxy.yaml")["Deployment/fmp-haproxy"]["spec"]["template"]["spec"]
    k8s_env = {
        e["name"]: e["value"].replace("$(POD_NAMESPACE)", "default")
        for e in haproxy_pod["containers"][0]["env"]
        if "value" in e
    }
    done = _check(k8s_env)
    assert done.returncode == 0, done.stdout + done.stderr
    # Compose's service names do not resolve outside its network: HAProxy warns and resolves them at run time.
    done = _check(compose_env, strict=False)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 3 and all("could not resolve address 'replica" in w for w in warnings), warnings


def test_k8s_manifests_hold_the_shipped_files_and_agree_with_the_proxy() -> None:
    replicas = _yaml_docs(K8S / "replicas.yaml")
    haproxy_docs = _yaml_docs(K8S / "haproxy.yaml")
    postgres = _yaml_docs(K8S / "postgres.yaml")
    assert replicas["ConfigMap/fmp-replica-config"]["data"]["replica.toml"] == REPLICA_TOML.read_text(), (
        "deploy/k8s/replicas.yaml must hold deploy/replica.toml verbatim"
    )
    assert haproxy_docs["ConfigMap/fmp-haproxy-config"]["data"]["haproxy.cfg"] == CONFIG.read_text(), (
        "deploy/k8s/haproxy.yaml must hold deploy/haproxy.cfg verbatim"
    )
    deployment = replicas["Deployment/fmp-replica"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env_list = container["env"]
    names = [e["name"] for e in env_list]
    from_secrets = {"FMP_STORE_URL": "postgresql://fmp:pw@fmp-postgres:5432/fmp", "FLEET_API_KEY": "k"}
    env = {e["name"]: e.get("value", from_secrets.get(e["name"], "")) for e in env_list}
    config = _replica_config(env)
    assert _toml_vars() <= set(env)
    # The advertise address is the pod's IP, from the downward API, declared before it is referred to.
    pod_ip = next(e for e in env_list if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["FMP_ADVERTISE"] == f"http://$(POD_IP):{config.port}" and names.index("POD_IP") < names.index(
        "FMP_ADVERTISE"
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The config file the command names is the ConfigMap's, mounted there.
    config_path = container["args"][container["args"].index("--config") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "fmp-replica-config" and mount["subPath"] == "replica.toml"
    # preStop, then the drain (shutdown_grace), all inside the grace period before SIGKILL.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config.shutdown_grace
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    headless = replicas["Service/fmp-replicas"]["spec"]
    assert headless["clusterIP"] == "None" and headless["selector"].items() <= labels.items()
    assert headless["ports"][0]["targetPort"] == "http"
    haproxy_pod = haproxy_docs["Deployment/fmp-haproxy"]["spec"]["template"]["spec"]
    haproxy_env = {e["name"]: e.get("value") for e in haproxy_pod["containers"][0]["env"]}
    assert haproxy_env["FMP_REPLICAS_DNS"] == f"fmp-replicas.$(POD_NAMESPACE).svc.cluster.local:{config.port}"
    store_url = next(e for e in env_list if e["name"] == "FMP_STORE_URL")["valueFrom"]["secretKeyRef"]
    assert store_url == {"name": "fmp-store", "key": "url"}
    assert "StatefulSet/fmp-postgres" in postgres


@pytest.mark.anyio
async def test_every_probe_path_shipped_is_served_by_the_proxy() -> None:
    """/readyz and /healthz as the manifests, HAProxy and the image ask them: a real proxy answers 200."""
    pod = _yaml_docs(K8S / "replicas.yaml")["Deployment/fmp-replica"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    paths = {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]}
    paths.add(re.search(r"option httpchk GET (\S+)", CONFIG.read_text()).group(1))  # type: ignore[union-attr]
    paths.add(re.search(r"127\.0\.0\.1:8000(/\w+)", (ROOT / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    assert paths == {"/readyz", "/healthz"}
    with anyio.fail_after(60):
        async with proxy_http(config_with()) as proxy, httpx2.AsyncClient(timeout=10) as http:
            for path in sorted(paths):
                response = await http.get(proxy.url.removesuffix("/mcp") + path)
                assert response.status_code == 200, (path, response.text)
