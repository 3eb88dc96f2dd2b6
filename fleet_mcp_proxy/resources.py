"""The proxy's own `fleet://` resources: reward, verifier output, tool errors, submission, task, instances.

They always describe the caller's own episode ("current"), so no episode can read another's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mcp import MCPError
from mcp_types import INVALID_PARAMS

from .synthetic.context import OUTPUT_URI_PREFIX, read_output_resource

if TYPE_CHECKING:
    from .episode import Episode

SCHEME = "fleet://"
EPISODE_PREFIX = "fleet://episode/current/"
INSTANCE_PREFIX = "fleet://instances/"
_BODIES = ("reward", "verifier", "tool_errors", "submission", "task")
_DESCRIPTIONS = {
    "reward": "This episode's reward: pending until verified; null with a failure_reason when unknown.",
    "verifier": "The verifier's stdout, error and attempts for this episode.",
    "tool_errors": "Tool calls of this episode that returned errors.",
    "submission": "The answer submitted with submit_final_answer, if any.",
    "task": "The task this episode is bound to.",
}


def is_proxy_uri(uri: str) -> bool:
    return uri.lower().startswith(SCHEME)


def list_resources(episode: Episode) -> list[dict[str, Any]]:
    """Listed only for an episode bound to a task: a plain proxy stays transparent (they remain readable)."""
    if episode.task is None:
        return []
    names = list(_BODIES)
    listed = [
        {
            "uri": EPISODE_PREFIX + name,
            "name": f"episode-{name}",
            "description": _DESCRIPTIONS[name],
            "mimeType": "application/json",
        }
        for name in names
    ]
    listed += [
        {
            "uri": INSTANCE_PREFIX + alias,
            "name": f"instance-{alias}",
            "description": f"The instance behind environment '{alias}'.",
            "mimeType": "application/json",
        }
        for alias in sorted(episode.instances)
    ]
    return listed


def _instance_json(episode: Episode, alias: str) -> dict[str, Any]:
    instance = episode.instances.get(alias)
    if instance is None:
        return {"alias": alias, "status": "not_provisioned", "lost": episode.lost.get(alias)}
    link = episode.links.get(alias)
    status = "lost" if alias in episode.lost else ("running" if link is not None and link.alive else "stopped")
    url = getattr(instance.target, "url", None)  # never headers: they carry keys
    return {
        "alias": alias,
        "instance_id": instance.instance_id,
        "provider": instance.provider,
        "status": status,
        "mcp_url": url,
        "lost": episode.lost.get(alias),
    }


def read_resource(episode: Episode, uri: str) -> dict[str, Any]:
    """The `resources/read` result for a `fleet://` URI of this episode."""
    body: dict[str, Any] | None = None
    outcome = episode.outcome
    if uri.startswith(EPISODE_PREFIX):
        name = uri.removeprefix(EPISODE_PREFIX)
        if name == "reward":
            body = outcome.reward_json()
        elif name == "verifier":
            body = outcome.verifier_json()
        elif name == "tool_errors":
            body = outcome.tool_errors_json()
        elif name == "submission":
            body = outcome.submission_json()
        elif name == "task" and episode.task is not None:
            body = {"task_key": episode.task.task_key, "prompt": episode.task.prompt, "env_key": episode.task.env_key}
    elif uri.startswith(INSTANCE_PREFIX) and uri.removeprefix(INSTANCE_PREFIX) in episode.environments:
        body = _instance_json(episode, uri.removeprefix(INSTANCE_PREFIX))
    elif uri.startswith(OUTPUT_URI_PREFIX) and episode.outputs is not None:
        output = read_output_resource(episode.outputs, uri)
        if output is not None:
            return output
    if body is None:
        raise MCPError(INVALID_PARAMS, f"Unknown resource: {uri}")
    text = json.dumps(body, sort_keys=True)
    return {"contents": [{"uri": uri, "mimeType": "application/json", "text": text}]}
