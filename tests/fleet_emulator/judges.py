"""Judge verifiers: task verifier code that grades the rollout's `conversation`, as Fleet's LLM judges do (B22).

The emulator runs whatever verifier code a task carries (verifiers.py); these are such code, for tests. A real judge
sends the chat to an LLM; this one applies a fixed rubric to the same JSON, so its grade says exactly what it saw:
each rubric line is printed as `name: True|False`, and the grade is the fraction that passed. Without a
conversation it prints `no conversation` and grades 0, which is what an empty rollout got before B22 was fixed.
"""

from __future__ import annotations

JPY_PROMPT = (
    "Who reported the issue about JPY charges being 100x too large? Look it up in the issue tracker, "
    "then call submit_final_answer with that user's username."
)

CONVERSATION_JUDGE = '''
def verify(env, final_answer=None, conversation=None):
    """A rubric over the chat: the task asked, the tracker searched, the issue seen, the answer given last."""
    if conversation is None:
        print("no conversation")
        return 0.0
    messages = json.loads(conversation)
    calls = [c.get("function", {}) for m in messages for c in (m.get("tool_calls") or [])]
    last = messages[-1] if messages else {}
    rubric = {
        "task asked": bool(messages) and messages[0].get("role") == "user" and "JPY" in str(messages[0]["content"]),
        "tracker searched": any(c.get("name") == "search_issues" and "JPY" in c.get("arguments", "") for c in calls),
        "issue seen": any(m.get("role") == "tool" and "error for JPY" in str(m.get("content")) for m in messages),
        "answer given last": last.get("role") == "assistant" and str(last.get("content")).strip() == final_answer,
    }
    for name, passed in rubric.items():
        print(f"{name}: {passed}")
    return sum(rubric.values()) / len(rubric)
'''

# The same rubric under a signature without `conversation`: the harness must not pass one (it would raise).
NO_CONVERSATION = """
def verify(env, final_answer=None):
    print("graded the answer only")
    return 1.0 if final_answer == "bob" else 0.0
"""

# A judge that returns its grade as text, as some print-and-return judges do: the contract's float() reads it.
TEXT_GRADE = """
def verify(env, final_answer=None):
    return "0.5"
"""


def judge_task(key: str, code: str) -> dict[str, object]:
    """A task entry in Fleet's export format, on the emulator's `tracker`, graded by `code`."""
    return {"key": key, "prompt": JPY_PROMPT, "env_key": "tracker", "task_modality": "tool_use", "verifier_code": code}
