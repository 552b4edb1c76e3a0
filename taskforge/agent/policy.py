"""The policy contract: given the chat so far, produce the next reply.

The agent loop is policy-agnostic. A policy is anything with a `name` and
`next_action(messages) -> PolicyReply`; `messages` is `episode_messages(episode)` (chat messages
with extra fields: `observation`, `warning`, `exit_code`, `turn`; strip them with `api_messages`
before sending to an API). A policy that needs the sandbox before the first turn (the oracle
uploads the solution) may also define `setup(task, sandbox)`; the loop calls it when present.

The action format every policy shares (the system prompt tells the model):
- tools `bash` {"command": str, "timeout_sec"?: number} and `done` {} through the chat API, or
- plain text: the first ```bash (or ```sh) fenced block is the command; a line reading DONE, in
  a reply with no command, is the done signal.
One action per reply: a command or done.

Errors: a policy raises `PolicyError` subclasses. The loop ends the episode on
`ContextLengthExceededError` (stop reason context_exceeded) and on any other PolicyError
(policy_error), except `PolicyConfigError` (bad key, unknown model, a request the server rejects),
which it re-raises: every later episode would fail the same way, so the run should stop.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from taskforge.agent.episode import TokenUsage, ToolCall

BASH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a bash command in the task's container and return its output and exit code.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command (may span several lines)."},
                "timeout_sec": {"type": "number", "description": "Time limit in seconds (optional)."},
            },
            "required": ["command"],
        },
    },
}
DONE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "done",
        "description": "Signal that the task is complete. Your work is then checked by tests.",
        "parameters": {"type": "object", "properties": {}},
    },
}
TOOLS = [BASH_TOOL, DONE_TOOL]


class PolicyReply(BaseModel):
    """One reply: its text, its (first) tool call, token usage and harness-side notes."""

    text: str = ""
    tool_call: ToolCall | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    finish_reason: str | None = None
    api_retries: int = 0
    warnings: list[str] = Field(default_factory=list, description="problems with the reply itself, shown to the policy")


@runtime_checkable
class Policy(Protocol):
    name: str

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply: ...


class PolicyError(RuntimeError):
    """The policy could not produce a reply."""


class PolicyUnavailableError(PolicyError):
    """The model server kept failing (429, 5xx, timeouts, malformed replies) after all retries."""


class ContextLengthExceededError(PolicyError):
    """The conversation no longer fits the model's context window."""


class PolicyConfigError(PolicyError):
    """A configuration problem every call would hit (key, model name, request shape): stop the run."""


class PolicyAuthError(PolicyConfigError):
    """The server rejected the API key (HTTP 401/403)."""


class ModelNotFoundError(PolicyConfigError):
    """The server does not serve the requested model (HTTP 404)."""
