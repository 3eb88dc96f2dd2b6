"""Operator commands as a user runs them: `doctor`, `sweep`, and stdio's clean stdout, each a real subprocess.

Fleet is the emulator (the real SDK runs against it); local environments are real commands and MCP servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fleet._async.client import AsyncFleet
from fleet_emulator import Emulator, running_emulator
from helpers import ROOT, kitchen_cmd, kitchen_http, stop_process

from fleet_mcp_proxy.config import check_exposure, load_config
from fleet_mcp_proxy.providers.pool import run_id_for
from fleet_mcp_proxy.store import open_store

KEY = "ops-secret-key-5d1e"
pytestmark = pytest.mark.anyio


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`fleet-mcp-proxy ARGS` in a fresh process, with no Fleet settings but those given."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ.update({"PYTHONPATH": str(ROOT), **(env or {})})
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            [sys.executable, "-m", "fleet_mcp_proxy", *args], env=environ, cwd=ROOT, check=False
        )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def lines_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Check lines by name: {"env tracker": "ok    env tracker ...", ...}."""
    return {line[6:26].strip(): line for line in done.stdout.splitlines() if line[:4].strip() in ("ok", "FAIL", "skip")}


def fleet_env(emu: Emulator, key: str = KEY) -> dict[str, str]:
    return {"FLEET_API_KEY": key, "FLEET_BASE_URL": emu.base_url}


# -- doctor ----------------------------------------------------------------------------------------------------------
async def test_doctor_passes_for_reachable_local_environments(tmp_path: Path) -> None:
    async with kitchen_http("alpha") as url:
        done = await cli(
            "doctor", "--env", f"files={kitchen_cmd('beta')}", "--env", f"alpha={url}",
            env={"XDG_STATE_HOME": str(tmp_path)},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    checks = lines_of(done)
    assert checks["config"].startswith("ok") and "2 environment(s)" in checks["config"]
    assert checks["env files"].startswith("ok") and sys.executable in checks["env files"]
    assert checks["env alpha"].startswith("ok") and "MCP server with" in checks["env alpha"]
    assert checks["fleet key"].startswith("skip")
    assert checks["episode store"].startswith("ok") and str(tmp_path) in checks["episode store"]
    assert done.stdout.rstrip().endswith("checks ok")


async def test_doctor_names_what_is_wrong_and_how_to_fix_it(tmp_path: Path) -> None:
    done = await cli(
        "doctor", "--env", "gone=no-such-mcp-server --stdio", "--env", "down=http://127.0.0.1:9/mcp", "--timeout", "5",
        env={"XDG_STATE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    checks = lines_of(done)
    assert checks["env gone"].startswith("FAIL") and "'no-such-mcp-server' is not on PATH" in checks["env gone"]
    assert "fix: install it or give its full path in [env.gone]" in checks["env gone"]
    assert checks["env down"].startswith("FAIL") and "http://127.0.0.1:9/mcp" in checks["env down"]
    assert "fix:" in checks["env down"] and "Traceback" not in done.stdout + done.stderr
    assert "2 of 6 checks failed" in done.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[proxy]\nport = 'eighty'\n", encoding="utf-8")
    done = await cli("doctor", "--config", str(bad))
    assert done.returncode == 1 and lines_of(done)["config"].startswith("FAIL")
    assert "proxy.port" in done.stdout and str(bad) in done.stdout


async def test_doctor_checks_the_fleet_key_and_environments_without_printing_the_key(tmp_path: Path) -> None:
    async with running_emulator(KEY) as emu:
        args = ("doctor", "--env", "tracker=fleet:tracker", "--env", "nope=fleet:nope", "--timeout", "10")
        done = await cli(*args, env={**fleet_env(emu), "XDG_STATE_HOME": str(tmp_path)})
        checks = lines_of(done)
        assert checks["fleet key"].startswith("ok") and "accepted" in checks["fleet key"], done.stdout
        assert checks["env tracker"].startswith("ok")
        assert checks["env nope"].startswith("FAIL") and "no environment 'nope'" in checks["env nope"]
        assert done.returncode == 1

        wrong = await cli(*args[:3], env={**fleet_env(emu, "not-the-key-9a8b"), "XDG_STATE_HOME": str(tmp_path)})
        assert wrong.returncode == 1
        key_line = lines_of(wrong)["fleet key"]
        assert key_line.startswith("FAIL") and "rejected the API key" in key_line and "FLEET_API_KEY" in key_line
        for output in (done.stdout + done.stderr, wrong.stdout + wrong.stderr):
            assert KEY not in output and "not-the-key-9a8b" not in output


# -- sweep -----------------------------------------------------------------------------------------------------------
async def make(emu: Emulator, run_id: str, count: int) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as http:
        fleet = AsyncFleet(api_key=KEY, base_url=emu.base_url, httpx_client=http)
        return [str((await fleet.make("tracker", run_id=run_id)).instance_id) for _ in range(count)]


def live(emu: Emulator, run_id: str) -> set[str]:
    return {r.instance_id for r in emu.state.select(run_id=run_id) if r.live}


async def test_sweep_lists_then_releases_the_orphans_of_one_run_only() -> None:
    run_id, other = f"sweep-{uuid.uuid4().hex[:8]}", f"keep-{uuid.uuid4().hex[:8]}"
    async with running_emulator(KEY, instance_limit=10) as emu:
        orphans, kept = set(await make(emu, run_id, 2)), set(await make(emu, other, 1))
        dry = await cli("sweep", "--run-id", run_id, "--dry-run", env=fleet_env(emu))
        assert dry.returncode == 0, dry.stderr
        assert {line.split()[-1] for line in dry.stdout.splitlines() if line.startswith("would release")} == orphans
        assert live(emu, run_id) == orphans, "--dry-run releases nothing"

        done = await cli("sweep", "--run-id", run_id, env=fleet_env(emu))
        assert done.returncode == 0, done.stderr
        assert {line.split()[-1] for line in done.stdout.splitlines() if line.startswith("released ")} == orphans
        assert live(emu, run_id) == set() and live(emu, other) == kept
        assert all(emu.state.get(i).stop_reason == "deleted" for i in orphans)
        again = await cli("sweep", "--run-id", run_id, env=fleet_env(emu))
        assert again.returncode == 0 and "no live Fleet instances carry run_id" in again.stdout
        assert KEY not in dry.stdout + done.stdout + again.stdout + done.stderr


async def test_sweep_defaults_to_the_run_id_serve_would_use_and_needs_a_key(tmp_path: Path) -> None:
    # serve keeps its run id in the episode store, so every start on that store (new pid, new port) reuses it.
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    (tmp_path / "state" / "fleet-mcp-proxy").mkdir(parents=True)
    async with await open_store(tmp_path / "state" / "fleet-mcp-proxy" / "episodes.sqlite3") as store:
        kept = await store.meta("run_id", "fmp-kept-run")
    assert kept == "fmp-kept-run"
    fresh = {"XDG_STATE_HOME": str(tmp_path / "empty")}
    port = 18765
    derived = run_id_for(load_config(overrides={"port": port}, environ={}), "http")  # no store yet: host and port
    async with running_emulator(KEY) as emu:
        (orphan,) = await make(emu, kept, 1)
        (other,) = await make(emu, derived, 1)
        dry = await cli("sweep", "--dry-run", env={**fleet_env(emu), **state})
        assert dry.returncode == 0 and f"would release {orphan}" in dry.stdout and kept in dry.stdout
        dry = await cli("sweep", "--port", str(port), "--dry-run", env={**fleet_env(emu), **fresh})
        assert dry.returncode == 0 and f"would release {other}" in dry.stdout and derived in dry.stdout
    nokey = await cli("sweep", "--dry-run")
    assert nokey.returncode == 2 and "FLEET_API_KEY" in nokey.stderr


# -- stdio: stdout carries the protocol and nothing else ------------------------------------------------------------
def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    proc.stdin.flush()


async def _answer(proc: subprocess.Popen[str], request_id: int, seen: list[str]) -> dict[str, Any]:
    """Read stdout until the response to `request_id`, keeping every line read; bounded."""
    assert proc.stdout is not None
    with anyio.fail_after(60):
        while True:
            line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
            if not line:
                raise AssertionError(f"stdout closed before the answer to request {request_id}")
            seen.append(line)
            message = json.loads(line)  # a stray print would fail here
            if message.get("id") == request_id:
                return dict(message)


async def test_stdio_mode_writes_only_protocol_messages_to_stdout(tmp_path: Path) -> None:
    # A task-bound episode at DEBUG level: provisioning, a child server, calls, a submission and its verifier
    # all run, and all their chatter must go to stderr.
    args = [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--stdio", "--log-level", "DEBUG"]
    args += ["--task", "tracker-jpy-reporter"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path)}
    log = tmp_path / "stderr.log"  # a file, not a pipe: DEBUG logs must never block the child
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env
        )
    try:
        assert proc.stdout is not None
        requests: Sequence[tuple[str, dict[str, Any]]] = [
            ("tools/list", {}),
            ("tools/call", {"name": "search_issues", "arguments": {"query": "JPY"}}),
            ("tools/call", {"name": "submit_final_answer", "arguments": {"answer": "someone"}}),
            ("resources/read", {"uri": "fleet://episode/current/reward"}),
        ]
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        seen: list[str] = []
        _send(proc, {"id": 0, "method": "initialize", "params": init})
        assert "result" in await _answer(proc, 0, seen)
        _send(proc, {"method": "notifications/initialized"})
        for i, (method, params) in enumerate(requests, start=1):
            _send(proc, {"id": i, "method": method, "params": params})
            answer = await _answer(proc, i, seen)
            assert "result" in answer and not answer["result"].get("isError"), answer
        assert proc.stdin is not None
        proc.stdin.close()  # EOF ends the episode: release and record, still nothing on stdout
        with anyio.fail_after(60):
            rest = await anyio.to_thread.run_sync(proc.stdout.read, abandon_on_cancel=True)
            await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    finally:
        stop_process(proc)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "episode" in err, "the logs went to stderr"
    assert any("submit_final_answer" in line for line in seen), "the catalog was listed"
    for line in [*seen, *rest.splitlines()]:
        assert json.loads(line)["jsonrpc"] == "2.0", line


# -- the container image's default config -----------------------------------------------------------------------------
def test_the_image_config_passes_the_exposure_check_the_dockerfile_relies_on() -> None:
    # No Docker daemon is assumed here: check what `docker run` would start with, statically.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY docker/config.toml /etc/fleet-mcp-proxy/config.toml" in dockerfile
    assert '"serve", "--config", "/etc/fleet-mcp-proxy/config.toml"' in dockerfile
    assert "USER mcpproxy" in dockerfile and "/healthz" in dockerfile and "EXPOSE 8000" in dockerfile
    config = load_config(ROOT / "docker" / "config.toml", environ={})
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    check_exposure(config)  # a non-loopback bind with an explicit allow-list: serve starts
