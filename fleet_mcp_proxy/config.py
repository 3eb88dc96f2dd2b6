"""One validated, frozen configuration, built once from a TOML file, the command line and the environment."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .catalog import validate_alias
from .identifiers import is_env_spec, is_principal

Modality = Literal["tool_use", "computer_use"]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A configuration problem, with the place it was found (file and key) and what is wrong."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.where, self.key, self.problem = where, key, problem
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvironmentConfig(_Frozen):
    """One environment: a local MCP server (spawned per episode, or at a URL) or a Fleet environment."""

    name: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = Field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = Field(default_factory=dict, repr=False)
    fleet: str | None = None
    data: str | None = None
    region: str | None = None
    env_variables: Mapping[str, str] = Field(default_factory=dict, repr=False)
    modality: Modality = "tool_use"
    ttl_seconds: int | None = Field(default=None, gt=0)
    heartbeat_interval: int | None = Field(default=None, ge=30, le=3600)
    startup_timeout: float = Field(default=60.0, gt=0)
    # Fleet's harness gives a step 120 s: 100 s leaves room for the hop, a safe retry and the result.
    call_timeout: float = Field(default=100.0, gt=0)
    warm_pool: int = Field(default=0, ge=0, le=100)  # Fleet only: ready instances kept for new episodes

    @field_validator("name")
    @classmethod
    def _alias(cls, value: str) -> str:
        return validate_alias(value)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(shlex.split(value))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> EnvironmentConfig:
        kinds = [k for k in ("command", "url", "fleet") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of 'command' (a local MCP server over stdio), 'url' (streamable HTTP) "
                "or 'fleet' (a Fleet environment key, ENV_KEY[:VERSION])"
            )
        if self.fleet is not None and not is_env_spec(self.fleet):
            raise ValueError(f"'fleet' must look like ENV_KEY or ENV_KEY:VERSION (got {self.fleet!r})")
        if self.data is not None and not is_env_spec(self.data):
            raise ValueError(f"'data' must look like DATA_KEY or DATA_KEY:VERSION (got {self.data!r})")
        if self.command is not None and not self.command:
            raise ValueError("'command' is empty")
        if self.warm_pool and self.fleet is None:
            raise ValueError("'warm_pool' applies to Fleet environments only (local ones start in milliseconds)")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"'url' must start with http:// or https:// (got {self.url!r})")
        return self

    @property
    def kind(self) -> Literal["command", "url", "fleet"]:
        if self.fleet is not None:
            return "fleet"
        return "command" if self.command is not None else "url"


class FleetSettings(_Frozen):
    """How to reach the Fleet platform; the key comes from FLEET_API_KEY unless set here (as ${VAR})."""

    api_key: str | None = Field(default=None, repr=False)
    base_url: str | None = None
    run_id: str | None = None
    ttl_seconds: int = Field(default=900, gt=0)
    # On by default: a crashed proxy's instances stop within two intervals instead of living out their TTL.
    heartbeat_interval: int | None = Field(default=30, ge=30, le=3600)
    provision_timeout: float = Field(default=600.0, gt=0)
    request_timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    retry_backoff: float = Field(default=0.5, gt=0, le=60)  # first transport retry wait; doubles, jittered
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)  # retries in flight <= ratio x provisions
    retry_budget_min: int = Field(default=3, ge=0)  # ... or this many, whichever is more
    breaker_failures: int = Field(default=5, ge=1)  # consecutive failed calls that open the breaker
    breaker_open_seconds: float = Field(default=30.0, gt=0)  # first open interval; doubles per failed probe
    breaker_max_open_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _breaker_order(self) -> FleetSettings:
        if self.breaker_max_open_seconds < self.breaker_open_seconds:
            raise ValueError("breaker_max_open_seconds must be at least breaker_open_seconds")
        return self

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value


class ContextConfig(_Frozen):
    """Large outputs and the context tools (contract §3.2 to §3.4)."""

    enabled: Literal["auto", "always", "never"] = "auto"  # auto: for episodes bound to a task
    budget_chars: int = Field(default=16_000, gt=0)
    max_outputs: int = Field(default=64, gt=0)
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    page_size: int = Field(default=4_000, gt=0)
    tools: tuple[str, ...] = ("view_tool_output", "search_tool_output", "search_history")


class TelemetryConfig(_Frozen):
    """logfire spans and metrics: off unless enabled here, by `--telemetry`, or by LOGFIRE_TOKEN being set."""

    enabled: bool | None = None  # None: on exactly when LOGFIRE_TOKEN is set; false: off even then
    service_name: str = "fleet-mcp-proxy"
    environment: str | None = None  # e.g. "prod" or "staging", shown in Logfire
    console: bool = False  # also print spans to stderr (never stdout: in stdio mode that is the protocol)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreConfig(_Frozen):
    """`[store]`: the episode store replicas share. Unset, episodes go to the SQLite file (`proxy.store_path`)."""

    url: str | None = Field(default=None, repr=False)  # postgresql://USER:PASSWORD@HOST:PORT/DB; holds a secret

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        # The message never quotes the URL: it may hold a password.
        if value is not None and not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("must be a postgresql:// URL (a SQLite file is set with store_path under [proxy])")
        return value


class ClusterConfig(_Frozen):
    """`[cluster]`: how replicas sharing a PostgreSQL store reach each other (unused on the SQLite default)."""

    # Where other replicas reach this one, e.g. "http://10.0.0.5:8000"; default: the HTTP listen address.
    advertise: str | None = None
    forward_connect_timeout: float = Field(default=5.0, gt=0)  # reaching the owner replica
    # Until the owner's response starts: a JSON answer to a slow tool call starts only when the call ends.
    forward_first_byte_timeout: float = Field(default=600.0, gt=0)
    # On SIGTERM: how long readiness fails before live episodes are handed over, so the load balancer's health
    # check (deploy/haproxy.cfg: every 0.5 s, down after 2 failures) stops sending new episodes first.
    drain_delay: float = Field(default=2.0, ge=0, le=60)
    # One replica at a time (under a lease in the store) releases the run's Fleet instances no unfinished
    # episode names, this often (seconds).
    sweep_interval: float = Field(default=300.0, ge=1)
    # Younger instances are never swept when their maker is gone or unknown (it may not have recorded them yet);
    # default: [fleet] provision_timeout + the longest startup_timeout + 60 s.
    sweep_min_age: float | None = Field(default=None, gt=0)

    @field_validator("advertise")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"must be an http(s) URL of this replica, e.g. http://10.0.0.5:8000 (got {value!r})")
        try:
            parts.port  # noqa: B018  (raises on a port out of range)
        except ValueError:
            raise ValueError(f"has a bad port: {value!r}") from None
        return value.rstrip("/")


TOKEN_ENV = "FLEET_MCP_PROXY_TOKEN"  # one client token from the environment, for principal "default"


class AuthConfig(_Frozen):
    """Inbound bearer tokens for the HTTP front, principal name -> token. No tokens: auth is off."""

    tokens: Mapping[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("tokens")
    @classmethod
    def _strong(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        # Messages never quote a token: config errors are printed and logged.
        for principal, token in value.items():
            if not is_principal(principal):
                raise ValueError(f"principal {principal!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
            if len(token) < 16 or any(not 0x21 <= ord(c) <= 0x7E for c in token):
                raise ValueError(
                    f"the token of principal '{principal}' must be at least 16 visible ASCII characters "
                    "without spaces (e.g. `openssl rand -hex 32`)"
                )
        if len(set(value.values())) != len(value):
            raise ValueError("two principals share one token: give each its own")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


class ProxyConfig(_Frozen):
    """Everything the proxy needs to run; built once by `load_config`."""

    environments: tuple[EnvironmentConfig, ...] = ()
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    context: ContextConfig = Field(default_factory=ContextConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    idle_timeout: float = Field(default=900.0, gt=0)
    default_episode: bool = False
    modality: Modality | None = None
    end_timeout: float = Field(default=30.0, gt=0)
    # The whole of a shutdown (Kubernetes gives 30 s): what does not fit is left pending, instances alive.
    shutdown_grace: float = Field(default=25.0, gt=0)
    finisher: bool = True  # leave a detached finisher for ends still pending at exit
    provision_on_list: bool = False  # start instances on a tools/list answered from the catalog cache
    max_sessions: int = Field(default=10_000, gt=0)
    max_request_body: int = Field(default=1024 * 1024, gt=0)  # MCP requests are small JSON
    fast_lane: bool = True  # forward plain handshake-era tool calls raw (front/lane.py)
    stdio_lane: bool = True  # serve --stdio: own the pipes, forward plain tool calls to stdio environments raw
    catalog_cache: bool = True  # answer tools/list from remembered tool lists before provisioning
    catalog_cache_dir: str | None = None  # default: $XDG_STATE_HOME/fleet-mcp-proxy/catalog
    header_timeout: float = Field(default=10.0, gt=0)  # request line + headers must arrive within this
    body_timeout: float = Field(default=30.0, gt=0)  # a request body must arrive within this after its headers
    limit_concurrency: int | None = Field(default=1000, gt=0)  # connections + requests; beyond: 503
    # An idle kept-alive connection is closed after this. Longer than clients keep theirs (httpx: 5 s), so the
    # client, not the proxy, closes it: a POST sent as the proxy closes the connection fails underneath; and a
    # client slowed down by a storm keeps its connection instead of reconnecting. uvicorn counts idle connections
    # towards `limit_concurrency` (docs/security.md).
    keep_alive_timeout: float = Field(default=60.0, gt=0)
    max_episodes_per_principal: int = Field(default=1000, ge=0)  # 0: unlimited
    max_calls_per_principal: int = Field(default=1000, ge=0)  # tool calls in flight; 0: unlimited
    max_leases_per_principal: int = Field(default=1000, ge=0)  # instances held; 0: unlimited
    auth: AuthConfig = Field(default_factory=AuthConfig)
    store_path: str | None = None  # the episode record; default $XDG_STATE_HOME/fleet-mcp-proxy/...
    store: StoreConfig = Field(default_factory=StoreConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    record_episodes: bool = True
    tasks_file: str | None = None
    task: str | None = None
    submit_tool: Literal["auto", "always", "never"] = "auto"
    max_steps: int | None = Field(default=None, gt=0)  # tool calls per episode, then graded; a task's own wins
    partial_reward: bool = False
    verify_timeout: float = Field(default=120.0, gt=0)  # the whole grading of an episode, every attempt included
    progress_interval: float = Field(default=3.0, ge=0)  # reports while a request waits for provisioning; 0: none
    keepalive_interval: float = Field(default=15.0, ge=0)  # progress beats on a silent tool call with a token; 0: none
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> ProxyConfig:
        seen: set[str] = set()
        for env in self.environments:
            if env.name in seen:
                raise ValueError(f"environment {env.name!r} is defined twice")
            seen.add(env.name)
        if self.store_path is not None and self.store.url is not None:
            raise ValueError("store_path (a SQLite file) and store.url (PostgreSQL) both name the store: keep one")
        return self

    @property
    def store_target(self) -> str | None:
        """The configured store: a postgresql:// URL, a SQLite path, or None for the default file."""
        return self.store.url or self.store_path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: ProxyConfig) -> None:
    """An HTTP bind beyond loopback must name the Host values it answers to (DNS-rebinding defence).

    Raises:
        ConfigError: naming `proxy.allowed_hosts`.
    """
    if not is_loopback(config.host) and not config.allowed_hosts:
        raise ConfigError(
            config.source,
            "proxy.allowed_hosts",
            f"binding {config.host} (not loopback) needs an explicit list of the Host values clients use, "
            'e.g. allowed_hosts = ["proxy.example.com:8000"] under [proxy]',
        )


def parse_env_arg(text: str) -> dict[str, Any]:
    """`NAME=URL` or `NAME=COMMAND` (shell-split), as given to `--env`."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value.strip():
        raise ConfigError("--env", text, "expected NAME=URL or NAME=COMMAND, e.g. tracker=http://127.0.0.1:9000/mcp")
    value = value.strip()
    if re.match(r"^https?://", value):
        return {"name": name, "url": value}
    if value.startswith("fleet:"):
        return {"name": name, "fleet": value.removeprefix("fleet:")}
    return {"name": name, "command": shlex.split(value)}


def _interpolate(value: Any, where: str, key: str, environ: Mapping[str, str]) -> Any:
    """Expand `${VAR}` from the environment so secrets stay out of the file."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in environ:
                raise ConfigError(where, key, f"environment variable {var} is not set")
            return environ[var]

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, where, f"{key}[{i}]", environ) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate(v, where, f"{key}.{k}", environ) for k, v in value.items()}
    return value


def _read_file(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(where, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "", f"not valid TOML ({exc})") from None
    unknown = set(raw) - {"proxy", "env", "fleet", "context", "telemetry", "auth", "store", "cluster"}
    if unknown:
        raise ConfigError(
            where,
            sorted(unknown)[0],
            "unknown section (expected [proxy], [auth], [store], [cluster], [fleet], [context], [telemetry] "
            "and [env.NAME])",
        )
    data: dict[str, Any] = dict(_interpolate(raw.get("proxy", {}), where, "proxy", environ))
    if "fleet" in raw:
        data["fleet"] = _interpolate(raw["fleet"], where, "fleet", environ)
    if "context" in raw:
        data["context"] = raw["context"]
    if "telemetry" in raw:
        data["telemetry"] = raw["telemetry"]
    if "auth" in raw:
        data["auth"] = _interpolate(raw["auth"], where, "auth", environ)
    if "store" in raw:
        data["store"] = _interpolate(raw["store"], where, "store", environ)  # url = "postgresql://...${PGPASSWORD}..."
    if "cluster" in raw:
        data["cluster"] = _interpolate(raw["cluster"], where, "cluster", environ)
    envs = raw.get("env", {})
    if not isinstance(envs, dict):
        raise ConfigError(where, "env", "must be a table of [env.NAME] sections")
    data["environments"] = [
        {"name": name, **_interpolate(body, where, f"env.{name}", environ)} for name, body in envs.items()
    ]
    return data


def _key_of(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into the key a person wrote in the file."""
    if loc and loc[0] in ("fleet", "context", "telemetry", "auth", "store", "cluster"):
        return ".".join(str(p) for p in loc)
    if loc and loc[0] == "environments" and len(loc) > 1 and isinstance(loc[1], int):
        envs = data.get("environments", [])
        name = envs[loc[1]].get("name", loc[1]) if loc[1] < len(envs) else loc[1]
        rest = ".".join(str(p) for p in loc[2:])
        return f"env.{name}" + (f".{rest}" if rest else "")
    return "proxy." + ".".join(str(p) for p in loc) if loc else "proxy"


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    env_args: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    store: str | None = None,
) -> ProxyConfig:
    """Build the config from an optional TOML file, then command-line overrides and ad-hoc `--env` values.

    `store` (`--store`) replaces whichever store the file names: a postgresql:// URL or a SQLite path.

    Raises:
        ConfigError: naming the file (or flag), the key and the problem.
    """
    environ = os.environ if environ is None else environ
    where = str(path) if path is not None else "command line"
    data: dict[str, Any] = _read_file(Path(path), environ) if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if store is not None:
        data.update(store_override(store, data.get("store")))
    adhoc = [parse_env_arg(arg) for arg in env_args]
    data["environments"] = [*data.get("environments", []), *adhoc]
    fleet = dict(data.get("fleet") or {})
    fleet.setdefault("api_key", environ.get("FLEET_API_KEY") or None)
    fleet.setdefault("base_url", environ.get("FLEET_BASE_URL") or None)
    data["fleet"] = fleet
    auth = dict(data.get("auth") or {})
    if environ.get(TOKEN_ENV):
        auth["tokens"] = {"default": environ[TOKEN_ENV], **(auth.get("tokens") or {})}
    data["auth"] = auth
    try:
        config = ProxyConfig.model_validate({**data, "source": where})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(where, _key_of(tuple(err["loc"]), data), err["msg"].removeprefix("Value error, ")) from None
    fleet_envs = [env.name for env in config.environments if env.kind == "fleet"]
    if fleet_envs and not config.fleet.api_key:
        raise ConfigError(
            where,
            "fleet.api_key",
            f"environment '{fleet_envs[0]}' is on Fleet, but no Fleet API key is set: export FLEET_API_KEY "
            '(or set api_key = "${VAR}" under [fleet])',
        )
    check_grading_window(config)
    return config


def store_override(target: str, section: Any = None) -> dict[str, Any]:
    """The config keys `--store TARGET` sets: a postgresql:// URL goes to `store.url`, a path to `store_path`."""
    rest = dict(section) if isinstance(section, Mapping) else {}
    if target.startswith(POSTGRES_SCHEMES):
        return {"store": {**rest, "url": target}, "store_path": None}
    return {"store": {**rest, "url": None}, "store_path": target}


GRADING_MARGIN = 15.0  # seconds, besides verify_timeout, an instance must have left to be graded and released


def check_grading_window(config: ProxyConfig) -> None:
    """Refuse settings under which an abandoned rollout could never be graded before its instance expires.

    Raises:
        ConfigError: naming the TTL key and `proxy.verify_timeout`.
    """
    if not config.fleet.api_key and not any(env.kind == "fleet" for env in config.environments):
        return  # no Fleet instance, no TTL
    need = config.verify_timeout + GRADING_MARGIN
    ttls = [("fleet.ttl_seconds", config.fleet.ttl_seconds)]
    ttls += [(f"env.{env.name}.ttl_seconds", env.ttl_seconds) for env in config.environments if env.ttl_seconds]
    for key, ttl in ttls:
        if ttl is not None and ttl <= need:
            raise ConfigError(
                config.source,
                key,
                f"an instance living {ttl} s can never be graded: grading needs proxy.verify_timeout "
                f"({config.verify_timeout:g} s) plus {GRADING_MARGIN:g} s to release it; raise {key} above "
                f"{need:g} or lower proxy.verify_timeout",
            )
