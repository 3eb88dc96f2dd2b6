"""The read-model behind `/status`, `/readyz` and the dashboard: plain dicts built from live proxy state.

Pure: the HTTP layer gathers the inputs (episodes, store records, lease clocks, latency samples) and this
module only shapes them. Nothing secret is shown: no command lines, headers, keys, session ids or tool
arguments (they may hold whatever the agent fetched); only names, ids, times, sizes and outcomes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..episode import Episode
from ..providers.base import Instance
from ..provision_latency import ProvisionSample
from ..store import EpisodeRecord, EpisodeSummary
from ..store.records import Lease, OwnedCount, OwnerRecord

CALLS_PER_EPISODE = 20
RECENT_CALLS = 40
RECENT_REWARDS = 20
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StatusInputs:
    version: str
    uptime: float
    principal: str | None  # None: no auth, every episode is visible
    episodes: Sequence[Episode]  # already filtered with `visible`
    records: Mapping[str, EpisodeRecord]  # episode id -> its record, for those the store had
    recent: Sequence[EpisodeSummary]  # newest first, from the store
    latencies: Sequence[ProvisionSample]
    time_left: Callable[[Instance], float | None]
    clock: float  # anyio.current_time(), the clock of `Episode.last_active`
    store: str  # "ok", "disabled" or "unavailable"
    replicas: Sequence[OwnerRecord] = ()  # the store's owner rows: every process serving or finishing on it
    forwarded: int = 0  # requests this replica relayed to the owner of their episode
    lane_served: int = 0  # tool calls the HTTP fast lane answered (the rest took the SDK path)
    wall: float = 0.0  # time.time(), the clock of the owners' leases
    me: str | None = None  # this process's owner id
    owned: Mapping[str, OwnedCount] | None = None  # per owner id, from the store
    adoptions: int = 0  # episodes this replica took over from a replica that died or handed them over
    sweep: SweepFigures | None = None  # the fleet-wide sweep, when this replica runs one
    sweep_lease: Lease | None = None


@dataclass(frozen=True, slots=True)
class SweepFigures:
    interval_s: float
    sweeps: int  # passes this replica ran (while it held the lease)
    released: int  # instances those passes released
    held_elsewhere: int  # ticks at which another replica held the lease


def visible(episodes: Sequence[Episode], principal: str | None) -> list[Episode]:
    """The episodes the caller may see: its own when auth names a principal, else all."""
    return [e for e in episodes if principal is None or e.principal == principal]


def _kind(episode: Episode) -> str:
    # Keys and session ids let a client act as the episode: show only what kind of identity it has.
    return episode.key.split(":", 1)[0]


def _environment(episode: Episode, alias: str, time_left: Callable[[Instance], float | None]) -> JSON:
    env = episode.environments[alias]
    instance = episode.instances.get(alias)
    link = episode.links.get(alias)
    if alias in episode.lost:
        status = "lost"
    elif link is not None:
        status = "ready" if link.alive else "failed"
    elif instance is not None:
        status = "starting"
    else:
        status = "not started"
    return {
        "alias": alias,
        "kind": env.kind,
        "spec": env.fleet if env.fleet is not None else env.kind,  # never a command line or URL headers
        "instance_id": instance.instance_id if instance is not None else None,
        "provider": instance.provider if instance is not None else None,
        "status": status,
        "time_left_s": _round(time_left(instance)) if instance is not None else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _call(episode_id: str, call: Any) -> JSON:
    return {
        "episode_id": episode_id,
        "seq": call.seq,
        "tool": call.tool,
        "is_error": call.is_error,
        "duration_ms": call.duration_ms,
        "result_bytes": call.result_bytes,
        "started_at": call.started_at.isoformat(timespec="milliseconds"),
    }


def _episode(episode: Episode, record: EpisodeRecord | None, inputs: StatusInputs) -> JSON:
    if episode.ended is not None:
        state = "ending"
    elif episode.provisioned and episode.links:
        state = "ready"
    elif episode.instances or episode.inflight:
        state = "provisioning"
    else:
        state = "idle"
    calls = record.calls if record is not None else ()
    return {
        "id": episode.id,
        "principal": episode.principal,
        "kind": _kind(episode),
        "task": episode.task.task_key if episode.task is not None else None,
        "state": state,
        "inflight": episode.inflight,
        "idle_s": _round(max(0.0, inputs.clock - episode.last_active)),
        "started_at": record.started_at.isoformat(timespec="seconds") if record is not None else None,
        "calls": len(calls),
        "submitted": episode.outcome.submission is not None,
        "reward": episode.outcome.reward_json() if episode.task is not None else None,
        "environments": [_environment(episode, alias, inputs.time_left) for alias in episode.environments],
    }


def _recent_calls(records: Mapping[str, EpisodeRecord]) -> list[JSON]:
    calls = [_call(eid, call) for eid, record in records.items() for call in record.calls[-CALLS_PER_EPISODE:]]
    calls.sort(key=lambda c: c["started_at"], reverse=True)
    return calls[:RECENT_CALLS]


def _rewards(inputs: StatusInputs) -> list[JSON]:
    """Scored or finished episodes, newest first: live ones from memory, ended ones from the store."""
    live = {e.id for e in inputs.episodes}
    rows: list[JSON] = []
    for episode in inputs.episodes:
        if episode.task is not None and episode.outcome.reward is not None:
            reward = episode.outcome.reward_json()
            rows.append(
                {
                    "episode_id": episode.id,
                    "task": episode.task.task_key,
                    "status": reward["status"],
                    "reward": reward["reward"],
                    "failure_reason": reward["failure_reason"],
                    "live": True,
                }
            )
    for summary in inputs.recent:
        if summary.episode_id in live or summary.ended_at is None:
            continue
        if inputs.principal is not None and summary.principal != inputs.principal:
            continue
        rows.append(
            {
                "episode_id": summary.episode_id,
                "task": summary.task_key,
                "status": summary.status or ("unscored" if summary.task_key is None else "pending"),
                "reward": summary.reward,
                "failure_reason": None,
                "live": False,
                "calls": summary.call_count,
                "ended": summary.end_reason,
                "state": summary.state,
            }
        )
    return rows[:RECENT_REWARDS]


def _pending_ends(inputs: StatusInputs) -> list[JSON]:
    """Ends not complete (being graded or released, or left for a finisher), among the recent episodes."""
    return [
        {"episode_id": s.episode_id, "task": s.task_key, "state": s.state, "ended": s.end_reason}
        for s in inputs.recent
        if s.state not in ("live", "closed") and (inputs.principal is None or s.principal == inputs.principal)
    ]


def latency_view(samples: Sequence[ProvisionSample]) -> JSON:
    """The raw points for the chart, plus a summary."""
    seconds = [s.seconds for s in samples]
    summary: JSON = {"count": len(seconds), "p50_s": None, "p95_s": None, "max_s": None}
    if seconds:
        summary["p50_s"] = round(statistics.median(seconds), 3)
        summary["max_s"] = round(max(seconds), 3)
        # "inclusive": never beyond the largest sample, however few there are.
        p95 = statistics.quantiles(seconds, n=20, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
        summary["p95_s"] = round(p95, 3)
    points = [
        {"at": round(s.at, 3), "environment": s.environment, "provider": s.provider, "seconds": s.seconds}
        for s in samples
    ]
    return {**summary, "samples": points}


def _address(address: str | None) -> str | None:
    """Shown without any user or password an operator may have put in it."""
    if address is None:
        return None
    parts = urlsplit(address)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _replica(owner: OwnerRecord, inputs: StatusInputs) -> JSON:
    owned = (inputs.owned or {}).get(owner.owner_id)
    return {
        "id": owner.owner_id,
        "this": owner.owner_id == inputs.me,
        "host": owner.host,
        "pid": owner.pid,
        "address": _address(owner.address),
        "lease_left_s": round(owner.lease_until - inputs.wall, 1),  # negative: its lease ran out
        "live_episodes": owned.live if owned is not None else 0,
        "unfinished_episodes": owned.unfinished if owned is not None else 0,
    }


def _sweep(inputs: StatusInputs) -> JSON | None:
    figures, lease = inputs.sweep, inputs.sweep_lease
    if figures is None:
        return None
    held = lease is not None and lease.until > inputs.wall
    return {
        "interval_s": figures.interval_s,
        "sweeps": figures.sweeps,
        "released": figures.released,
        "held_elsewhere": figures.held_elsewhere,
        "lease_holder": lease.holder if lease is not None and held else None,
        "lease_left_s": round(lease.until - inputs.wall, 1) if lease is not None and held else None,
    }


def build_status(inputs: StatusInputs) -> JSON:
    episodes = sorted(inputs.episodes, key=lambda e: e.last_active, reverse=True)
    views = [_episode(e, inputs.records.get(e.id), inputs) for e in episodes]
    pending = _pending_ends(inputs)
    return {
        "version": inputs.version,
        "uptime_s": round(inputs.uptime, 1),
        "principal": inputs.principal,
        "store": inputs.store,
        "totals": {
            "episodes": len(views),
            "instances": sum(1 for v in views for env in v["environments"] if env["instance_id"] is not None),
            "pending_ends": len(pending),
        },
        "pending_ends": pending,
        "episodes": views,
        "recent_calls": _recent_calls(inputs.records),
        "rewards": _rewards(inputs),
        "provisioning": latency_view(inputs.latencies),
        "replicas": [_replica(owner, inputs) for owner in inputs.replicas],
        "forwarded": inputs.forwarded,
        "lane_served": inputs.lane_served,
        "adoptions": inputs.adoptions,
        "sweep": _sweep(inputs),
    }


def readiness(*, started: bool, closing: bool, store: str, fleet: str) -> tuple[bool, JSON]:
    """Ready to take agents: the proxy is up and not shutting down, and the episode store answers if used.

    Fleet itself is not probed here: a platform outage would take every replica out of rotation at once,
    while agents of local environments could still be served (`fleet-mcp-proxy doctor` checks the key).
    """
    checks = {
        "proxy": "starting" if not started else ("shutting down" if closing else "ok"),
        "store": store,
        "fleet": fleet,
    }
    ready = checks["proxy"] == "ok" and store in ("ok", "disabled")
    return ready, {"status": "ready" if ready else "not ready", "checks": checks}
