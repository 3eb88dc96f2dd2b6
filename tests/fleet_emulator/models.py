"""Records the emulator keeps, and their JSON shapes as the Fleet SDK reads them (`fleet.models`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .clock import iso

LIVE = ("pending", "running")
HEARTBEAT_GRACE = 2.0  # an instance must be heartbeaten within this many intervals of the last beat


class ApiError(Exception):
    """An answer other than 2xx: status code, FastAPI-style `detail` (a string or an object), headers."""

    def __init__(self, status: int, detail: str | dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else detail.get("message", str(detail)))
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class EnvSpec:
    """One catalog entry; every version serves the demo tracker."""

    env_key: str
    name: str
    versions: tuple[str, ...]
    default_version: str
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "env_key": self.env_key,
            "name": self.name,
            "description": self.description,
            "default_version": self.default_version,
            "versions": {v: f"{self.env_key}:{v}" for v in self.versions},
        }


DEFAULT_CATALOG = (
    EnvSpec(
        "tracker",
        "Demo issue tracker",
        ("v1.0.0", "v1.1.0"),
        "v1.1.0",
        "Projects, users, labels, issues and comments over MCP (fleet_mcp_proxy.demo).",
    ),
)


@dataclass
class InstanceRecord:
    """One instance, live or not. Times are epoch seconds on the emulator clock."""

    instance_id: str
    env_key: str
    version: str
    status: str
    created_at: float
    updated_at: float
    team_id: str
    region: str
    profile_id: str
    ready_at: float
    terminated_at: float | None = None
    env_variables: dict[str, Any] | None = None
    data_key: str | None = None
    data_version: str | None = None
    image_type: str | None = None
    run_id: str | None = None
    ttl_seconds: int | None = None
    heartbeat_interval: int | None = None
    heartbeat_region: str | None = None
    request_id: str | None = None
    last_heartbeat: float | None = None
    heartbeat_count: int = 0
    stop_reason: str | None = None  # deleted | ttl_expired | heartbeat_missed | killed | batch_deleted
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # request fields the emulator does not act on

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def expires_at(self) -> float | None:
        return None if self.ttl_seconds is None else self.created_at + self.ttl_seconds

    @property
    def heartbeat_deadline(self) -> float | None:
        if not self.heartbeat_interval or self.last_heartbeat is None:
            return None
        return self.last_heartbeat + HEARTBEAT_GRACE * self.heartbeat_interval

    def to_json(self, base_url: str) -> dict[str, Any]:
        """An `InstanceResponse`: every required field, and `urls` shaped as the SDK and OpenEnv use them."""
        root = f"{base_url}/{self.instance_id}/"
        manager = f"{root}api/v1/env"
        return {
            "instance_id": self.instance_id,
            "env_key": self.env_key,
            "version": self.version,
            "status": self.status,
            "subdomain": self.instance_id,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "terminated_at": None if self.terminated_at is None else iso(self.terminated_at),
            "team_id": self.team_id,
            "region": self.region,
            "env_variables": self.env_variables,
            "data_key": self.data_key,
            "data_version": self.data_version,
            "urls": {
                "root": root,
                "app": [root],
                "api": None,
                "health": f"{manager}/health",
                "api_docs": None,
                "manager": {
                    "api": manager,
                    "docs": f"{manager}/docs",
                    "reset": f"{manager}/reset",
                    "diff": f"{manager}/diff",
                    "snapshot": f"{manager}/snapshot",
                    "execute_verifier_function": f"{manager}/execute_verifier_function",
                    "execute_verifier_function_with_upload": f"{manager}/execute_verifier_function_with_upload",
                },
            },
            "health": {"pending": None, "running": True}.get(self.status, False),
            "run_id": self.run_id,
            "profile_id": self.profile_id,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_region": self.heartbeat_region,
        }

    def to_state(self) -> dict[str, Any]:
        """Everything, for `/_emulator/state`."""
        return {
            "instance_id": self.instance_id,
            "env_key": self.env_key,
            "version": self.version,
            "status": self.status,
            "run_id": self.run_id,
            "env_variables": self.env_variables,
            "data_key": self.data_key,
            "data_version": self.data_version,
            "region": self.region,
            "image_type": self.image_type,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "ready_at": self.ready_at,
            "terminated_at": self.terminated_at,
            "ttl_seconds": self.ttl_seconds,
            "expires_at": self.expires_at,
            "heartbeat_interval": self.heartbeat_interval,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_deadline": self.heartbeat_deadline,
            "heartbeat_count": self.heartbeat_count,
            "stop_reason": self.stop_reason,
            "deleted": self.deleted,
            "extra": self.extra,
        }
