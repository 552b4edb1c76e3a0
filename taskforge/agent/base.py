"""The contract between a trial and whatever acts in the sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from taskforge.sandbox.base import Sandbox
from taskforge.tasks import Task


class AgentTimeoutError(RuntimeError):
    """The agent ran past the task's [agent] timeout_sec. The trial is still verified."""


@dataclass
class AgentOutcome:
    """What an agent reports back; token counts stay None for agents without a model."""

    n_input_tokens: int | None = None
    n_output_tokens: int | None = None
    n_cache_tokens: int | None = None
    cost_usd: float | None = None
    timed_out: bool = False  # the agent stopped at its time limit; the trial is still verified
    stop_reason: str | None = None  # why a multi-turn agent stopped (taskforge.agent.episode.StopReason)
    n_turns: int | None = None
    notices: list[str] = field(default_factory=list)  # the sandbox's notices on the agent's commands
    metadata: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    name: str
    version: str

    def run(self, task: Task, sandbox: Sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome: ...
