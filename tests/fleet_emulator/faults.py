"""Seeded fault injection for the control plane. Every knob defaults to off."""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from typing import Any

Latency = float | tuple[float, float]


@dataclass
class Faults:
    """What goes wrong, and how often. Rolls come from one `random.Random(seed)`, so a run is repeatable.

    Rate knobs are probabilities in [0, 1], rolled once per eligible request. `latency`, `rate_5xx` and
    `rate_429` apply to every control-plane request (`/v1/...`) whose `"METHOD /path"` matches `match`
    (a regex searched in it; None matches everything). The `create_*` knobs apply to creates that pass
    validation, the limit and de-duplication; the `verifier_*` knobs apply to `/v1/verifiers/execute` calls that
    would run a verifier. Change knobs at runtime with `update(...)`.
    """

    seed: int = 0
    latency: Latency = 0.0  # seconds (real time) before answering, or a (low, high) range
    rate_5xx: float = 0.0
    status_5xx: int = 503
    rate_429: float = 0.0
    retry_after: int | None = 1  # Retry-After header (whole seconds) on a 429; None omits it
    create_health_check_failure_rate: float = 0.0  # no instance is left behind, the request id stays unbound
    create_health_check_status: int = 503
    create_drop_after_commit_rate: float = 0.0  # instance made and request id bound, then the socket is cut
    provision_delay: float = 0.0  # clock seconds an instance stays `pending` after its create
    create_answer_delay: float = 0.0  # real seconds a create's answer waits after the instance was made
    create_no_root_count: int = 0  # how many of the next create answers carry an empty `urls.root` (counts down)
    delete_latency: float = 0.0  # real seconds a slow delete takes before it answers
    delete_latency_count: int = 0  # how many of the next deletes are slow (counts down)
    verifier_failure_rate: float = 0.0  # a verifier execution answers success=false without running (verifiers.py)
    verifier_judge_error_rate: float = 0.0  # a successful execution gets a `JUDGE ERROR:` line and a fabricated 0
    match: str | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        self.rng = random.Random(self.seed)

    def _validate(self) -> None:
        rates = ("rate_5xx", "rate_429", "create_health_check_failure_rate", "create_drop_after_commit_rate")
        for name in (*rates, "verifier_failure_rate", "verifier_judge_error_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if isinstance(self.latency, list):  # from JSON
            self.latency = (float(self.latency[0]), float(self.latency[1]))
        low, high = self.latency if isinstance(self.latency, tuple) else (self.latency, self.latency)
        if not 0.0 <= low <= high:
            raise ValueError(f"latency must be seconds >= 0 or a (low, high) range, not {self.latency!r}")
        if min(self.create_answer_delay, self.create_no_root_count) < 0:
            raise ValueError("create_answer_delay and create_no_root_count must be >= 0")
        if self.provision_delay < 0 or self.delete_latency < 0 or self.delete_latency_count < 0:
            raise ValueError("provision_delay, delete_latency and delete_latency_count must be >= 0")
        if not (500 <= self.status_5xx <= 599 and 500 <= self.create_health_check_status <= 599):
            raise ValueError("5xx statuses must be between 500 and 599")
        if self.match is not None:
            re.compile(self.match)

    # -- rolls ---------------------------------------------------------------------------------------
    def roll(self, rate: float) -> bool:
        """True with probability `rate`; a rate of 0 consumes no randomness."""
        return rate > 0 and self.rng.random() < rate

    def delay(self) -> float:
        if isinstance(self.latency, tuple):
            low, high = self.latency
            return low if low == high else self.rng.uniform(low, high)
        return self.latency

    def slow_delete(self) -> float:
        """Seconds this delete waits: `delete_latency` for the next `delete_latency_count` deletes, else 0."""
        if self.delete_latency_count <= 0:
            return 0.0
        self.delete_latency_count -= 1
        return self.delete_latency

    def applies_to(self, method: str, path: str) -> bool:
        return self.match is None or re.search(self.match, f"{method} {path}") is not None

    # -- runtime changes -----------------------------------------------------------------------------
    def update(self, **changes: Any) -> None:
        """Change some knobs in place; a new `seed` restarts the random sequence."""
        names = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}")
        candidate = dataclasses.replace(self, **changes)  # validates before anything changes
        for name in names:
            setattr(self, name, getattr(candidate, name))
        if "seed" in changes:
            self.rng = random.Random(self.seed)

    def replace_with(self, other: Faults) -> None:
        """Take every knob and the random state of `other` (keeps this object's identity)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(other, f.name))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
