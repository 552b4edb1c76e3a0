"""Scripts for ScriptedOpenAIServer that play an agent on real tasks.

The server is test-side, so a script may know the tasks: `competent(task_dirs)` finds the task
from the instruction in the conversation and sends the task's own solution/solve.sh as its
command, then signals done; `hopeless()` runs `ls` and gives up. Each speaks the protocol the
request asks for: tool calls when the request offers tools (taskforge's loop), a ```bash block
and DONE otherwise, and terminus-2's JSON (analysis, plan, commands, task_complete) when the
prompt is terminus-2's.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from taskforge.agent.scripted import solution_command
from taskforge.tasks import load_task
from taskforge.testing.openai_server import ChatRequest, Reply, ServerReply, bash, done, text

TERMINUS_MARKER = '"task_complete"'


def is_terminus(request: ChatRequest) -> bool:
    return not request.tools and TERMINUS_MARKER in request.text_of("user")


def _terminus(keystrokes: list[str], task_complete: bool) -> Reply:
    commands = [{"keystrokes": k, "duration": 1.0} for k in keystrokes]
    reply = {"analysis": "scripted", "plan": "scripted", "commands": commands, "task_complete": task_complete}
    return text(json.dumps(reply))


def _act(request: ChatRequest, command: str | None) -> ServerReply:
    """Turn 0: run `command`; afterwards: done, in the request's protocol."""
    if is_terminus(request):
        if request.turn == 0 and command is not None:
            encoded = base64.b64encode(command.encode()).decode()
            return _terminus([f"echo {encoded} | base64 -d > /tmp/.scripted.sh && bash /tmp/.scripted.sh\n"], False)
        return _terminus([], True)  # terminus-2 asks to confirm; the same reply confirms
    if request.turn == 0 and command is not None:
        return bash(command) if request.tools else text(f"Running it.\n```bash\n{command}\n```")
    return done() if request.tools else text("DONE")


def competent(task_dirs: list[Path]):
    """Solves any of `task_dirs` with its own solution (identified by the instruction)."""
    by_instruction = {load_task(Path(d)).instruction.strip(): solution_command(Path(d)) for d in task_dirs}

    def script(request: ChatRequest) -> ServerReply:
        prompt = request.text_of("user")
        for instruction, command in by_instruction.items():
            if instruction in prompt:
                return _act(request, command)
        return _act(request, "echo 'scripted server: unknown task' >&2; false")

    return script


def hopeless():
    """Looks around (`ls`) and gives up."""

    def script(request: ChatRequest) -> ServerReply:
        return _act(request, "ls")

    return script
