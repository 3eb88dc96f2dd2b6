"""One validated, frozen configuration, built once from a TOML file, the command line and the environment."""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .catalog import validate_alias

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
    call_timeout: float = Field(default=300.0, gt=0)

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
        if self.fleet is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9._-]+)?$", self.fleet):
            raise ValueError(f"'fleet' must look like ENV_KEY or ENV_KEY:VERSION (got {self.fleet!r})")
        if self.command is not None and not self.command:
            raise ValueError("'command' is empty")
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
    heartbeat_interval: int | None = Field(default=None, ge=30, le=3600)
    provision_timeout: float = Field(default=600.0, gt=0)
    request_timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)

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


class ProxyConfig(_Frozen):
    """Everything the proxy needs to run; built once by `load_config`."""

    environments: tuple[EnvironmentConfig, ...] = ()
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    context: ContextConfig = Field(default_factory=ContextConfig)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    idle_timeout: float = Field(default=900.0, gt=0)
    default_episode: bool = False
    modality: Modality | None = None
    end_timeout: float = Field(default=30.0, gt=0)
    max_sessions: int = Field(default=10_000, gt=0)
    max_request_body: int = Field(default=4 * 1024 * 1024, gt=0)
    store_path: str | None = None  # the episode record; default $XDG_STATE_HOME/fleet-mcp-proxy/...
    record_episodes: bool = True
    tasks_file: str | None = None
    task: str | None = None
    submit_tool: Literal["auto", "always", "never"] = "auto"
    partial_reward: bool = False
    verify_timeout: float = Field(default=300.0, gt=0)
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
        return self


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
    unknown = set(raw) - {"proxy", "env", "fleet", "context"}
    if unknown:
        raise ConfigError(
            where, sorted(unknown)[0], "unknown section (expected [proxy], [fleet], [context] and [env.NAME])"
        )
    data: dict[str, Any] = dict(_interpolate(raw.get("proxy", {}), where, "proxy", environ))
    if "fleet" in raw:
        data["fleet"] = _interpolate(raw["fleet"], where, "fleet", environ)
    if "context" in raw:
        data["context"] = raw["context"]
    envs = raw.get("env", {})
    if not isinstance(envs, dict):
        raise ConfigError(where, "env", "must be a table of [env.NAME] sections")
    data["environments"] = [
        {"name": name, **_interpolate(body, where, f"env.{name}", environ)} for name, body in envs.items()
    ]
    return data


def _key_of(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into the key a person wrote in the file."""
    if loc and loc[0] in ("fleet", "context"):
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
) -> ProxyConfig:
    """Build the config from an optional TOML file, then command-line overrides and ad-hoc `--env` values.

    Raises:
        ConfigError: naming the file (or flag), the key and the problem.
    """
    environ = os.environ if environ is None else environ
    where = str(path) if path is not None else "command line"
    data: dict[str, Any] = _read_file(Path(path), environ) if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    adhoc = [parse_env_arg(arg) for arg in env_args]
    data["environments"] = [*data.get("environments", []), *adhoc]
    fleet = dict(data.get("fleet") or {})
    fleet.setdefault("api_key", environ.get("FLEET_API_KEY") or None)
    fleet.setdefault("base_url", environ.get("FLEET_BASE_URL") or None)
    data["fleet"] = fleet
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
    return config
