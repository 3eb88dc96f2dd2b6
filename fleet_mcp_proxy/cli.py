"""Command line: argv -> config -> serve over stdio or HTTP."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import warnings
from collections.abc import Sequence

import anyio
from mcp.shared.exceptions import MCPDeprecationWarning

from . import __version__, episodes_cli, finish_cli, ops_cli, telemetry
from .config import TOKEN_ENV, ConfigError, EnvironmentConfig, ProxyConfig, check_exposure, is_loopback, load_config
from .demo import DEMO_TASKS
from .front.drain import DrainingServer
from .front.episodes import StateHolder
from .front.http import build_app
from .front.server import build_server
from .front.slowclients import LISTEN_BACKLOG, uvicorn_config
from .front.stdio import serve_stdio
from .providers.local import INSTANCE_DIR
from .tasks import Task, TaskFileError, load_tasks

logger = logging.getLogger("fleet_mcp_proxy")


def demo_environment() -> EnvironmentConfig:
    """The built-in issue tracker, one fresh copy of its database per episode."""
    return EnvironmentConfig(
        name="tracker",
        command=(sys.executable, "-m", "fleet_mcp_proxy.demo", "--data-dir", INSTANCE_DIR),
    )


def environments_of(config: ProxyConfig) -> tuple[EnvironmentConfig, ...]:
    """The configured environments; with none, the demo tracker, unless Fleet tasks are what is served."""
    if config.environments or (config.tasks_file and config.fleet.api_key):
        return config.environments
    return (demo_environment(),)


def tasks_for(config: ProxyConfig) -> dict[str, Task]:
    """The tasks episodes can bind: the given file, or the demo's tasks when the demo is what is served.

    Raises:
        TaskFileError: naming the file, the entry and the problem.
    """
    if config.tasks_file:
        return load_tasks(config.tasks_file)
    return load_tasks(DEMO_TASKS) if not config.environments else {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-mcp-proxy",
        description="One MCP endpoint in front of per-episode environment instances.",
    )
    parser.add_argument("--version", action="version", version=f"fleet-mcp-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve agents over streamable HTTP (default) or stdio")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--http", action="store_true", help="streamable HTTP on /mcp (the default)")
    mode.add_argument("--stdio", action="store_true", help="one client on stdin/stdout; the process is the episode")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (see examples/config.toml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=URL|COMMAND",
        help="an environment: an MCP server URL, or a command spawned per episode (shell-split); repeatable",
    )
    serve.add_argument("--idle-timeout", type=float, help="end an episode after this many idle seconds")
    serve.add_argument(
        "--default-episode",
        action="store_true",
        default=None,
        help="let keyless 2026-07-28 clients share one episode per principal",
    )
    serve.add_argument("--modality", choices=["tool_use", "computer_use"], help="filter tools by modality")
    serve.add_argument("--tasks", metavar="FILE", help="Fleet task export (JSON array or JSONL) episodes can bind")
    serve.add_argument("--task", metavar="KEY", help="bind every episode to this task (stdio: the process's episode)")
    serve.add_argument(
        "--store",
        metavar="URL|PATH",
        help="episode store: a postgresql:// URL shared by replicas, or a SQLite file (default: the config's)",
    )
    serve.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    serve.add_argument(
        "--telemetry",
        action="store_true",
        help="spans and metrics through logfire (to Logfire with LOGFIRE_TOKEN, or OTEL_EXPORTER_OTLP_ENDPOINT); "
        "on by default when LOGFIRE_TOKEN is set",
    )
    episodes_cli.add_commands(commands)
    ops_cli.add_commands(commands)
    finish_cli.add_commands(commands)
    return parser


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: with proto 0, accepted sockets keep Nagle on and each response costs ~40 ms.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def default_advertise(host: str, port: int) -> str:
    """Where other replicas reach this one when `[cluster] advertise` is unset: the listen address, or this
    machine's name when it listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve_http(config: ProxyConfig, tasks: dict[str, Task]) -> None:
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    if config.store.url is not None and config.cluster.advertise is None:
        cluster = config.cluster.model_copy(update={"advertise": default_advertise(config.host, port)})
        config = config.model_copy(update={"cluster": cluster})
    holder = StateHolder()
    server = build_server(config, environments_of(config), holder, front="http", tasks=tasks)
    app = build_app(config, server, holder)
    # A replica on a shared store drains on SIGTERM; the embedded default stops as it always did.
    uv = DrainingServer(
        uvicorn_config(app, config), holder, delay=config.cluster.drain_delay, grace=config.shutdown_grace
    )
    if not is_loopback(config.host) and not config.auth.enabled:
        logger.warning(
            "serving %s without client authentication: anyone who reaches it can spend instances "
            "(set tokens under [auth] or %s)",
            config.host,
            TOKEN_ENV,
        )
    # Clients that read the line below may connect at once: they queue until uvicorn accepts.
    sock.listen(LISTEN_BACKLOG)
    print(
        f"fleet-mcp-proxy {__version__} listening on http://{config.host}:{port}/mcp",
        file=sys.stderr,
        flush=True,
    )
    await uv.serve(sockets=[sock])


async def _serve_stdio(config: ProxyConfig, tasks: dict[str, Task]) -> None:
    holder = StateHolder() if config.stdio_lane else None
    server = build_server(config, environments_of(config), holder, front="stdio", tasks=tasks)
    await serve_stdio(server, holder)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "episodes":
        return episodes_cli.run(args)
    if args.command == "finish":
        return finish_cli.run(args)
    if args.command in ("doctor", "sweep"):
        return ops_cli.run(args, environments_of)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)  # logging/sampling relays use them on purpose
    try:
        config = load_config(
            args.config,
            overrides={
                "host": args.host,
                "port": args.port,
                "idle_timeout": args.idle_timeout,
                "default_episode": args.default_episode,
                "modality": args.modality,
                "tasks_file": args.tasks,
                "task": args.task,
            },
            env_args=tuple(args.env),
            store=args.store,
        )
        tasks = tasks_for(config)
        if config.task is not None and config.task not in tasks:
            raise ConfigError("--task", config.task, "no such task (load it with --tasks FILE)")
        if not args.stdio:
            check_exposure(config)
    except (ConfigError, TaskFileError) as exc:
        print(f"fleet-mcp-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    telemetry.setup(config.telemetry.model_copy(update={"enabled": True}) if args.telemetry else config.telemetry)
    try:
        anyio.run(_serve_stdio if args.stdio else _serve_http, config, tasks, backend_options=_loop_options())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"fleet-mcp-proxy: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown()
    return 0


def _loop_options() -> dict[str, bool]:
    """uvloop when installed (a dependency off Windows): the proxy is event-loop bound."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
