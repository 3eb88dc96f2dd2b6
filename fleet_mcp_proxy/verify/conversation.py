"""Which verifiers get the episode's `conversation`, and how a local run passes it (fleet-contract §3.1). Pure.

The rule is the harness's: `conversation` is passed, as a keyword, exactly when the regex
`def\\s+verify\\s*\\(([^)]*)\\)` finds it in the code's `verify` signature. Remote runs take keywords already. The SDK's
local executor cannot pass it (it calls the first function defined with `(env, final_answer)`), so a local run gets
an entry point placed before the code's own functions, which calls the first of them with the same keywords a remote
run would: `final_answer` when there is one, and `conversation`.
"""

from __future__ import annotations

import ast
import re

_SIGNATURE = re.compile(r"def\s+verify\s*\(([^)]*)\)")
ENTRY_NAME = "_fleet_mcp_proxy_entry"


def takes_conversation(code: str | None) -> bool:
    """Whether the harness would pass `conversation` to this verifier code."""
    match = _SIGNATURE.search(code or "")
    return match is not None and "conversation" in match.group(1)


def with_conversation_entry(code: str, conversation: str) -> str:
    """`code` with an entry point that hands `conversation` to its first function; unchanged if it does not parse
    (the executor then reports the syntax error itself) or defines no function."""
    try:
        module = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    functions = [n for n in module.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if not functions:
        return code
    entry = (
        f"def {ENTRY_NAME}(env, final_answer=None):\n"
        f"    extra = {{}} if final_answer is None else {{'final_answer': final_answer}}\n"
        f"    return {functions[0].name}(env, conversation={conversation!r}, **extra)\n\n\n"
    )
    # After any `from __future__` import, which must stay first; before every function, so the executor picks it.
    future = [n for n in module.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    split = max((n.end_lineno or n.lineno) for n in future) if future else 0
    lines = code.splitlines(keepends=True)
    head = "".join(lines[:split])
    if head and not head.endswith("\n"):
        head += "\n"
    return head + entry + "".join(lines[split:])
