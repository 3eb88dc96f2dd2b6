"""The identifiers the proxy interpolates into URL paths, keys and log lines: one strict rule each.

Each rule is an allow-list matched in full (`fullmatch`, so a trailing newline never slips through the way
it does past `$`). Nothing here can contain `/`, `%`, `?`, `#`, whitespace or control characters, so no
value that passes can change the path, query or header it is written into.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_VERSION = r"[A-Za-z0-9._-]{1,128}"

ENV_SPEC = re.compile(rf"{_NAME}(?::{_VERSION})?")  # ENV_KEY[:VERSION] (and DATA_KEY[:VERSION])
VERSION = re.compile(_VERSION)
INSTANCE_ID = re.compile(_NAME)
EPISODE_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # also task keys passed with ?task= / Fleet-Task
PRINCIPAL = re.compile(r"[A-Za-z0-9._-]{1,64}")  # no ':': it separates principal and key in episode slots


def is_env_spec(value: object) -> bool:
    return isinstance(value, str) and ENV_SPEC.fullmatch(value) is not None


def is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION.fullmatch(value) is not None


def is_instance_id(value: object) -> bool:
    return isinstance(value, str) and INSTANCE_ID.fullmatch(value) is not None


def is_episode_key(value: object) -> bool:
    return isinstance(value, str) and EPISODE_KEY.fullmatch(value) is not None


def is_principal(value: object) -> bool:
    return isinstance(value, str) and PRINCIPAL.fullmatch(value) is not None


def is_instance_url(value: object) -> bool:
    """An absolute http(s) URL with a host, no credentials and no whitespace or control characters.

    Fleet's instance URLs are used as given (never rewritten, never followed through redirects); this only
    refuses values that are not URLs at all, or that smuggle characters into the request line.
    """
    if not isinstance(value, str) or not value or len(value) > 2048:
        return False
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.username is None
