"""The episode record: what a policy did on a task, turn by turn, and how it reads as chat messages.

An episode is what the trainer learns from, so the record keeps apart what the environment wrote
(the observation body: command output and exit code) and what the harness wrote (warnings: an
unparseable reply, a truncated output, a timed-out command). `episode_messages` lays an episode out
as the chat the policy saw, with the body and the warning as fields of their own beside the
rendered `content`:

    {"role": "system", "content": <system prompt>}
    {"role": "user", "content": <instruction>}
    per turn:
    {"role": "assistant", "content": <reply text or None>, "tool_calls": [...]?, "turn": i}
    {"role": "tool" | "user", "tool_call_id": ...?, "content": render_observation(body, warning),
     "observation": body, "warning": warning or None, "exit_code": int | None, "turn": i}

The observation message answers a tool call with role "tool" (and its tool_call_id); a reply
without a tool call (the ```bash fallback, or a reply with no action at all) is answered with
role "user". A turn that signals done has no observation message.

Observation content, defined only by `observation_layout` (the trainer maps its piece kinds to
token masks; taskforge never imports the trainer, so the definition lives here): the warning, when
there is one, then a newline, then the body verbatim:

    [harness] output truncated: showing the first 5000 and last 5000 of 123456 characters
    <command output>
    [exit code: 0]
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

ObservationPieceKind = Literal["warning", "separator", "body"]
StopReason = Literal[
    "done", "max_turns", "agent_timeout", "context_exceeded", "policy_error", "sandbox_error", "sandbox_limit"
]
ActionKind = Literal["command", "done", "none"]

WARNING_PREFIX = "[harness] "
WARNING_SEPARATOR = "\n"


class TokenUsage(BaseModel):
    """Token counts of one policy call, as the API's `usage` reports them (0 when it does not)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class ToolCall(BaseModel):
    """One tool call as the model wrote it; `arguments` is the raw JSON text (it may not parse)."""

    id: str
    name: str
    arguments: str = "{}"

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class EpisodeConfig(BaseModel):
    """How an episode runs. Defaults follow the ECHO paper's setup where it states one."""

    max_turns: int = Field(16, ge=1, description="policy replies per episode, unless the task sets its own")
    task_max_turns: bool = Field(
        True, description="a task's [metadata] max_turns, when set, replaces max_turns (hard tasks may need more)"
    )
    command_timeout_sec: float = Field(120.0, gt=0, description="per command, when the action names none")
    max_command_timeout_sec: float = Field(600.0, gt=0, description="cap on a timeout the action asks for")
    max_output_chars: int = Field(
        10_000, ge=100, description="observation output kept: half head, half tail (terminus-2 keeps 10,000 bytes)"
    )
    max_context_tokens: int | None = Field(
        None, description="stop with context_exceeded once a call's prompt + completion reaches this"
    )
    system_prompt: str | None = Field(None, description="None: templates/prompts/agent_system.md")


class Turn(BaseModel):
    """One policy reply and what came of it."""

    index: int
    text: str = Field("", description="the reply's text content (may hold a ```bash block)")
    tool_call: ToolCall | None = None
    action: ActionKind
    command: str | None = None
    output: str = Field("", description="the command's stdout+stderr as the policy saw it (head + tail when truncated)")
    exit_code: int | None = None
    timed_out: bool = False
    output_truncated: bool = False
    output_chars: int = Field(
        0, description="length of the full output before truncation (bytes when the sandbox already cut it)"
    )
    warnings: list[str] = Field(default_factory=list, description="harness text, each line starting with [harness]")
    usage: TokenUsage = Field(default_factory=TokenUsage)
    finish_reason: str | None = None
    api_retries: int = 0
    started_at: datetime
    policy_seconds: float = 0.0
    exec_seconds: float = 0.0

    @property
    def observation(self) -> str:
        """The observation body: what the environment wrote back (empty when nothing ran)."""
        return observation_body(self.output, self.exit_code) if self.action == "command" else ""

    @property
    def warning(self) -> str | None:
        return WARNING_SEPARATOR.join(self.warnings) or None


class Episode(BaseModel):
    """One policy on one task: the transcript, why it stopped and (after verification) the reward."""

    task_name: str
    task_path: str | None = None
    policy: str
    model: str | None = None
    system_prompt: str
    instruction: str
    config: EpisodeConfig
    turns: list[Turn] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    error_type: str | None = None
    error_message: str | None = None
    reward: float | None = None
    rewards: dict[str, float] | None = None
    started_at: datetime
    finished_at: datetime | None = None
    seconds: float = 0.0

    @property
    def usage(self) -> TokenUsage:
        total = TokenUsage()
        for turn in self.turns:
            total = total + turn.usage
        return total

    @property
    def n_input_tokens(self) -> int:
        return self.usage.input_tokens

    @property
    def n_output_tokens(self) -> int:
        return self.usage.output_tokens

    @property
    def policy_seconds(self) -> float:
        return sum(turn.policy_seconds for turn in self.turns)

    def messages(self) -> list[dict[str, Any]]:
        return episode_messages(self)


def harness_warning(text: str) -> str:
    return text if text.startswith(WARNING_PREFIX) else WARNING_PREFIX + text


def observation_body(output: str, exit_code: int | None) -> str:
    """The command's output followed by its exit code on a line of its own."""
    if exit_code is None:
        return output
    separator = "" if not output or output.endswith("\n") else "\n"
    return f"{output}{separator}[exit code: {exit_code}]"


def observation_layout(body: str, warning: str | None) -> list[tuple[str, ObservationPieceKind]]:
    """An observation message's content as (text, kind) pieces: warning (if any), newline, body.
    The one definition of the layout: `render_observation` joins it, and the trainer tokenises it
    piece by piece so the warning and the body get masks of their own. See the module doc."""
    pieces: list[tuple[str, ObservationPieceKind]] = []
    if warning:
        pieces += [(warning, "warning"), (WARNING_SEPARATOR, "separator")]
    pieces.append((body, "body"))
    return pieces


def render_observation(body: str, warning: str | None) -> str:
    """An observation message's content, as a chat API receives it: `observation_layout` joined."""
    return "".join(text for text, _ in observation_layout(body, warning))


def episode_messages(episode: Episode) -> list[dict[str, Any]]:
    """The chat the policy saw, with observation body and warning as separate fields."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": episode.system_prompt},
        {"role": "user", "content": episode.instruction},
    ]
    for turn in episode.turns:
        assistant: dict[str, Any] = {"role": "assistant", "content": turn.text or None, "turn": turn.index}
        if turn.tool_call is not None:
            assistant["tool_calls"] = [turn.tool_call.to_api()]
        else:
            assistant["content"] = turn.text
        messages.append(assistant)
        if turn.action == "done":
            continue
        body, warning = turn.observation, turn.warning
        observation: dict[str, Any] = {"role": "tool" if turn.tool_call is not None else "user"}
        if turn.tool_call is not None:
            observation["tool_call_id"] = turn.tool_call.id
        observation.update(
            content=render_observation(body, warning),
            observation=body,
            warning=warning,
            exit_code=turn.exit_code,
            turn=turn.index,
        )
        messages.append(observation)
    return messages


API_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def api_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with only the keys a chat-completions API accepts."""
    return [{key: message[key] for key in API_MESSAGE_KEYS if key in message} for message in messages]
