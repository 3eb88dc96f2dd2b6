"""`submit_final_answer`: the agent's answer ends the episode and starts verification (contract §3.1)."""

from __future__ import annotations

import json
from typing import Any

SUBMIT_TOOL_NAME = "submit_final_answer"

# Name, description and schema as the Fleet orchestrator defines them, in MCP wire form.
SUBMIT_TOOL: dict[str, Any] = {
    "name": SUBMIT_TOOL_NAME,
    "description": (
        "Submit your final answer to complete the task. Use this when you have finished the task and want "
        "to provide your answer for verification. If the requested answer asks for json, then write your "
        "response in the answer field using json brackets."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "Your final answer"}},
        "required": ["answer"],
    },
}


def submitted_result() -> dict[str, Any]:
    body = {"status": "submitted", "message": "Answer recorded. Ending session."}
    return {"content": [{"type": "text", "text": json.dumps(body)}], "structuredContent": body}
