"""Which account an instance lives in, as recorded beside it: only a process that can reach that account may
finish the episode. Two deployments can share one store file (the default path is per user, not per config);
without this, one would grade and "release" the other's instances through its own, wrong, Fleet account.

A Fleet origin names the base URL and a fingerprint of the key (never the key: 12 hex digits of its SHA-256,
like an SSH key's fingerprint). A local origin names the host, where its data directory is.
"""

from __future__ import annotations

import hashlib
import socket

DEFAULT_FLEET_URL = "default"  # the SDK's own base URL: no `base_url` configured


def fleet_origin(base_url: str | None, api_key: str | None) -> str:
    fingerprint = hashlib.sha256((api_key or "").encode()).hexdigest()[:12]
    return f"fleet {base_url or DEFAULT_FLEET_URL} key:{fingerprint}"


def local_origin() -> str:
    return f"local {socket.gethostname()}"
