"""Policies without a model: oracle (runs the task's solution) and nop (finishes at once).

They go through the same loop, transcript and trial as a model policy, so they check the loop
itself: the oracle must score 1 and nop 0 on every valid task.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from taskforge.agent.episode import ToolCall
from taskforge.agent.policy import PolicyReply
from taskforge.tasks import Task


def _turns_so_far(messages: list[dict[str, Any]]) -> int:
    return sum(message["role"] == "assistant" for message in messages)


def done_reply(turn: int = 0) -> PolicyReply:
    return PolicyReply(tool_call=ToolCall(id=f"call_done_{turn}", name="done", arguments="{}"))


def bash_reply(command: str, turn: int = 0, timeout_sec: float | None = None) -> PolicyReply:
    arguments: dict[str, Any] = {"command": command}
    if timeout_sec is not None:
        arguments["timeout_sec"] = timeout_sec
    return PolicyReply(tool_call=ToolCall(id=f"call_bash_{turn}", name="bash", arguments=json.dumps(arguments)))


class OraclePolicy:
    """Uploads solution/ to /solution, runs solve.sh (whole agent budget), then done."""

    name = "oracle"

    def __init__(self) -> None:
        self._command = "bash /solution/solve.sh"
        self._timeout_sec: float | None = None

    def setup(self, task: Task, sandbox) -> None:
        sandbox.upload_dir(task.solution_dir, "/solution")
        env = dict(task.config.solution.env)
        prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " if env else ""
        self._command = f"{prefix}bash /solution/solve.sh"
        self._timeout_sec = task.config.agent.timeout_sec

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        turn = _turns_so_far(messages)
        if turn == 0:
            return bash_reply(self._command, turn, self._timeout_sec)
        return done_reply(turn)


class NopPolicy:
    """Signals done on its first turn."""

    name = "nop"

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        return done_reply(_turns_so_far(messages))
