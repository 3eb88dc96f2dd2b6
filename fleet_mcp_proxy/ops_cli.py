"""`fleet-mcp-proxy doctor` (is this deployment set up right?) and `sweep` (release what a dead run left on Fleet).

Both print one line per finding and exit 0 when all is well, else 1 (`sweep`: 2 when it cannot start at all).
The Fleet API key is never printed: every Fleet failure goes through `fleet_errors.classify`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .config import ConfigError, EnvironmentConfig, ProxyConfig, load_config
from .providers.base import HttpTarget, Instance
from .providers.fleet import FleetProvider
from .providers.fleet_errors import classify
from .providers.pool import run_id_for
from .recorder import default_store_path
from .store import StoreError, open_any_store, open_store
from .tasks import TaskFileError, load_tasks

Environments = Callable[[ProxyConfig], Sequence[EnvironmentConfig]]
_KEY_FIX = "export FLEET_API_KEY with a key of your Fleet team (and FLEET_BASE_URL if not the default)"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable here
    detail: str
    fix: str = ""

    def line(self) -> str:
        word = "skip" if self.ok is None else ("ok" if self.ok else "FAIL")
        hint = f"  (fix: {self.fix})" if self.ok is False and self.fix else ""
        return f"{word:<4}  {self.name:<20} {self.detail}{hint}"


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = subparsers.add_parser("doctor", help="check the config, the environments and the Fleet key")
    doctor.add_argument("--config", metavar="FILE", help="TOML config file (as for serve)")
    doctor.add_argument("--env", action="append", default=[], metavar="NAME=URL|COMMAND", help="as for serve")
    doctor.add_argument("--tasks", metavar="FILE", help="a Fleet task export to check (as for serve)")
    doctor.add_argument("--timeout", type=float, default=15.0, help="seconds per network check (default 15)")
    sweep = subparsers.add_parser(
        "sweep",
        help="release orphaned Fleet instances of a run",
        description="Release the live Fleet instances tagged with a run_id. Run it only when no proxy of that "
        "run is serving: it would take that proxy's instances away.",
    )
    sweep.add_argument("--config", metavar="FILE", help="TOML config file (its [fleet] section and port)")
    sweep.add_argument("--port", type=int, help="the deployment's port, when the run id is derived from it")
    sweep.add_argument("--run-id", help="the run to sweep (default: this deployment's, as `serve` would tag it)")
    sweep.add_argument("--dry-run", action="store_true", help="list what would be released; release nothing")
    sweep.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole sweep (default 60)")


def run(args: argparse.Namespace, environments: Environments) -> int:
    """Dispatch `doctor` / `sweep`; `environments` is what `serve` would provision for a config."""
    if args.command == "doctor":
        return anyio.run(_doctor, args, environments)
    return anyio.run(_sweep, args)


# -- doctor ----------------------------------------------------------------------------------------------------------
async def _doctor(args: argparse.Namespace, environments: Environments) -> int:
    try:
        config = load_config(args.config, overrides={"tasks_file": args.tasks}, env_args=tuple(args.env))
    except ConfigError as exc:
        _print(Check("config", False, str(exc), "correct that key (examples/config.toml documents every key)"))
        return 1
    envs = tuple(environments(config))
    results = [Check("config", True, f"{config.source}: {len(envs)} environment(s)")]
    _print(results[0])
    fleet = _fleet_client(config, args.timeout)
    try:
        checks: list[Callable[[], Awaitable[Check]]] = [lambda: _tasks(config), lambda: _store(config)]
        checks.append(lambda: _fleet_key(config, fleet, args.timeout))
        checks += [_env_check(env, fleet, args.timeout) for env in envs]
        for check in checks:
            result = await check()
            _print(result)
            results.append(result)
    finally:
        if fleet is not None:
            await fleet.aclose()
    failed = sum(1 for r in results if r.ok is False)
    print(f"doctor: {failed} of {len(results)} checks failed" if failed else f"doctor: all {len(results)} checks ok")
    return 1 if failed else 0


def _print(check: Check) -> None:
    print(check.line(), flush=True)


def _fleet_client(config: ProxyConfig, timeout: float) -> FleetProvider | None:
    if not config.fleet.api_key:
        return None
    # No transport retries and short timeouts: a check should answer, not wait out a backoff.
    update = {"run_id": run_id_for(config, "http"), "max_retries": 0, "request_timeout": timeout}
    return FleetProvider(config.fleet.model_copy(update=update))


async def _tasks(config: ProxyConfig) -> Check:
    if not config.tasks_file:
        return Check("tasks", None, "no task file given (--tasks / tasks_file)")
    try:
        tasks = load_tasks(config.tasks_file)
    except TaskFileError as exc:
        return Check("tasks", False, str(exc), "fix the entry named above")
    return Check("tasks", True, f"{config.tasks_file}: {len(tasks)} task(s)")


async def _store(config: ProxyConfig) -> Check:
    if not config.record_episodes:
        return Check("episode store", None, "recording is off (record_episodes = false)")
    if config.store.url is not None:
        try:
            store = await open_any_store(config.store.url, create=False)
            await store.aclose()
        except StoreError as exc:  # names the host and database, never the password
            return Check("episode store", False, str(exc), "check url under [store] (serve creates the tables)")
        return Check("episode store", True, store.path)
    path = Path(config.store_path) if config.store_path else default_store_path()
    fix = f"make {path.parent} writable, or set store_path in [proxy]"
    if await anyio.Path(path).exists():
        try:
            store = await open_store(path, create=False)
            await store.aclose()
        except Exception:
            return Check("episode store", False, f"{path} cannot be opened as an episode database", fix)
        return Check("episode store", True, f"{path}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        return Check("episode store", False, f"{path} cannot be created", fix)
    return Check("episode store", True, f"{path} (created on first serve)")


async def _fleet_key(config: ProxyConfig, fleet: FleetProvider | None, timeout: float) -> Check:
    if fleet is None:
        return Check("fleet key", None, "FLEET_API_KEY is not set (needed only for Fleet environments and tasks)")
    try:
        with anyio.fail_after(timeout + 5):
            account = await fleet.account()
    except Exception as exc:
        return Check("fleet key", False, classify(exc, "").message, _KEY_FIX)
    team = getattr(account, "team_name", None) or "?"
    used, limit = getattr(account, "instance_count", "?"), getattr(account, "instance_limit", "?")
    return Check("fleet key", True, f"accepted (team {team}; {used} of {limit} instances in use)")


def _env_check(env: EnvironmentConfig, fleet: FleetProvider | None, timeout: float) -> Callable[[], Awaitable[Check]]:
    name = f"env {env.name}"

    async def check() -> Check:
        if env.kind == "command":
            assert env.command is not None
            return _command(name, env)
        if env.kind == "url":
            assert env.url is not None
            return await _url(name, env.url, dict(env.headers), timeout)
        assert env.fleet is not None
        if fleet is None:
            return Check(name, False, f"Fleet environment '{env.fleet}' needs a Fleet API key", _KEY_FIX)
        env_key = env.fleet.partition(":")[0]
        try:
            with anyio.fail_after(timeout + 5):
                await fleet.environment(env_key)
        except Exception as exc:
            return Check(name, False, classify(exc, env_key).message, f"check 'fleet' in [env.{env.name}]")
        return Check(name, True, f"Fleet has environment '{env_key}'")

    return check


def _command(name: str, env: EnvironmentConfig) -> Check:
    assert env.command is not None
    program = env.command[0]
    if program in ("python", "python3"):  # served with the proxy's own interpreter
        program = sys.executable
    found = shutil.which(program)
    if found is None:
        where = "is not an executable file" if os.sep in program else "is not on PATH"
        return Check(
            name, False, f"command '{program}' {where}", f"install it or give its full path in [env.{env.name}]"
        )
    return Check(name, True, f"command {found}")


async def _url(name: str, url: str, headers: dict[str, str], timeout: float) -> Check:
    fix = "start that MCP server, or correct its url / headers"
    try:
        with anyio.fail_after(timeout):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
                Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client,
            ):
                tools = (await client.list_tools()).tools
    except TimeoutError:
        return Check(name, False, f"{url} did not answer within {timeout:g} s", fix)
    except Exception:  # refused, not HTTP, not MCP: the operator needs the URL and what to do
        return Check(name, False, f"no MCP server answered at {url}", fix)
    return Check(name, True, f"{url}: an MCP server with {len(tools)} tools")


# -- sweep -----------------------------------------------------------------------------------------------------------
async def _sweep(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides={"port": args.port})
    except ConfigError as exc:
        print(f"fleet-mcp-proxy sweep: configuration error: {exc}", file=sys.stderr)
        return 2
    if not config.fleet.api_key:
        print(f"fleet-mcp-proxy sweep: no Fleet API key: {_KEY_FIX}", file=sys.stderr)
        return 2
    run_id = args.run_id or config.fleet.run_id or await _stored_run_id(config) or run_id_for(config, "http")
    fleet = FleetProvider(config.fleet.model_copy(update={"run_id": run_id}))
    try:
        with anyio.fail_after(args.timeout):
            return await _release_orphans(fleet, run_id, dry_run=args.dry_run)
    except TimeoutError:
        print(f"sweep: did not finish within {args.timeout:g} s; run it again", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"sweep: {classify(exc, '').message}", file=sys.stderr)
        return 1
    finally:
        await fleet.aclose()


async def _stored_run_id(config: ProxyConfig) -> str | None:
    """The run id every start on this deployment's episode store reuses (none when there is no store yet)."""
    target = config.store.url or (Path(config.store_path) if config.store_path else default_store_path())
    try:
        async with await open_any_store(target, create=False) as store:
            return await store.meta("run_id", None)
    except Exception:  # no store, or not one of ours: the derived default applies
        return None


async def _release_orphans(fleet: FleetProvider, run_id: str, *, dry_run: bool) -> int:
    orphans = await fleet.orphans()
    if not orphans:
        print(f"sweep: no live Fleet instances carry run_id {run_id}")
        return 0
    if dry_run:
        for instance_id in orphans:
            print(f"would release {instance_id}")
        print(f"sweep: {len(orphans)} live instance(s) carry run_id {run_id}; nothing released (--dry-run)")
        return 0
    failed: list[str] = []

    async def release(instance_id: str) -> None:
        try:
            await fleet.delete(Instance("orphan", instance_id, "fleet", HttpTarget("")))
        except Exception as exc:
            failed.append(instance_id)
            print(f"FAILED {instance_id}: {classify(exc, '').message}")
        else:
            print(f"released {instance_id}")

    limiter = anyio.CapacityLimiter(8)

    async def bounded(instance_id: str) -> None:
        async with limiter:
            await release(instance_id)

    async with anyio.create_task_group() as tg:
        for instance_id in orphans:
            tg.start_soon(bounded, instance_id)
    print(f"sweep: released {len(orphans) - len(failed)} of {len(orphans)} instance(s) of run {run_id}")
    return 1 if failed else 0
