"""Verifier runs become rewards: partial-reward parsing (§4.4), the retry and scoring policy (§4.3), and local runs of
real verifier code against real SQLite files in a child process. Unknown is always `None`, never 0.0."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_mcp_proxy.verify.local import run_local
from fleet_mcp_proxy.verify.runner import run_verifier
from fleet_mcp_proxy.verify.scoring import (
    Reward,
    VerifierReport,
    VerifierRun,
    coerce_score,
    has_judge_error,
    parse_partial_reward,
    strict_verdict,
    unknown,
)

NO_WAIT = (0.0, 0.0, 0.0)


async def exited(pid: int) -> None:
    """Wait, bounded, until a process that is not our child has exited (a pidfd turns readable; no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(10):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Like helpers.pid_alive (not imported: helpers pulls in the whole proxy); a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def app_block(app: str, passed: bool, errors: list[str], successes: list[str]) -> str:
    lines = [f"<<< VERIFY_{app} <<<"]
    if errors:
        lines += [">>> ERROR_ACCUMULATOR >>>", repr(errors), "<<< ERROR_ACCUMULATOR <<<"]
    lines += [">>> SUCCESS_ACCUMULATOR >>>", repr(successes), "<<< SUCCESS_ACCUMULATOR <<<"]
    return "\n".join([*lines, f">>> VERIFY_{app} >>>", f"App {app}: {int(passed)}"])


def accumulators(errors: list[str], successes: list[str]) -> str:
    return (
        f"preamble\n>>> ERROR_ACCUMULATOR >>>\n{errors!r}\n<<< ERROR_ACCUMULATOR <<<\n"
        f">>> SUCCESS_ACCUMULATOR >>>\n{successes!r}\n<<< SUCCESS_ACCUMULATOR <<<\ndone."
    )


# -- §4.4 partial reward ----------------------------------------------------------------------------------------


def test_one_of_two_real_apps_is_half() -> None:
    stdout = "\n".join([app_block("a", False, ["[X] failed"], []), app_block("b", True, [], ["[C] Did the work"])])
    assert parse_partial_reward(stdout + "\nCombined result: 1/2 apps passed") == pytest.approx(0.5)


def test_trivial_pass_is_excluded_from_both_sides() -> None:
    stdout = "\n".join(
        [
            app_block("outlook", False, ["[X] No sent email", "[X] no task"], ["[C] Expected changes were found"]),
            app_block("lifeline", False, ["[X] No new appointment"], []),
            app_block("medora", True, [], ["[C] Verified no unexpected changes in the Medora database"]),
        ]
    )
    assert parse_partial_reward(stdout) == 0.0


def test_only_trivial_apps_give_no_signal() -> None:
    stdout = "\n".join(
        [
            app_block("a", True, [], ["[C] Verified NO UNEXPECTED CHANGES in a"]),
            app_block("b", True, [], ["[C] No filesystem changes required"]),
            app_block("c", True, [], ["[C] No-unexpected-envelopes"]),
        ]
    )
    assert parse_partial_reward(stdout) is None


def test_app_lines_commit_to_the_multi_app_path() -> None:
    # Trivial only; the single-accumulator fallback would have said 1.0.
    assert parse_partial_reward(app_block("a", True, [], ["[C] no unexpected changes"])) is None


def test_single_accumulator_two_errors_one_success_is_a_third() -> None:
    assert parse_partial_reward(accumulators(["[X] one", "[X] two"], ["[C] three"])) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "Verifier ran cleanly. result: 0.0",
        ">>> ERROR_ACCUMULATOR >>>\n['unterminated\n<<< ERROR_ACCUMULATOR <<<",
        ">>> SUCCESS_ACCUMULATOR >>>\n__import__('os')\n<<< SUCCESS_ACCUMULATOR <<<",
        ">>> SUCCESS_ACCUMULATOR >>>\n42\n<<< SUCCESS_ACCUMULATOR <<<",
        accumulators([], []),
    ],
    ids=["empty", "no-blocks", "malformed", "not-a-literal", "no-length", "zero-checks"],
)
def test_no_usable_accumulators_give_none(stdout: str) -> None:
    assert parse_partial_reward(stdout) is None


@given(st.lists(st.text(max_size=5), max_size=6), st.lists(st.text(max_size=5), max_size=6))
def test_single_accumulator_is_the_success_fraction(errors: list[str], successes: list[str]) -> None:
    total = len(errors) + len(successes)
    expected = len(successes) / total if total else None
    assert parse_partial_reward(accumulators(errors, successes)) == expected


@given(st.text())
def test_arbitrary_text_never_raises(stdout: str) -> None:
    value = parse_partial_reward(stdout)
    assert value is None or 0.0 <= value <= 1.0


def test_judge_error_and_strict_verdict_markers() -> None:
    assert has_judge_error("grading\nJUDGE ERROR: rate limited\n")
    assert not has_judge_error("  JUDGE ERROR: indented is not the wrapper") and not has_judge_error("")
    assert strict_verdict("x\n>>> STRICT_VERDICT >>>\n  0.75 \n<<< STRICT_VERDICT <<<\n") == 0.75
    assert strict_verdict(">>> STRICT_VERDICT >>>\n-1\n<<< STRICT_VERDICT <<<") == -1.0
    assert strict_verdict(">>> STRICT_VERDICT >>>\n1.2.3\n<<< STRICT_VERDICT <<<") is None
    assert strict_verdict("no verdict") is None


class Scored:
    score = 0.25


class BrokenScore:
    @property
    def score(self) -> float:
        raise RuntimeError("verifier bug")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (1, 1.0),
        (0, 0.0),
        (True, 1.0),
        (0.7, 0.7),
        ({"score": 0.7}, 0.7),
        (Scored(), 0.25),
        ({"passed": True}, None),
        ({"score": "high"}, None),
        ("1.0", 1.0),
        (float("nan"), None),
        ([1], None),
        (BrokenScore(), None),
    ],
)
def test_coerce_score(result: Any, expected: float | None) -> None:
    assert coerce_score(result) == expected


# -- §4.3 retry and scoring policy ------------------------------------------------------------------------------


def scripted(*outcomes: VerifierRun | BaseException) -> tuple[Callable[[], Awaitable[VerifierRun]], list[int]]:
    """A verifier whose attempts return (or raise) the given outcomes in order; the list counts the calls."""
    calls: list[int] = []

    async def execute() -> VerifierRun:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return execute, calls


def ok(result: Any, stdout: str = "") -> VerifierRun:
    return VerifierRun(True, result, None, stdout, execution_id="exec-1", execution_time_ms=12)


FAILED = VerifierRun(False, None, "RuntimeError: runner unavailable", "", execution_id="exec-f")
JUDGE_DOWN = ok(0.0, "JUDGE ERROR: 429 Too Many Requests\nscore: 0\n")


async def verify(*outcomes: VerifierRun | BaseException, partial: bool = False) -> tuple[Reward, VerifierReport, int]:
    execute, calls = scripted(*outcomes)
    with anyio.fail_after(10):
        reward, report = await run_verifier(execute, partial=partial, trigger="submit", backoff=NO_WAIT)
    json.dumps([reward.to_json(), report.to_json()])  # both are resource bodies
    return reward, report, len(calls)


@pytest.mark.anyio
async def test_success_without_a_result_scores_one() -> None:
    reward, report, calls = await verify(ok(None))
    assert (reward.status, reward.reward, reward.binary_score, reward.failure_reason) == ("final", 1.0, 1.0, None)
    assert (reward.verifier_success, reward.execution_id, reward.trigger) == (True, "exec-1", "submit")
    assert (calls, report.attempts, report.execution_time_ms) == (1, 1, 12)


@pytest.mark.anyio
async def test_judge_error_is_retried_then_unknown() -> None:
    reward, report, calls = await verify(JUDGE_DOWN)
    assert (reward.status, reward.reward, reward.failure_reason) == ("unknown", None, "judge_error")
    assert reward.verifier_success is True and reward.binary_score is None
    assert calls == report.attempts == 4
    assert report.judge_error and report.error == "judge LLM call errored (grade unknown)"


@pytest.mark.anyio
async def test_execution_failure_is_retried_then_unknown() -> None:
    reward, report, calls = await verify(FAILED)
    assert (reward.reward, reward.failure_reason, reward.verifier_success) == (None, "verifier_failed", False)
    assert calls == report.attempts == 4
    assert report.error == "RuntimeError: runner unavailable"


@pytest.mark.anyio
async def test_success_on_the_third_attempt_is_scored() -> None:
    reward, report, calls = await verify(FAILED, JUDGE_DOWN, ok(0.5, "graded"))
    assert (reward.reward, reward.failure_reason) == (0.5, None)
    assert calls == report.attempts == 3 and report.stdout == "graded" and not report.judge_error


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "reason"), [(ValueError("bad"), "verifier_exception"), (ImportError("no fleet"), "import_error")]
)
async def test_exceptions_are_not_retried(error: Exception, reason: str) -> None:
    reward, report, calls = await verify(error, ok(1))
    assert (reward.status, reward.reward, reward.failure_reason, reward.verifier_success) == (
        "unknown",
        None,
        reason,
        None,
    )
    assert calls == report.attempts == 1
    assert report.error == f"{type(error).__name__}: {error}"


@pytest.mark.anyio
async def test_exception_after_a_failed_attempt_keeps_the_earlier_stdout() -> None:
    reward, report, calls = await verify(VerifierRun(False, None, "boom", "partial output"), ConnectionError("lost"))
    assert reward.failure_reason == "verifier_exception" and calls == report.attempts == 2
    assert report.stdout == "partial output"


@pytest.mark.anyio
async def test_dict_score_and_unscorable_results() -> None:
    assert (await verify(ok({"score": 0.7})))[0].reward == 0.7
    reward, report, _ = await verify(ok("PASS"))
    assert (reward.reward, reward.failure_reason) == (None, "unscorable_result")
    assert report.error == "unscorable result: 'PASS'"


@pytest.mark.anyio
async def test_partial_reward_replaces_a_zero_only_when_switched_on() -> None:
    stdout = accumulators(["[X] one", "[X] two"], ["[C] three"])
    off, _, _ = await verify(ok(0, stdout))
    assert (off.reward, off.binary_score, off.partial_score) == (0.0, 0.0, None)
    on, _, _ = await verify(ok(0, stdout), partial=True)
    assert on.reward == pytest.approx(1 / 3) and on.binary_score == 0.0 and on.partial_score == pytest.approx(1 / 3)
    passed, _, _ = await verify(ok(1, stdout), partial=True)
    assert (passed.reward, passed.partial_score) == (1.0, None)
    no_blocks, _, _ = await verify(ok(0, "nothing to parse"), partial=True)
    assert (no_blocks.reward, no_blocks.partial_score) == (0.0, None)


@pytest.mark.anyio
async def test_cancellation_propagates_out_of_the_runner() -> None:
    entered, finished = anyio.Event(), []

    async def hang() -> VerifierRun:
        entered.set()
        await anyio.Event().wait()
        raise AssertionError("never set")

    async def run() -> None:
        finished.append(await run_verifier(hang, trigger="close", backoff=NO_WAIT))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await entered.wait()
            tg.cancel_scope.cancel()
    assert finished == []


def test_no_verifier_is_unknown_not_zero() -> None:
    body = unknown("no_verifier", "close").to_json()
    assert set(body) == {
        "status", "reward", "binary_score", "partial_score", "verifier_success",
        "failure_reason", "execution_id", "trigger", "computed_at",
    }  # fmt: skip
    assert (body["status"], body["reward"], body["failure_reason"], body["trigger"]) == (
        "unknown", None, "no_verifier", "close",
    )  # fmt: skip


# -- run_local: real verifier code, real SQLite files, a child process ------------------------------------------

CHECK_STATUS = """
def verify(env, final_answer=None):
    env.instance.load()
    before = env.db("seed").table("issues").eq("id", 1).first()
    after = env.db("current").table("issues").eq("id", 1).first()
    print(f"status {before['status']} -> {after['status']}")
    return TASK_SUCCESSFUL_SCORE if after["status"] == "closed" else TASK_FAILED_SCORE
"""


@pytest.fixture
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    """Seed has issue 1 open; the agent closed it in current."""
    paths = []
    for name, status in (("seed", "open"), ("current", "closed")):
        path = tmp_path / f"{name}.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT, status TEXT)")
            conn.execute("INSERT INTO issues VALUES (1, 'Login broken', ?), (2, 'Typo', 'open')", (status,))
        conn.close()
        paths.append(path)
    return paths[0], paths[1]


async def local(code: str, dbs: tuple[Path, Path], *, answer: str | None = None, timeout: float = 30) -> VerifierRun:
    with anyio.fail_after(timeout + 30):
        return await run_local(code, *dbs, final_answer=answer, timeout=timeout)


@pytest.mark.anyio
async def test_local_verifier_reads_seed_and_current(dbs: tuple[Path, Path]) -> None:
    run = await local(CHECK_STATUS, dbs)
    assert (run.success, run.result, run.error, run.stdout) == (True, 1, None, "status open -> closed\n")
    assert run.execution_time_ms is not None and run.execution_time_ms > 0
    failing = await local(CHECK_STATUS.replace('== "closed"', '== "wontfix"'), dbs)
    assert (failing.success, failing.result) == (True, 0)


@pytest.mark.anyio
async def test_local_verifier_gets_the_final_answer(dbs: tuple[Path, Path]) -> None:
    code = "def verify(env, final_answer=None):\n    return 1 if final_answer == 'issue 1' else 0\n"
    assert (await local(code, dbs, answer="issue 1")).result == 1
    assert (await local(code, dbs, answer="issue 2")).result == 0
    assert (await local(code, dbs, answer=None)).result == 0


@pytest.mark.anyio
async def test_local_accumulators_feed_the_partial_reward(dbs: tuple[Path, Path]) -> None:
    code = """
print("module-level output is kept too")
def verify(env, final_answer=None):
    import os
    os.write(1, b"raw fd-1 bytes never corrupt the channel")
    print(">>> ERROR_ACCUMULATOR >>>\\n['[X] title unchanged', '[X] no comment']\\n<<< ERROR_ACCUMULATOR <<<")
    print(">>> SUCCESS_ACCUMULATOR >>>\\n['[C] issue closed']\\n<<< SUCCESS_ACCUMULATOR <<<")
    return TASK_FAILED_SCORE
"""

    async def execute() -> VerifierRun:
        return await local(code, dbs)

    with anyio.fail_after(60):
        reward, report = await run_verifier(execute, partial=True, trigger="close", backoff=NO_WAIT)
    assert reward.binary_score == 0.0 and reward.reward == pytest.approx(1 / 3)
    assert report.stdout is not None and report.stdout.startswith("module-level output is kept too\n")
    assert "raw fd-1" not in report.stdout


@pytest.mark.anyio
async def test_local_verifier_exceptions_are_failed_runs(dbs: tuple[Path, Path]) -> None:
    run = await local("def verify(env):\n    raise ValueError('no such issue')\n", dbs)
    assert (run.success, run.result) == (False, None)
    assert run.error is not None and run.error.startswith("ValueError: no such issue")
    exited = await local("import sys\ndef verify(env):\n    sys.exit(3)\n", dbs)
    assert not exited.success and exited.error == "SystemExit: 3"


@pytest.mark.anyio
async def test_local_timeout_kills_the_verifier_and_what_it_started(dbs: tuple[Path, Path], tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = f"""
import os, subprocess, sys
def verify(env):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open({str(pids)!r}, "w") as f:
        f.write(f"{{os.getpid()}} {{sleeper.pid}}")
    while True:
        pass
"""
    run = await local(code, dbs, timeout=2)
    assert (run.success, run.error) == (False, "timed out after 2 s")
    child, grandchild = map(int, pids.read_text().split())
    assert not pid_alive(child)  # reaped before run_local returned
    await exited(grandchild)  # SIGKILL reaches the rest of the group asynchronously


@pytest.mark.anyio
async def test_local_verifier_cannot_write_the_snapshots(dbs: tuple[Path, Path]) -> None:
    before = [path.read_bytes() for path in dbs]
    code = """
import sqlite3
def verify(env):
    conn = sqlite3.connect(env.db("current").db_path)
    conn.execute("UPDATE issues SET status = 'closed'")
    conn.commit()
"""
    run = await local(code, dbs)
    assert not run.success and run.error is not None and "readonly database" in run.error
    assert [path.read_bytes() for path in dbs] == before


@pytest.mark.anyio
async def test_local_missing_snapshot_is_a_failed_run(dbs: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    run = await local(CHECK_STATUS, (dbs[0], missing))
    assert not run.success and run.error == f"FileNotFoundError: current db {missing}"
    assert not missing.exists()


@pytest.mark.anyio
async def test_local_results_that_are_not_json(dbs: tuple[Path, Path]) -> None:
    code = "class Grade:\n    score = 0.5\ndef verify(env):\n    return Grade()\n"
    graded = await local(code, dbs)
    assert graded.result["score"] == 0.5 and "Grade object" in graded.result["unserializable"]
    assert coerce_score(graded.result) == 0.5
    opaque = await local("def verify(env):\n    return {1, 2}\n", dbs)
    assert opaque.result == {"unserializable": "{1, 2}"} and coerce_score(opaque.result) is None


@pytest.mark.anyio
async def test_local_first_function_defined_is_the_verifier(dbs: tuple[Path, Path]) -> None:
    """D9: the SDK runs the first function defined, not `verify`. A helper placed first is called with `env` and its
    return value becomes the result; `verify` never runs. Here that result is a string, so the grade is unknown."""
    code = """
def expected_status(env=None):
    return "closed"

def verify(env, final_answer=None):
    row = env.db("current").table("issues").eq("id", 1).first()
    return TASK_SUCCESSFUL_SCORE if row["status"] == expected_status() else TASK_FAILED_SCORE
"""
    run = await local(code, dbs)
    assert (run.success, run.result) == (True, "closed")

    async def execute() -> VerifierRun:
        return run

    with anyio.fail_after(10):
        reward, _ = await run_verifier(execute, trigger="submit", backoff=NO_WAIT)
    assert (reward.reward, reward.failure_reason) == (None, "unscorable_result")
    # Defined after `verify`, the same helper is harmless.
    reordered = code.split("\n\n")
    assert (await local("\n\n".join([reordered[1], reordered[0]]), dbs)).result == 1


@pytest.mark.anyio
async def test_cancelling_a_local_run_kills_the_verifier(dbs: tuple[Path, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    code = f"""
import os
def verify(env):
    with open({str(fifo)!r}, "w") as f:
        f.write(str(os.getpid()))
    while True:
        pass
"""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(local, code, dbs)
            # Opening a FIFO blocks until the verifier opens it, so this returns once the verifier is running.
            pid = int(await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True))
            tg.cancel_scope.cancel()
    assert not pid_alive(pid)
