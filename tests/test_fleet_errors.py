"""Every Fleet SDK outcome is classified once: transient, fatal, capacity or bug, with words for people."""

from __future__ import annotations

import httpx
import pytest
from fleet._async import exceptions as aexc

from fleet_mcp_proxy.providers.fleet_errors import Kind, classify

CASES = [
    (aexc.FleetAuthenticationError("bad key"), Kind.FATAL, "API key"),
    (aexc.FleetInstanceLimitError("limit", running_instances=5, instance_limit=5), Kind.CAPACITY, "5 of 5"),
    (aexc.FleetEnvironmentNotFoundError("Environment 'nope' not found", env_key="nope"), Kind.FATAL, "no environment"),
    (aexc.FleetVersionNotFoundError("Version 'v9' not found", version="v9"), Kind.FATAL, "'v9'"),
    (aexc.FleetTimeoutError("Request timed out: read"), Kind.TRANSIENT, "in time"),
    (aexc.FleetRateLimitError(), Kind.TRANSIENT, "rate limiting"),
    (aexc.FleetAPIError("Request failed: connect", status_code=None), Kind.TRANSIENT, "reached"),
    (aexc.FleetAPIError("Service Unavailable", status_code=503), Kind.TRANSIENT, "503"),
    (aexc.FleetAPIError("Instance health check failed", status_code=500), Kind.TRANSIENT, "500"),
    (aexc.FleetBadRequestError('{"detail":{"error":"bad_request","retryable":false}}'), Kind.FATAL, "refused"),
    (aexc.FleetPermissionError("does not have permission"), Kind.FATAL, "403"),
    (httpx.ConnectError("refused"), Kind.TRANSIENT, "reached"),
    (AttributeError("'list' object has no attribute 'lower'"), Kind.BUG, "unexpectedly"),
]


@pytest.mark.parametrize(
    ("exc", "kind", "words"), CASES, ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)]
)
def test_sdk_outcomes_map_to_one_kind_and_a_message_for_people(exc: Exception, kind: Kind, words: str) -> None:
    outcome = classify(exc, "tracker")
    assert outcome.kind is kind
    assert words in outcome.message
    assert type(exc).__name__ not in outcome.message


def test_lost_answers_are_marked_as_unknown_outcomes() -> None:
    assert classify(aexc.FleetTimeoutError("Request timed out"), "t").unknown_outcome
    assert classify(aexc.FleetAPIError("Request failed", status_code=None), "t").unknown_outcome
    assert not classify(aexc.FleetAPIError("nope", status_code=400), "t").unknown_outcome


def test_a_sdk_bad_request_mentioning_retryable_true_is_transient() -> None:
    exc = aexc.FleetAPIError('Driver API returned 400: {"detail":{"retryable":true}}', status_code=400)
    assert classify(exc, "t").kind is Kind.TRANSIENT
