"""Every outcome of a Fleet SDK call, mapped once: transient, fatal, capacity or bug, with words for people.

Pure: classifies exception objects, performs no I/O. Both the async exception classes (what `AsyncFleet`
raises) and the sync ones (what `fleet.FleetAPIError` exports) are recognised, by class name where the two
trees differ.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import httpx
from fleet._async import exceptions as aexc

from .breaker import FleetUnavailable

_TRANSIENT_MARKERS = (
    "health check",
    "timed out",
    "timeout",
    "temporarily",
    '"retryable": true',
    '"retryable":true',
    "rate limit",
    "too many in-flight",
    "connection",
)


class Kind(enum.Enum):
    TRANSIENT = "transient"  # retry (as a new request)
    FATAL = "fatal"  # fail fast: the same request will fail again
    CAPACITY = "capacity"  # the team is at its instance limit: tell the agent, do not hot-loop
    BUG = "bug"  # the SDK or our code misbehaved: never retry, log loudly


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    message: str  # for the agent and the operator; no secret, no exception text
    unknown_outcome: bool = False  # a create may have happened server-side


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _quoted(text: str) -> str | None:
    match = re.search(r"'([^']+)'", text)
    return match.group(1) if match else None


def classify(exc: BaseException, env_key: str) -> Outcome:
    """Map what a Fleet call raised to what the proxy does about it."""
    if isinstance(exc, FleetUnavailable):  # the breaker refused: no call went out
        return Outcome(Kind.FATAL, str(exc))
    name = _name(exc)
    text = str(exc).lower()
    status = getattr(exc, "status_code", None)
    if name == "FleetAuthenticationError" or status == 401:
        return Outcome(Kind.FATAL, "Fleet rejected the API key (401): check FLEET_API_KEY.")
    if name == "FleetInstanceLimitError":
        running = getattr(exc, "running_instances", None)
        limit = getattr(exc, "instance_limit", None)
        counts = f" ({running} of {limit} running)" if running is not None and limit is not None else ""
        return Outcome(
            Kind.CAPACITY,
            f"The Fleet team has reached its instance limit{counts}; end other episodes or raise the limit.",
        )
    if name == "FleetVersionNotFoundError":
        version = getattr(exc, "version", None) or _quoted(str(exc)) or "?"
        return Outcome(Kind.FATAL, f"Fleet environment '{env_key}' has no version '{version}'.")
    if name == "FleetEnvironmentNotFoundError":
        return Outcome(Kind.FATAL, f"Fleet has no environment '{env_key}' (check the env key).")
    if name == "FleetRegionError":
        return Outcome(Kind.FATAL, f"Fleet does not support the region requested for '{env_key}'.")
    if name in ("FleetPermissionError", "FleetEnvironmentAccessError", "FleetTeamNotFoundError"):
        return Outcome(Kind.FATAL, f"The Fleet API key may not use environment '{env_key}' (403).")
    if name == "FleetConflictError":
        return Outcome(Kind.TRANSIENT, f"Fleet reported a conflicting create for '{env_key}'; retrying.")
    if name == "FleetTimeoutError" or isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Outcome(Kind.TRANSIENT, "Fleet did not answer in time.", unknown_outcome=True)
    if name == "FleetRateLimitError" or status == 429:
        return Outcome(Kind.TRANSIENT, "Fleet is rate limiting requests.")
    if isinstance(exc, aexc.FleetAPIError) or name == "FleetAPIError" or name == "FleetBadRequestError":
        if status is None:
            return Outcome(Kind.TRANSIENT, "The Fleet API could not be reached.", unknown_outcome=True)
        if status >= 500 or any(marker in text for marker in _TRANSIENT_MARKERS):
            return Outcome(Kind.TRANSIENT, f"Fleet answered {status} (temporary).")
        return Outcome(Kind.FATAL, f"Fleet refused the request for '{env_key}' ({status}).")
    if isinstance(exc, httpx.TransportError | OSError):
        return Outcome(Kind.TRANSIENT, "The Fleet API could not be reached.", unknown_outcome=True)
    # The SDK's error handler itself crashes on some bodies (a list `detail`, a non-object JSON body).
    return Outcome(Kind.BUG, f"The Fleet SDK failed unexpectedly while provisioning '{env_key}'.")
