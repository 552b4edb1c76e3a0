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
import io
import json
import tarfile
from pathlib import Path

from taskforge.tasks import load_task
from taskforge.testing.openai_server import ChatRequest, Reply, ServerReply, bash, done, text

TERMINUS_MARKER = '"task_complete"'


def is_terminus(request: ChatRequest) -> bool:
    return not request.tools and TERMINUS_MARKER in request.text_of("user")


def solution_command(task_dir: Path) -> str:
    """The task's solve.sh as one command; other files of solution/ are unpacked to /solution first."""
    solution = Path(task_dir) / "solution"
    solve = (solution / "solve.sh").read_text()
    others = [p for p in sorted(solution.rglob("*")) if p.is_file() and p.name != "solve.sh"]
    if not others:
        return solve
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in others:
            tar.add(path, arcname=path.relative_to(solution).as_posix())
    packed = base64.b64encode(buffer.getvalue()).decode()
    return f"mkdir -p /solution && echo {packed} | base64 -d | tar -xz -C /solution\n{solve}"


def _terminus(keystrokes: list[str], task_complete: bool) -> Reply:
    commands = [{"keystrokes": k, "duration": 1.0} for k in keystrokes]
    return text(json.dumps({"analysis": "scripted", "plan": "scripted", "commands": commands, "task_complete": task_complete}))


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
