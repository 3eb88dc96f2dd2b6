"""Remote verification through the real SDK's async path against the emulator's verifier executor (§4.2 A)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import httpx
import httpx2
import pytest
from canaries import FLEET_KEY
from fleet._async import exceptions as aexc
from fleet._async.client import AsyncEnv, AsyncFleet
from fleet_emulator import Emulator, running_emulator
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from fleet_mcp_proxy.verify.remote import run_remote
from fleet_mcp_proxy.verify.scoring import VerifierRun, has_judge_error

pytestmark = pytest.mark.anyio

KEY = FLEET_KEY  # the suite's canary: it must never reach a log, result or record
TITLE = "Verifier sees this"

CREATED = f'''
from fleet.verifiers.verifier import verifier

@verifier(key="created_issue")
def verify(env: Environment, final_answer=None) -> float:
    env.instance.load()
    before = int(env.db("seed").table("issues").eq("title", "{TITLE}").count())
    after = env.db("current").table("issues").eq("title", "{TITLE}").first()
    print(f"seed={{before}} current={{after is not None}}")
    ok = before == 0 and after is not None and after["status"] == "open"
    return TASK_SUCCESSFUL_SCORE if ok else TASK_FAILED_SCORE
'''

ANSWER = """
def verify(env, final_answer=None):
    return 1 if final_answer is not None and contains_number(final_answer, 42) else 0
"""

RAISES = """
def verify(env, final_answer=None):
    print("looking at the database")
    raise ValueError("the verifier broke")
"""


@contextlib.asynccontextmanager
async def sdk(emu: Emulator) -> AsyncIterator[AsyncFleet]:
    """The real AsyncFleet on a plain client (the SDK's default one retries 404s for ~7 s, D29)."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield AsyncFleet(api_key=KEY, base_url=emu.base_url, httpx_client=http)


async def create_issue(env: AsyncEnv, title: str) -> None:
    """An agent's write, through the instance's own MCP endpoint."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=10.0) as http,
        Client(streamable_http_client(f"{env.urls.root}mcp", http_client=http), mode="legacy", cache=None) as client,
    ):
        created = await client.call_tool("create_issue", {"project": "WEB", "title": title})
        assert not created.is_error


async def verify(
    fleet: AsyncFleet, env: AsyncEnv, code: str, *, key: str, final_answer: str | None = None, timeout: float = 15
) -> VerifierRun:
    return await run_remote(
        fleet,
        env.instance_id,
        task_key=key,
        prompt="Create an issue",
        env_key="tracker",
        code=code,
        final_answer=final_answer,
        timeout=timeout,
    )


async def test_a_change_made_over_mcp_is_graded_and_the_second_run_hits_the_bundle_cache() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env, twin = await fleet.make("tracker"), await fleet.make("tracker")
            before = await verify(fleet, env, CREATED, key="t-created")
            assert before.success and before.result == 0
            assert before.stdout == "seed=0 current=False\n"

            await create_issue(env, TITLE)
            # Concurrent runs on two instances: each sees only its own databases.
            runs: dict[str, VerifierRun] = {}

            async def run(name: str, target: AsyncEnv) -> None:
                runs[name] = await verify(fleet, target, CREATED, key="t-created")

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "changed", env)
                tg.start_soon(run, "untouched", twin)
            changed = runs["changed"]
            assert changed.success and changed.result == 1 and changed.error is None
            assert changed.stdout == "seed=0 current=True\n"
            assert changed.execution_id is not None and changed.execution_id.startswith("exec_")
            assert changed.execution_id != before.execution_id
            assert isinstance(changed.execution_time_ms, int)
            assert runs["untouched"].success and runs["untouched"].result == 0

            # One upload: every later run found the bundle by its sha (D17: the sha must stay the same).
            executions = emu.bundles.executions
            assert [(e.uploaded, e.bundle_cache_hit) for e in executions] == [(True, False)] + [(False, True)] * 2
            assert len(emu.bundles.bundles) == 1 and {e.sha256 for e in executions} == set(emu.bundles.bundles)
            assert emu.requests("GET", "/v1/verifiers/check") == 3
            assert KEY not in repr(runs)


async def test_final_answer_reaches_the_verifier_only_when_given() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            answered = await verify(fleet, env, ANSWER, key="t-answer", final_answer="It is 42.")
            assert answered.success and answered.result == 1
            wrong = await verify(fleet, env, ANSWER, key="t-answer", final_answer="It is 41.")
            assert wrong.success and wrong.result == 0
            none = await verify(fleet, env, ANSWER, key="t-answer")
            assert none.success and none.result == 0


async def test_a_raising_verifier_a_dead_instance_and_bad_code() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            broken = await verify(fleet, env, RAISES, key="t-raises")
            assert not broken.success and broken.result is None
            assert broken.error == "ValueError: the verifier broke"
            assert broken.stdout == "looking at the database\n" and broken.execution_id is not None

            # Code that does not even load fails in the SDK, before any request.
            with pytest.raises(ValueError, match="Failed to create verifier"):
                await verify(fleet, env, "def verify(env:\n", key="t-syntax")

            await emu.kill_instance(env.instance_id)
            dead = await verify(fleet, env, CREATED, key="t-dead")
            assert not dead.success and dead.result is None
            assert dead.error is not None and dead.error.startswith("InstanceNotRunningError: ")
            assert emu.bundles.executions[-1].error_type == "InstanceNotRunningError"


async def test_injected_judge_errors_and_execution_failures() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            await create_issue(env, TITLE)
            emu.faults.update(verifier_judge_error_rate=1.0)
            judged = await verify(fleet, env, CREATED, key="t-judge")
            assert judged.success and judged.result == 0  # the judge wrapper's fabricated grade
            assert judged.stdout.startswith("JUDGE ERROR: ") and has_judge_error(judged.stdout)
            assert judged.stdout.endswith("seed=0 current=True\n")

            emu.faults.update(verifier_judge_error_rate=0.0, verifier_failure_rate=1.0)
            failed = await verify(fleet, env, CREATED, key="t-judge")
            assert not failed.success and failed.result is None and failed.execution_id is not None
            assert failed.error is not None and failed.error.startswith("VerifierExecutionError: ")

            emu.faults.update(verifier_failure_rate=0.0)
            healthy = await verify(fleet, env, CREATED, key="t-judge")
            assert healthy.success and healthy.result == 1 and not has_judge_error(healthy.stdout)


async def test_the_timeout_bounds_the_whole_run() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            emu.faults.update(latency=1.0, match=r"^POST /v1/verifiers/execute$")
            with anyio.fail_after(5), pytest.raises(TimeoutError):
                await verify(fleet, env, ANSWER, key="t-slow", timeout=0.2)
            emu.faults.update(latency=0.0, match=None)
            assert (await verify(fleet, env, ANSWER, key="t-slow", final_answer="42")).result == 1


async def test_the_executor_contract_seen_by_the_sdk() -> None:
    """404 with an object detail for an unknown sha and no bundle; `check` and `execute` need the API key."""
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")
            unknown = "0" * 64
            assert not (await env.check_bundle_exists(unknown)).success
            with pytest.raises(aexc.FleetAPIError) as missing:
                await env.execute_verifier_remote(
                    bundle_data=b"",
                    bundle_sha=unknown,
                    key="k",
                    function_name="verify",
                    args=({"env": env.instance_id},),
                    args_array=[{"env": env.instance_id}],
                    kwargs={},
                    needs_upload=False,
                )
            assert missing.value.status_code == 404 and "not found" in str(missing.value).lower()
            assert missing.value.response_data["detail"]["error"] == "bundle_not_found"

            async with httpx.AsyncClient(base_url=emu.base_url, timeout=10.0) as http:
                assert (await http.get("/v1/verifiers/check", params={"sha256": unknown})).status_code == 401
                assert (await http.post("/v1/verifiers/execute", json={})).status_code == 401
                headers = {"Authorization": f"Bearer {KEY}"}
                bad = await http.post("/v1/verifiers/execute", json={"sha256": unknown, "bundle": "!"}, headers=headers)
                assert bad.status_code == 400 and isinstance(bad.json()["detail"], str)
