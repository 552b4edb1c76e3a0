"""Scripted players: everything that acts without a model, in one place.

Two kinds, for the two ways a trial can be driven:
- trial agents (`OracleAgent`, `NopAgent`, `NearMissAgent`) act on the sandbox directly, as Harbor's
  oracle and nop agents do: `taskforge validate` runs every task with each (oracle must score 1, nop
  and every near-miss solution 0);
- policies (`OraclePolicy`, `NopPolicy`, `SolutionTextPolicy`, `ExplorerPolicy`) go through the
  agent loop like a model, so their episodes are transcripts: they check the loop itself and are
  the expert demonstrations of SFT and the held-out transcripts of the env-CE measure.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

from taskforge.agent.base import AgentOutcome, AgentTimeoutError
from taskforge.agent.episode import ToolCall
from taskforge.agent.policy import PolicyReply
from taskforge.sandbox.base import Sandbox
from taskforge.tasks import Task

# ---------------------------------------------------------------------------------------------
# Trial agents


class OracleAgent:
    """Uploads solution/ to /solution and runs solve.sh, as Harbor's oracle agent does."""

    name = "oracle"
    version = "1.0"
    script = "solve.sh"  # relative to solution/

    def run(self, task: Task, sandbox: Sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        sandbox.upload_dir(task.solution_dir, "/solution")
        result = sandbox.exec(f"bash /solution/{self.script}", timeout_sec, env=dict(task.config.solution.env))
        logs_dir.mkdir(parents=True, exist_ok=True)
        (logs_dir / f"{self.name}.txt").write_bytes(result.output_bytes)
        if result.timed_out:
            raise AgentTimeoutError(f"solution/{self.script} ran past the agent timeout of {timeout_sec:g} s")
        # What the sandbox saw (process limit, OOM, disk): validate names it instead of "scored 0".
        return AgentOutcome(metadata={"exit_code": result.exit_code}, notices=list(result.notices))


class NearMissAgent(OracleAgent):
    """Runs one near-miss solution, solution/near_miss/<slug>.sh, as the oracle runs solve.sh: a
    solution right but for one stated requirement, which a well-made task scores 0."""

    version = "1.0"

    def __init__(self, slug: str):
        self.slug = slug
        self.name = near_miss_agent_name(slug)
        self.script = f"near_miss/{slug}.sh"


def near_miss_agent_name(slug: str) -> str:
    """The agent name a near-miss trial is recorded under (ledger, trial directory)."""
    return f"near_miss-{slug}"


class NopAgent:
    """Does nothing: a well-made task scores 0 on its fresh environment."""

    name = "nop"
    version = "1.0"

    def run(self, task: Task, sandbox: Sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        return AgentOutcome()


# ---------------------------------------------------------------------------------------------
# Policies for the agent loop


def turns_so_far(messages: list[dict[str, Any]]) -> int:
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

    def setup(self, task: Task, sandbox: Sandbox) -> None:
        sandbox.upload_dir(task.solution_dir, "/solution")
        env = dict(task.config.solution.env)
        prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " if env else ""
        self._command = f"{prefix}bash /solution/solve.sh"
        self._timeout_sec = task.config.agent.timeout_sec

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        turn = turns_so_far(messages)
        if turn == 0:
            return bash_reply(self._command, turn, self._timeout_sec)
        return done_reply(turn)


class NopPolicy:
    """Signals done on its first turn."""

    name = "nop"

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        return done_reply(turns_so_far(messages))


def solution_action(task_dir: Path) -> str:
    """solve.sh without its shebang, comments, blank lines and `set -e` boilerplate."""
    lines = (Path(task_dir) / "solution" / "solve.sh").read_text().splitlines()
    kept = [
        line
        for line in lines
        if line.strip() and not line.lstrip().startswith("#") and not line.strip().startswith("set -")
    ]
    return "\n".join(kept)


def solution_command(task_dir: Path) -> str:
    """The task's whole solve.sh as one command, for players that can only type (a scripted API
    model): other files of solution/ are unpacked to /solution first."""
    solution = Path(task_dir) / "solution"
    solve = (solution / "solve.sh").read_text()
    # Near-miss solutions are validate's business, not the player's.
    others = [
        p
        for p in sorted(solution.rglob("*"))
        if p.is_file() and p.name != "solve.sh" and p.relative_to(solution).parts[0] != "near_miss"
    ]
    if not others:
        return solve
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in others:
            tar.add(path, arcname=path.relative_to(solution).as_posix())
    packed = base64.b64encode(buffer.getvalue()).decode()
    return f"mkdir -p /solution && echo {packed} | base64 -d | tar -xz -C /solution\n{solve}"


class SolutionTextPolicy:
    """Types the task's solution as one command, then says DONE (plain-text action format)."""

    name = "oracle-text"

    def __init__(self, task_dir: Path):
        self.command = solution_action(task_dir)

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        turn = turns_so_far(messages)
        return PolicyReply(text=f"```bash\n{self.command}\n```" if turn == 0 else "DONE")


_PATH = re.compile(r"(?<![\w.])(/(?:[\w.-]+/)*[\w.-]+)")


def look_commands(instruction: str, limit: int = 2) -> list[str]:
    """Commands a careful engineer runs first: list the first directory the instruction names,
    then peek at the first file it names (missing files give real error output too)."""
    paths = list(dict.fromkeys(_PATH.findall(instruction)))
    commands = []
    if paths:
        first = paths[0]
        directory = first if "." not in first.rsplit("/", 1)[-1] else (first.rsplit("/", 1)[0] or "/")
        commands.append(f"ls -la {directory}")
    files = [p for p in paths if "." in p.rsplit("/", 1)[-1]]
    if files:
        commands.append(f"head -n 5 {files[0]}")
    return commands[:limit]


class ExplorerPolicy:
    """Looks around (ls, head), then types the solution, then says DONE. Its episodes carry rich
    observations: demonstrations that teach exploring, and held-out transcripts for the env CE."""

    name = "explorer"

    def __init__(self, task_dir: Path, instruction: str):
        self.actions = [*look_commands(instruction), solution_action(task_dir)]

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        turn = turns_so_far(messages)
        return PolicyReply(text=f"```bash\n{self.actions[turn]}\n```" if turn < len(self.actions) else "DONE")


def demonstrator_policy(name: str, task: Task):
    """The scripted demonstrator called `name` for one task: oracle-text or explorer."""
    if name == "explorer":
        return ExplorerPolicy(task.path, task.instruction)
    if name == "oracle-text":
        return SolutionTextPolicy(task.path)
    raise ValueError(f"unknown demonstrator {name!r}: use oracle-text or explorer")
