"""Task files: loading and its errors, and the demo tasks scored by the Fleet SDK's local verifier runner.

Each demo task is solved by driving a real tracker server through an in-process MCP client; the
verifier then runs with `fleet.verifiers.local_executor.execute_verifier_local` on seed and current.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import fleet
import pytest
from fleet.verifiers.local_executor import execute_verifier_local
from mcp import Client

from fleet_mcp_proxy.demo import DEMO_TASKS
from fleet_mcp_proxy.demo.db import SEED_FILE, prepare_instance
from fleet_mcp_proxy.demo.server import build_server
from fleet_mcp_proxy.tasks import Task, TaskFileError, data_spec, fleet_spec, load_tasks, wants_submit_tool

MINIMAL = {"task_key": "t1", "prompt": "Do it.", "env_key": "tracker"}


def write(tmp_path: Path, text: str, name: str = "tasks.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- loading -------------------------------------------------------------------------------------


def test_array_with_canonical_keys_and_extra_fields(tmp_path: Path) -> None:
    entry = {**MINIMAL, "version": "v1.2.0", "verifier_code": "def verify(env): return 1",
             "modality": "computer_use", "metadata": {"kind": "x"}, "env_variables": {"A": "1"}}  # fmt: skip
    task = load_tasks(write(tmp_path, json.dumps([entry, {**MINIMAL, "task_key": "t2"}])))["t1"]
    assert task == Task(task_key="t1", prompt="Do it.", env_key="tracker", version="v1.2.0",
                        verifier_code="def verify(env): return 1", modality="computer_use",
                        metadata={"kind": "x", "env_variables": {"A": "1"}})  # fmt: skip
    with pytest.raises(ValueError, match="frozen"):
        task.prompt = "changed"


def test_jsonl_with_export_aliases_and_nested_verifier(tmp_path: Path) -> None:
    lines = [
        {"key": "a", "prompt": "p", "env_id": "fira", "version": "v2", "data_id": "d", "data_version": "v3",
         "task_modality": "tool_use", "verifier": {"code": "def v(env): return 0", "sha256": "ab"}},
        {"id": "b", "prompt": "p", "env_key": "fira", "env_id": "fira", "verifier_func": "def f(env): return 1",
         "verifier": {"code": "ignored"}},
    ]  # fmt: skip
    tasks = load_tasks(write(tmp_path, "\n" + "\n\n".join(json.dumps(e) for e in lines) + "\n", "t.jsonl"))
    assert list(tasks) == ["a", "b"]
    a, b = tasks["a"], tasks["b"]
    assert (a.env_key, a.version, a.data_key, a.data_version) == ("fira", "v2", "d", "v3")
    assert a.verifier_code == "def v(env): return 0" and a.metadata == {}
    assert b.verifier_code == "def f(env): return 1" and b.metadata == {"verifier": {"code": "ignored"}}
    assert (fleet_spec(a), data_spec(a), fleet_spec(b), data_spec(b)) == ("fira:v2", "d:v3", "fira", None)


def test_sdk_wrapper_object_and_verifier_precedence(tmp_path: Path) -> None:
    entry = {**MINIMAL, "verifier_code": "code", "verifier_func": "func", "verifier": {"code": "nested"}}
    task = load_tasks(write(tmp_path, json.dumps({"tasks": [entry]}, indent=2)))["t1"]
    assert task.verifier_code == "code" and task.metadata == {"verifier": {"code": "nested"}}  # unused: kept
    assert task.modality == "tool_use" and task.version is None


def test_specs_keep_a_version_already_in_the_key() -> None:
    task = Task(task_key="k", prompt="p", env_key="fira:v1", version="v9", data_key="d:v1", data_version="v2")
    assert (fleet_spec(task), data_spec(task)) == ("fira:v1", "d:v1")


def jsonl(*entries: object) -> str:
    return "\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries)


NO_PROMPT = {k: v for k, v in MINIMAL.items() if k != "prompt"}
NO_ENV = {k: v for k, v in MINIMAL.items() if k != "env_key"}


@pytest.mark.parametrize(
    ("text", "where", "key", "problem"),
    [
        (json.dumps([MINIMAL, {**NO_PROMPT, "task_key": "b"}]), "entry [1] (task_key 'b')", "prompt", "missing"),
        (
            jsonl(MINIMAL, "", {**NO_ENV, "task_key": "c"}),
            "line 3 (task_key 'c')",
            "env_key",
            "also accepted: 'env_id'",
        ),
        (jsonl(MINIMAL, {**MINIMAL, "prompt": "x"}), "line 2 (task_key 't1')", "task_key", "first defined at line 1"),
        (json.dumps([{**MINIMAL, "task_modality": "gui"}]), "entry [0] (task_key 't1')", "task_modality", "'gui'"),
        (jsonl(MINIMAL, '{"task_key": "b", '), "line 2", None, "invalid JSON"),
        ('[\n  {"task_key": "a",}\n]', "line 2", None, "invalid JSON"),
        (json.dumps([MINIMAL, "oops"]), "entry [1]", None, "must be a JSON object, not a string"),
        (jsonl({**MINIMAL, "env_id": "other"}), "line 1 (task_key 't1')", "env_id", "disagrees with 'env_key'"),
        (jsonl({**MINIMAL, "prompt": ["hi"]}), "line 1 (task_key 't1')", "prompt", "must be a string, not list"),
        (jsonl({**MINIMAL, "prompt": "  "}), "line 1 (task_key 't1')", "prompt", "must not be empty"),
        (jsonl(NO_PROMPT | {"task_key": 7}), "line 1", "task_key", "must be a string, not int"),
        (jsonl({"prompt": "p", "env_key": "e"}), "line 1", "task_key", "missing (also accepted: 'key', 'id')"),
        (jsonl({**MINIMAL, "verifier": {"code": 3}}), "line 1 (task_key 't1')", "verifier.code", "not int"),
        (jsonl({**MINIMAL, "metadata": {"a": 1}, "a": 2}), "line 1 (task_key 't1')", "a", "also appears in"),
        ("[]", "", None, "holds no tasks"),
        ("\n\n", "", None, "holds no tasks"),
    ],
)
def test_errors_name_file_entry_and_key(tmp_path: Path, text: str, where: str, key: str | None, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TaskFileError) as caught:
        load_tasks(path)
    err = caught.value
    assert (err.path, err.where, err.key) == (str(path), where, key)
    assert problem in err.problem
    assert str(err).startswith(f"{path}: {where}") and problem in str(err)
    if key:
        assert f"key {key!r}" in str(err)


def test_unreadable_file_is_a_task_file_error(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="cannot read the file") as caught:
        load_tasks(tmp_path / "absent.json")
    assert caught.value.path == str(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("prompt", "modality", "rule", "expected"),
    [
        ("Then call submit_final_answer with the id.", "tool_use", "auto", True),
        ("Then call submit_final_answer with the id.", "computer_use", "auto", False),
        ("Submit your final answer.", "tool_use", "auto", False),
        ("Nothing to submit.", "computer_use", "always", True),
        ("Call submit_final_answer.", "tool_use", "never", False),
    ],
)
def test_wants_submit_tool(prompt: str, modality: Any, rule: Any, expected: bool) -> None:
    task = Task(task_key="k", prompt=prompt, env_key="e", modality=modality)
    assert wants_submit_tool(task, rule) is expected


# -- the demo tasks ------------------------------------------------------------------------------

DEMO = load_tasks(DEMO_TASKS)
Solution = Callable[[Client], Awaitable[str | None]]
Step = Callable[[Client], Awaitable[object]]


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error and result.structured_content is not None, result
    return dict(result.structured_content)


async def issues(client: Client, tool: str = "list_issues", **filters: Any) -> list[dict[str, Any]]:
    return list((await call(client, tool, limit=100, **filters))["issues"])


async def create_issue(client: Client, priority: str = "high", labels: tuple[str, ...] = ("bug",)) -> None:
    title = "Webhook deliveries ignore exponential backoff"
    await call(client, "create_issue", project="API", title=title, priority=priority, assignee="dave", labels=labels)


async def reassign_erin(client: Client, include_closed: bool = False) -> None:
    for issue in await issues(client, assignee="erin"):
        if include_closed or issue["status"] != "closed":
            await call(client, "assign_issue", issue_id=issue["id"], assignee="dave")


async def comment(client: Client, author: str = "alice") -> None:
    text = "Renewed the certificate with Let's Encrypt; auto-renewal is now enabled."
    await call(client, "add_comment", issue_id=17, author=author, body=text)


async def count_bugs(client: Client, statuses: tuple[str, ...] = ("open", "in_progress")) -> str:
    return str(sum([len(await issues(client, label="bug", status=s)) for s in statuses]))


async def jpy_reporter(client: Client) -> str:
    (found,) = await issues(client, "search_issues", query="JPY")
    return str((await call(client, "get_issue", issue_id=found["id"]))["reporter"])


async def close_wishlist(client: Client, resolution: str = "fixed") -> str:
    (found,) = await issues(client, "search_issues", query="/wishlist session")
    await call(client, "assign_issue", issue_id=found["id"], assignee="alice")
    await call(client, "add_label", issue_id=found["id"], label="good-first-issue")
    await call(client, "close_issue", issue_id=found["id"], resolution=resolution)
    return str(found["id"])


async def then(step: Awaitable[object], answer: str | None = None) -> str | None:
    await step
    return answer


async def nothing(client: Client) -> str | None:
    return None


# task key -> (a correct solution, a plausible wrong one that still gets some checks right)
SOLUTIONS: dict[str, tuple[Solution, Solution]] = {
    "tracker-create-api-issue": (
        lambda c: then(create_issue(c)),
        lambda c: then(create_issue(c, priority="medium", labels=())),
    ),
    "tracker-close-duplicate": (
        lambda c: then(call(c, "close_issue", issue_id=2, resolution="duplicate")),
        lambda c: then(call(c, "close_issue", issue_id=2, resolution="wont_fix")),
    ),
    "tracker-reassign-erin": (lambda c: then(reassign_erin(c)), lambda c: then(reassign_erin(c, include_closed=True))),
    "tracker-comment-certificate": (lambda c: then(comment(c)), lambda c: then(comment(c, author="bob"))),
    "tracker-count-open-bugs": (count_bugs, lambda c: count_bugs(c, statuses=("open",))),
    "tracker-jpy-reporter": (jpy_reporter, lambda c: then(jpy_reporter(c), "carol")),
    "tracker-close-wishlist-crash": (close_wishlist, lambda c: close_wishlist(c, resolution="wont_fix")),
}


async def collateral(client: Client) -> None:
    """An unrequested change on top of a correct solution: every verifier must notice it."""
    await call(client, "update_issue", issue_id=1, priority="low")


def partial(stdout: str) -> float | None:
    """The single-accumulator partial reward, parsed as the Fleet harness does (contract §4.4)."""
    counts = []
    for block in ("ERROR_ACCUMULATOR", "SUCCESS_ACCUMULATOR"):
        head, tail = f">>> {block} >>>\n", f"\n<<< {block} <<<"
        if head not in stdout or tail not in stdout:
            return None
        counts.append(len(ast.literal_eval(stdout.split(head, 1)[1].split(tail, 1)[0])))
    errors, successes = counts
    return successes / (errors + successes) if errors + successes else None


async def scored(tmp_path: Path, task: Task, *steps: Step) -> dict[str, Any]:
    """Run `steps` against a fresh tracker instance, then the task's verifier; the last answer is submitted."""
    current = prepare_instance(tmp_path / "instance")
    answer: str | None = None
    with anyio.fail_after(30):
        async with Client(build_server(current), mode="legacy") as client:
            await client.list_tools()  # call_tool validates results against the listed output schemas
            for step in steps:
                result = await step(client)
                answer = result if isinstance(result, str) else answer
    assert task.verifier_code is not None
    outcome: dict[str, Any] = execute_verifier_local(
        task.verifier_code, str(current.with_name(SEED_FILE)), str(current), answer
    )
    assert outcome["success"], outcome["error"]
    return outcome


def test_demo_tasks_load_and_are_a_fleet_export() -> None:
    assert len(DEMO) >= 6 and set(SOLUTIONS) == set(DEMO)
    kinds = {t.metadata["kind"] for t in DEMO.values()}
    assert kinds == {"db_change", "answer", "multi_step"}
    for task in DEMO.values():
        assert task.env_key == "tracker" and task.modality == "tool_use" and task.verifier_code
        assert wants_submit_tool(task) is (task.metadata["kind"] != "db_change")
    sdk = fleet.Fleet(api_key="unused-no-requests-are-made")
    for entry in json.loads(DEMO_TASKS.read_text()):
        parsed = sdk.load_task_from_json(entry, raise_on_verifier_error=True)
        assert parsed.verifier is not None
        assert (parsed.key, parsed.env_key, parsed.verifier_func) == (
            entry["key"], "tracker", DEMO[entry["key"]].verifier_code,
        )  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", ["correct", "nothing", "wrong", "correct then a stray change"])
@pytest.mark.parametrize("key", sorted(DEMO))
async def test_demo_task_scores(tmp_path: Path, key: str, scenario: str) -> None:
    correct, wrong = SOLUTIONS[key]
    plans: dict[str, tuple[list[Step], int, Callable[[float], bool]]] = {
        "correct": ([correct], 1, lambda r: r == 1.0),
        "nothing": ([nothing], 0, lambda r: r == 0.0),  # kept invariants alone earn nothing
        "wrong": ([wrong], 0, lambda r: 0 < r < 1),
        "correct then a stray change": ([correct, collateral], 0, lambda r: 0 < r < 1),
    }
    steps, expected, partial_ok = plans[scenario]
    outcome = await scored(tmp_path, DEMO[key], *steps)
    assert outcome["result"] == expected, outcome["stdout"]
    reward = partial(outcome["stdout"])
    assert reward is not None and partial_ok(reward), outcome["stdout"]
