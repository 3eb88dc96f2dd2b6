"""The emulator's in-memory state and its rules, free of I/O: every method is synchronous and takes `now`.

Rules (the real platform's are not public; these are chosen and documented here):
* An instance is `pending` until `ready_at` (create time + the provisioning delay), then `running`.
* TTL: a live instance with `ttl_seconds` stops (`stopped`, reason `ttl_expired`) once `now >= created_at + ttl`.
  Heartbeats do not extend the TTL.
* Heartbeats: the create counts as the first beat. The deadline is `last_heartbeat + 2 * heartbeat_interval`
  (returned as `deadline_timestamp`); a live instance not beaten by then stops (reason `heartbeat_missed`).
* The instance limit counts live (`pending` + `running`) instances.
* `X-Request-ID` is bound when the instance is inserted; a later create with the same id answers 409.
* Records are never forgotten: deleted, expired and killed instances stay listed with their final status.
  A heartbeat to such an instance answers `success: false`; deleting it again answers 404.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .clock import iso
from .models import DEFAULT_CATALOG, ApiError, EnvSpec, InstanceRecord

DEFAULT_REGIONS = ("local", "us-west-1", "us-east-1", "eu-west-2")


@dataclass(frozen=True)
class CreateSpec:
    """A validated `InstanceRequest`."""

    env_key: str
    version: str
    region: str
    data_key: str | None = None
    data_version: str | None = None
    env_variables: dict[str, Any] | None = None
    image_type: str | None = None
    ttl_seconds: int | None = None
    run_id: str | None = None
    heartbeat_interval: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _not_found(instance_id: str) -> ApiError:
    return ApiError(404, {"error": "instance_not_found", "message": f"Instance '{instance_id}' not found"})


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ApiError(400, f"Invalid request: '{name}' has the wrong type")
    return value


def _positive(body: dict[str, Any], name: str) -> int | None:
    value: int | None = _field(body, name, int)
    if value is not None and value <= 0:
        raise ApiError(400, f"Invalid request: '{name}' must be a positive number of seconds")
    return value


@dataclass
class Traffic:
    """Control-plane requests in flight, and how many of them repeat an `X-Request-ID` already seen (retries)."""

    seen: set[str] = field(default_factory=set)
    inflight: int = 0
    inflight_retries: int = 0
    peak: int = 0
    peak_retries: int = 0

    def begin(self, request_id: str | None) -> bool:
        retry = request_id is not None and request_id in self.seen
        if request_id is not None:
            self.seen.add(request_id)
        self.inflight += 1
        self.inflight_retries += retry
        self.peak = max(self.peak, self.inflight)
        self.peak_retries = max(self.peak_retries, self.inflight_retries)
        return retry

    def end(self, retry: bool) -> None:
        self.inflight -= 1
        self.inflight_retries -= retry

    def to_state(self) -> dict[str, int]:
        return {"inflight": self.inflight, "peak": self.peak, "peak_retries": self.peak_retries}


class EmulatorState:
    """Catalog, instances, request-id bindings and request counts."""

    def __init__(
        self,
        *,
        catalog: Iterable[EnvSpec] = DEFAULT_CATALOG,
        instance_limit: int = 10,
        regions: Iterable[str] = DEFAULT_REGIONS,
        team_id: str = "team_emulator",
        team_name: str = "Fleet Emulator",
        profile_id: str = "profile_emulator",
    ) -> None:
        self.catalog = {spec.env_key: spec for spec in catalog}
        self.instance_limit = instance_limit
        self.regions = tuple(regions)
        self.team_id = team_id
        self.team_name = team_name
        self.profile_id = profile_id
        self.instances: dict[str, InstanceRecord] = {}
        self.request_ids: dict[str, str] = {}
        self.request_counts: Counter[str] = Counter()
        self.traffic = Traffic()
        self._seq = itertools.count(1)

    # -- catalog ---------------------------------------------------------------------------------------
    def environment(self, env_key: str) -> EnvSpec:
        try:
            return self.catalog[env_key]
        except KeyError:
            raise ApiError(400, f"Environment '{env_key}' not found") from None

    # -- create ----------------------------------------------------------------------------------------
    def check_create(self, body: Any) -> CreateSpec:
        """Validate an `InstanceRequest` body (400 with a string detail, shaped for the SDK's mapping)."""
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request: the body must be a JSON object")
        env_key = _field(body, "env_key", str)
        if not env_key:
            raise ApiError(400, "Invalid request: 'env_key' is required")
        env = self.environment(env_key)
        version = _field(body, "env_version", str) or env.default_version
        if version not in env.versions:
            # No word "environment" here: the SDK would read it as FleetEnvironmentNotFoundError.
            raise ApiError(400, f"Version '{version}' not found for '{env_key}'")
        region = _field(body, "region", str) or self.regions[0]
        if region not in self.regions:
            raise ApiError(400, f"Region {region} not supported. Please use {list(self.regions)}")
        image_type = _field(body, "image_type", str)
        if image_type not in (None, "mcp"):
            raise ApiError(400, f"Image type '{image_type}' is not available")
        known = {"env_key", "env_version", "region", "image_type", "data_key", "data_version", "env_variables"}
        known |= {"ttl_seconds", "run_id", "heartbeat_interval"}
        return CreateSpec(
            env_key=env_key,
            version=version,
            region=region,
            data_key=_field(body, "data_key", str),
            data_version=_field(body, "data_version", str),
            env_variables=_field(body, "env_variables", dict),
            image_type=image_type,
            ttl_seconds=_positive(body, "ttl_seconds"),
            run_id=_field(body, "run_id", str),
            heartbeat_interval=_positive(body, "heartbeat_interval"),
            extra={k: v for k, v in body.items() if k not in known},
        )

    def check_duplicate(self, request_id: str | None) -> None:
        """409 `duplicate_request_id` if this X-Request-ID already made an instance."""
        if request_id and (bound := self.request_ids.get(request_id)):
            raise ApiError(
                409,
                {
                    "error": "duplicate_request_id",
                    "instance_id": bound,
                    "message": f"Request '{request_id}' was already used to create instance '{bound}'",
                },
            )

    def check_limit(self) -> None:
        running, limit = self.live_count(), self.instance_limit
        if running >= limit:
            message = f"You have {running} running instances out of a maximum of {limit}"
            detail = {
                "error_type": "instance_limit_exceeded",
                "message": message,
                "running_instances": running,
                "instance_limit": limit,
            }
            raise ApiError(403, detail)

    def commit(self, spec: CreateSpec, request_id: str | None, now: float, provision_delay: float) -> InstanceRecord:
        """Insert the instance and bind its request id (after the duplicate and limit checks)."""
        self.check_duplicate(request_id)
        self.check_limit()
        instance_id = f"inst-{next(self._seq):04d}-{uuid.uuid4().hex[:6]}"
        record = InstanceRecord(
            instance_id=instance_id,
            env_key=spec.env_key,
            version=spec.version,
            status="pending" if provision_delay > 0 else "running",
            created_at=now,
            updated_at=now,
            team_id=self.team_id,
            region=spec.region,
            profile_id=self.profile_id,
            ready_at=now + provision_delay,
            env_variables=spec.env_variables,
            data_key=spec.data_key,
            data_version=spec.data_version,
            image_type=spec.image_type,
            run_id=spec.run_id,
            ttl_seconds=spec.ttl_seconds,
            heartbeat_interval=spec.heartbeat_interval,
            request_id=request_id,
            last_heartbeat=now if spec.heartbeat_interval else None,
            extra=spec.extra,
        )
        self.instances[instance_id] = record
        if request_id:
            self.request_ids[request_id] = instance_id
        return record

    # -- reads -----------------------------------------------------------------------------------------
    def get(self, instance_id: str) -> InstanceRecord:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise _not_found(instance_id) from None

    def select(
        self,
        *,
        status: str | None = None,
        region: str | None = None,
        run_id: str | None = None,
        profile_id: str | None = None,
    ) -> list[InstanceRecord]:
        return [
            r
            for r in self.instances.values()
            if (not status or r.status == status)
            and (not region or r.region == region)
            and (not run_id or r.run_id == run_id)
            and (not profile_id or profile_id in ("self", r.profile_id))
        ]

    def live_count(self) -> int:
        return sum(r.live for r in self.instances.values())

    def account(self) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "team_name": self.team_name,
            "instance_limit": self.instance_limit,
            "instance_count": self.live_count(),
            "profile_id": self.profile_id,
            "profile_name": "emulator",
        }

    # -- changes ---------------------------------------------------------------------------------------
    def _stop(self, record: InstanceRecord, now: float, reason: str, status: str = "stopped") -> None:
        record.status = status
        record.stop_reason = reason
        record.updated_at = now
        if status == "stopped":
            record.terminated_at = now

    def delete(self, instance_id: str, now: float, reason: str = "deleted") -> InstanceRecord:
        record = self.get(instance_id)
        if record.deleted:
            raise _not_found(instance_id)
        if record.live:
            self._stop(record, now, reason)
        elif record.status == "error":
            self._stop(record, now, record.stop_reason or reason)
        record.deleted = True
        return record

    def delete_batch(self, now: float, *, run_id: str | None, profile_id: str | None) -> list[InstanceRecord]:
        """Delete the live instances of a run and/or profile; returns them."""
        if not run_id and not profile_id:
            raise ApiError(400, "Invalid request: give run_id or profile_id")
        chosen = [r for r in self.select(run_id=run_id, profile_id=profile_id) if r.live]
        return [self.delete(r.instance_id, now, "batch_deleted") for r in chosen]

    def heartbeat(self, instance_id: str, now: float) -> dict[str, Any]:
        """A `HeartbeatResponse`. Nulls when the instance has no heartbeat interval."""
        record = self.get(instance_id)
        record.heartbeat_count += 1
        alive = record.live
        if alive and record.heartbeat_interval:
            record.last_heartbeat = now
            record.updated_at = now
        enabled = bool(record.heartbeat_interval)
        return {
            "success": alive,
            "instance_id": instance_id,
            "last_heartbeat": iso(record.last_heartbeat) if enabled and record.last_heartbeat is not None else None,
            "deadline_timestamp": record.heartbeat_deadline if enabled else None,
            "interval_seconds": record.heartbeat_interval if enabled else None,
        }

    def kill(self, instance_id: str, now: float, status: str = "error") -> InstanceRecord:
        if status not in ("error", "stopped"):
            raise ApiError(400, "Invalid request: a killed instance is 'error' or 'stopped'")
        record = self.get(instance_id)
        if record.live:
            self._stop(record, now, "killed", status)
        return record

    def advance(self, now: float) -> list[str]:
        """Apply the clock: pending instances come up, expired ones stop. Returns the ids that stopped."""
        stopped = []
        for record in self.instances.values():
            if not record.live:
                continue
            expires, deadline = record.expires_at, record.heartbeat_deadline
            if expires is not None and now >= expires:
                self._stop(record, expires, "ttl_expired")
            elif deadline is not None and now > deadline:
                self._stop(record, deadline, "heartbeat_missed")
            elif record.status == "pending" and now >= record.ready_at:
                record.status = "running"
                record.updated_at = record.ready_at
                continue
            else:
                continue
            stopped.append(record.instance_id)
        return stopped

    def to_state(self) -> dict[str, Any]:
        return {
            "instance_limit": self.instance_limit,
            "live_count": self.live_count(),
            "instances": [r.to_state() for r in self.instances.values()],
            "request_ids": dict(self.request_ids),
            "request_counts": dict(self.request_counts),
            "traffic": self.traffic.to_state(),
        }
