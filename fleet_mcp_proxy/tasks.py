"""Task records in the Fleet export format, and loading them from a file (pure apart from reading it).

An entry is one JSON object. Each field is read under its canonical name or one of the aliases
found in the wild, so a file written by `fleet.Task.model_dump()`, by an export script or by hand
loads the same way:

======================  ==========================================================
field                   accepted keys, first match wins (aliases must agree)
======================  ==========================================================
``task_key``            ``task_key``, ``key``, ``id``
``prompt``              ``prompt``
``env_key``             ``env_key``, ``env_id``
``version``             ``version``, ``env_version``
``data_key``            ``data_key``, ``data_id``
``data_version``        ``data_version``
``modality``            ``modality``, ``task_modality`` (default ``tool_use``)
``verifier_code``       ``verifier_code``, else ``verifier_func``, else ``verifier.code``
``max_steps``           ``max_steps`` (a whole number >= 1; overrides the proxy's)
======================  ==========================================================

Every other top-level field, and the entry's own ``metadata`` object, end up in `Task.metadata`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .catalog import Modality
from .identifiers import is_env_spec, is_version

SUBMIT_TOOL_NAME = "submit_final_answer"
SubmitRule = Literal["auto", "always", "never"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "task_key": ("task_key", "key", "id"),
    "prompt": ("prompt",),
    "env_key": ("env_key", "env_id"),
    "version": ("version", "env_version"),
    "data_key": ("data_key", "data_id"),
    "data_version": ("data_version",),
    "modality": ("modality", "task_modality"),
}
_REQUIRED = ("task_key", "prompt", "env_key")
_VERIFIER_KEYS = ("verifier_code", "verifier_func")
_MODALITIES: tuple[str, ...] = get_args(Modality)


class TaskFileError(Exception):
    """A task file that cannot be loaded: the file, the entry (and key) at fault, and what is wrong."""

    def __init__(self, path: str | Path, where: str, problem: str, *, key: str | None = None) -> None:
        self.path, self.where, self.problem, self.key = str(path), where, problem, key
        place = f"{where}: key {key!r}" if key else where
        super().__init__(f"{self.path}: {place}: {problem}" if place else f"{self.path}: {problem}")


class TaskEntryError(ValueError):
    """One entry that is not a valid task; `key` names the field at fault as the entry spells it."""

    def __init__(self, key: str | None, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"key {key!r}: {problem}" if key else problem)


class Task(BaseModel):
    """One task: what the agent is asked, which environment it runs in and how the result is verified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_key: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    env_key: str = Field(min_length=1)
    version: str | None = None
    data_key: str | None = None
    data_version: str | None = None
    verifier_code: str | None = None
    modality: Modality = "tool_use"
    max_steps: int | None = Field(default=None, gt=0)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_export(cls, entry: Mapping[str, Any]) -> Task:
        """Build a task from one exported entry (aliases as in the module docstring).

        Raises `TaskEntryError` naming the key at fault.
        """
        fields: dict[str, Any] = {}
        used: set[str] = set()
        for name, aliases in _ALIASES.items():
            key, value = _pick(entry, aliases)
            used.update(a for a in aliases if a in entry)
            if key is None:
                if name in _REQUIRED:
                    also = f" (also accepted: {', '.join(repr(a) for a in aliases[1:])})" if aliases[1:] else ""
                    raise TaskEntryError(aliases[0], f"missing{also}")
                continue
            fields[name] = _check_value(name, key, value)
        fields["verifier_code"], verifier_keys = _verifier(entry)
        used.update(verifier_keys)
        fields["max_steps"] = _max_steps(entry)
        used.add("max_steps")
        fields["metadata"] = _metadata(entry, used)
        return cls(**fields)


def _pick(entry: Mapping[str, Any], aliases: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first alias present with a non-null value, and that value; every other one must agree."""
    present = [(a, entry[a]) for a in aliases if entry.get(a) is not None]
    if not present:
        return None, None
    first_key, first = present[0]
    for key, value in present[1:]:
        if value != first:
            raise TaskEntryError(key, f"disagrees with {first_key!r} ({value!r} vs {first!r})")
    return first_key, first


def _check_value(name: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TaskEntryError(key, f"must be a string, not {type(value).__name__}")
    if name in _REQUIRED and not value.strip():
        raise TaskEntryError(key, "must not be empty")
    if name == "modality" and value not in _MODALITIES:
        raise TaskEntryError(key, f"must be one of {', '.join(map(repr, _MODALITIES))}, not {value!r}")
    # These reach Fleet's API (the SDK splits and interpolates them): refuse anything but plain names.
    if name in ("env_key", "data_key") and not is_env_spec(value):
        raise TaskEntryError(key, f"must look like KEY or KEY:VERSION (letters, digits, '.', '_', '-'), not {value!r}")
    if name in ("version", "data_version") and not is_version(value):
        raise TaskEntryError(key, f"must be 1 to 128 letters, digits, '.', '_' or '-', not {value!r}")
    return value


def _verifier(entry: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """The verifier code and the keys it consumed: `verifier_code`, else `verifier_func`, else `verifier.code`."""
    consumed = [k for k in _VERIFIER_KEYS if k in entry]
    for key in _VERIFIER_KEYS:
        code = entry.get(key)
        if code is None:
            continue
        if not isinstance(code, str):
            raise TaskEntryError(key, f"must be a string of Python code, not {type(code).__name__}")
        return code, consumed
    nested = entry.get("verifier")
    if isinstance(nested, Mapping) and nested.get("code") is not None:
        if not isinstance(nested["code"], str):
            raise TaskEntryError(
                "verifier.code", f"must be a string of Python code, not {type(nested['code']).__name__}"
            )
        return nested["code"], [*consumed, "verifier"]
    return None, consumed


def _max_steps(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("max_steps")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TaskEntryError("max_steps", f"must be a whole number of tool calls, at least 1, not {value!r}")
    return value


def _metadata(entry: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    own = entry.get("metadata")
    if own is not None and not isinstance(own, Mapping):
        raise TaskEntryError("metadata", f"must be an object, not {type(own).__name__}")
    merged: dict[str, Any] = dict(own or {})
    for key, value in entry.items():
        if key in used or key == "metadata":
            continue
        if key in merged and merged[key] != value:
            raise TaskEntryError(key, "also appears in 'metadata' with a different value")
        merged[key] = value
    return merged


# -- files ---------------------------------------------------------------------------------------


def load_tasks(path: str | Path) -> dict[str, Task]:
    """Load a task file, keyed by task_key in file order.

    The file is a JSON array of entries (or an object ``{"tasks": [...]}``, as the Fleet SDK
    accepts) or JSON Lines, one entry per line; blank lines are skipped. Raises `TaskFileError`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(path, "", f"cannot read the file: {exc}") from exc
    tasks: dict[str, Task] = {}
    first_seen: dict[str, str] = {}
    for where, entry in _entries(path, text):
        if not isinstance(entry, Mapping):
            raise TaskFileError(path, where, f"an entry must be a JSON object, not {_json_type(entry)}")
        known = entry.get("task_key") or entry.get("key") or entry.get("id")
        label = f"{where} (task_key {known!r})" if isinstance(known, str) and known else where
        try:
            task = Task.from_export(entry)
        except TaskEntryError as exc:
            raise TaskFileError(path, label, exc.problem, key=exc.key) from exc
        if task.task_key in tasks:
            key = next(a for a in _ALIASES["task_key"] if a in entry)
            problem = f"duplicate task_key {task.task_key!r} (first defined at {first_seen[task.task_key]})"
            raise TaskFileError(path, label, problem, key=key)
        tasks[task.task_key] = task
        first_seen[task.task_key] = where
    if not tasks:
        raise TaskFileError(path, "", "the file holds no tasks")
    return tasks


def _entries(path: str | Path, text: str) -> Iterator[tuple[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _array(path, text)
        return
    if stripped.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("tasks"), list):
            # The Fleet SDK also accepts an object wrapping the array.
            yield from ((f"tasks[{i}]", e) for i, e in enumerate(whole["tasks"]))
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(path, f"line {number}", f"invalid JSON: {exc.msg} (column {exc.colno})") from exc


def _array(path: str | Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}"
        raise TaskFileError(path, where, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    yield from ((f"entry [{i}]", e) for i, e in enumerate(data))


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- derived values ------------------------------------------------------------------------------


def wants_submit_tool(task: Task, rule: SubmitRule = "auto") -> bool:
    """Whether the agent gets the synthetic `submit_final_answer` tool for this task.

    ``auto`` follows the Fleet harness: a tool-use task whose prompt contains the literal text
    ``submit_final_answer``. ``always`` and ``never`` override it.
    """
    if rule == "always":
        return True
    if rule == "never":
        return False
    return task.modality == "tool_use" and SUBMIT_TOOL_NAME in task.prompt


def fleet_spec(task: Task) -> str:
    """The environment as Fleet's `make()` takes it: ``env_key`` or ``env_key:version``."""
    if task.version and ":" not in task.env_key:
        return f"{task.env_key}:{task.version}"
    return task.env_key


def data_spec(task: Task) -> str | None:
    """The data snapshot as Fleet's `make()` takes it: ``data_key[:data_version]``, or None."""
    if task.data_key is None:
        return None
    if task.data_version and ":" not in task.data_key:
        return f"{task.data_key}:{task.data_version}"
    return task.data_key
