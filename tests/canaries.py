"""Secrets the suite plants so it can prove they never leak (R11).

`FLEET_KEY` is the Fleet API key of every emulator test; `CLIENT_TOKEN` is a client bearer token. The autouse
fixture in conftest.py fails any test during which either appears in a log record, and test_secrets.py scans
client-visible results, the episode store and a child proxy's stderr for them.
"""

FLEET_KEY = "fleet-canary-key-7f3a-0d94c2e1"
CLIENT_TOKEN = "client-canary-token-5b1e-93ad07f6c2"
CANARIES = (FLEET_KEY, CLIENT_TOKEN)


def leaked(text: str | bytes) -> list[str]:
    """Which canaries appear in `text` (named, never quoted)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [
        name for name, canary in (("FLEET_KEY", FLEET_KEY), ("CLIENT_TOKEN", CLIENT_TOKEN)) if canary.encode() in data
    ]
