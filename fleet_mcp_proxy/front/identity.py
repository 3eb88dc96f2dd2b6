"""Which episode a request belongs to: pure rules over what the request carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mcp import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from ..identifiers import is_episode_key

EPISODE_HEADER = "fleet-episode"
EPISODE_QUERY = "episode"
TASK_HEADER = "fleet-task"
TASK_QUERY = "task"

KEYLESS_MODERN = (
    "This proxy gives every agent episode its own environments, so a 2026-07-28 request must name its "
    "episode: add ?episode=KEY to the endpoint URL or send the header 'Fleet-Episode: KEY' "
    "(any unique string of letters, digits, '.', '_', ':' or '-'), or connect with the 2025-11-25 "
    "initialize handshake, where the session is the episode."
)


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    """What the front knows about a request before it picks an episode."""

    principal: str
    episode_key: str | None
    session_id: str | None
    modern: bool


def _key(query: Mapping[str, str], headers: Mapping[str, str], name: str, header: str, label: str) -> str | None:
    from_query = query.get(name)
    from_header = headers.get(header)
    if from_query is not None and from_header is not None and from_query != from_header:
        raise MCPError(INVALID_PARAMS, f"The {name} key in the URL and the {label} header differ.")
    key = from_query if from_query is not None else from_header
    if key is not None and not is_episode_key(key):  # in full: `$` would let a trailing newline through
        raise MCPError(INVALID_PARAMS, f"The {name} key must be 1 to 128 letters, digits, '.', '_', ':' or '-'.")
    return key


def episode_key(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The explicit episode key, from `?episode=KEY` or the `Fleet-Episode` header.

    Raises:
        MCPError: the key is malformed, or the two places disagree.
    """
    return _key(query, headers, EPISODE_QUERY, EPISODE_HEADER, "Fleet-Episode")


def task_key(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The task to bind, from `?task=KEY` or the `Fleet-Task` header.

    Raises:
        MCPError: the key is malformed, or the two places disagree.
    """
    return _key(query, headers, TASK_QUERY, TASK_HEADER, "Fleet-Task")


def episode_slot(identity: RequestIdentity, *, default_episode: bool) -> str:
    """The registry key of the episode this request belongs to.

    Raises:
        MCPError: a 2026-07-28 request without a key while no default episode is configured.
    """
    if identity.episode_key is not None:
        return f"key:{identity.principal}:{identity.episode_key}"
    if identity.session_id is not None and not identity.modern:
        return f"session:{identity.session_id}"
    if default_episode:
        return f"default:{identity.principal}"
    raise MCPError(INVALID_REQUEST, KEYLESS_MODERN)
