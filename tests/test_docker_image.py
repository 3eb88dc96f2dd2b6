"""The project's Dockerfile builds and the image serves MCP, with Debian's docker.io and no image registry.

The test starts its own dockerd (no bridge network; its own data root, exec root, pid file and socket in a
temporary directory, never the system's), makes a Debian base image itself with debootstrap from the mirror
apt uses, builds the Dockerfile on it, runs the image on a free loopback port (host network) and drives one
MCP session through it with the SDK client. Measured on a 2-core machine: about 3 minutes, most of it
debootstrap, which conftest therefore starts in the background when the session begins (`debootstrap_base.py`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import debootstrap_base
import httpx2
import pytest
from debootstrap_base import apt_mirror
from haproxy_front import free_port
from helpers import ROOT, http_client

DOCKERD = shutil.which("dockerd")
DEBOOTSTRAP = debootstrap_base.DEBOOTSTRAP
# The client Debian ships with its daemon (docker.io), not whichever other `docker` comes first on PATH.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd and debootstrap need root"),
    pytest.mark.skipif(
        not (DOCKERD and DEBOOTSTRAP and DOCKER),
        reason="Debian's docker.io and debootstrap are not installed (apt-get install docker.io debootstrap, "
        "as .ci/run does)",
    ),
    pytest.mark.timeout(600),
]


def test_apt_mirror_reads_both_source_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://one.example/debian bookworm main\n")
    assert apt_mirror(tmp_path) == "http://one.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://two.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror(tmp_path) == "http://two.example/debian"


def _run(step: str, timings: dict[str, float], command: list[str], timeout: float, **kw: Any) -> str:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    timings[step] = round(time.monotonic() - started, 1)
    assert done.returncode == 0, f"{step} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}"
    return str(done.stdout)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and its own containerd
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def private_dockerd(root: Path) -> Iterator[dict[str, str]]:
    """A dockerd of our own under ROOT; yields the environment that points the docker client at it."""
    assert DOCKERD is not None and DOCKER is not None
    sock = root / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
    command = [
        DOCKERD,
        "--bridge=none",  # no network of its own: builds and containers use the host's loopback
        "--iptables=false",  # and it leaves the host's firewall alone
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{sock}",
    ]
    with (root / "dockerd.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER, "version"], env=env, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, (root / "dockerd.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "dockerd did not answer within 60 s"
            time.sleep(0.2)
        yield env
    finally:
        _stop(proc)
        debootstrap_base.unmount_under(root)  # dockerd leaves its host-network namespace mounted


def _import_base(rootfs: Path, tag: str, env: dict[str, str]) -> None:
    assert DOCKER is not None
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        done = subprocess.run([DOCKER, "import", "-", tag], stdin=tar.stdout, env=env, capture_output=True, timeout=180)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(60)
    assert done.returncode == 0 and tar.returncode == 0, done.stderr[-2000:]


async def _one_session(url: str) -> list[str]:
    with anyio.fail_after(60):
        while True:
            with contextlib.suppress(httpx2.TransportError):
                async with httpx2.AsyncClient(timeout=5) as http:
                    if (await http.get(url.removesuffix("/mcp") + "/healthz")).status_code == 200:
                        break
            await anyio.sleep(0.2)
    with anyio.fail_after(120):
        async with http_client(url) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            found = await client.call_tool("search_issues", {"query": "JPY"})
            assert not found.is_error, found
            assert found.structured_content is not None and found.structured_content
    return tools


def test_the_image_builds_on_a_debootstrapped_base_and_serves_mcp() -> None:
    assert DEBOOTSTRAP is not None and DOCKER is not None
    timings: dict[str, float] = {}
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="fmp-dk-"))  # short: dockerd's socket path must fit in 107 bytes
    name = f"fmp-test-{uuid.uuid4().hex[:8]}"
    try:
        with private_dockerd(root) as env:
            # Started in the background when the session began (conftest): usually done or nearly by now.
            rootfs, timings["debootstrap wait"] = debootstrap_base.rootfs(timeout=420)
            shutil.copy(CA_BUNDLE, rootfs / "etc" / "ssl" / "certs" / CA_BUNDLE.name)  # pip in the build trusts it
            _import_base(rootfs, f"{name}-base", env)
            shutil.rmtree(rootfs, ignore_errors=True)
            build = [DOCKER, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={name}-base", "-t", name, "."]
            _run("build", timings, build, timeout=420, env=env, cwd=ROOT)
            port = free_port()
            serve = [
                "serve",
                "--config",
                "/etc/fleet-mcp-proxy/config.toml",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            _run("run", timings, [DOCKER, "run", "-d", "--network", "host", "--name", name, name, *serve], 60, env=env)
            try:
                tools = anyio.run(_one_session, f"http://127.0.0.1:{port}/mcp")
            except BaseException:
                logs = subprocess.run([DOCKER, "logs", name], env=env, capture_output=True, text=True, timeout=30)
                print(f"container log:\n{(logs.stdout + logs.stderr)[-3000:]}")
                raise
            assert "search_issues" in tools
            _run("stop", timings, [DOCKER, "stop", "-t", "20", name], timeout=60, env=env)
            state = _run("inspect", timings, [DOCKER, "inspect", "-f", "{{.State.ExitCode}}", name], 30, env=env)
            assert state.strip() == "0"  # SIGTERM: a clean shutdown inside the container
    finally:
        shutil.rmtree(root, ignore_errors=True)
        timings["total"] = round(time.monotonic() - started, 1)
        print(f"docker image test timings (s): {timings}")
