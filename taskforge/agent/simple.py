"""The two agents every task is validated with: oracle (runs solution/solve.sh) and nop."""

from __future__ import annotations

from pathlib import Path

from taskforge.agent.base import AgentOutcome, AgentTimeoutError
from taskforge.sandbox.docker import DockerSandbox
from taskforge.tasks import Task


class OracleAgent:
    """Uploads solution/ to /solution and runs solve.sh, as Harbor's oracle agent does."""

    name = "oracle"
    version = "1.0"

    def run(self, task: Task, sandbox: DockerSandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        sandbox.upload_dir(task.solution_dir, "/solution")
        result = sandbox.exec("bash /solution/solve.sh", timeout_sec, env=dict(task.config.solution.env))
        logs_dir.mkdir(parents=True, exist_ok=True)
        (logs_dir / "oracle.txt").write_bytes(result.output_bytes)
        if result.timed_out:
            raise AgentTimeoutError(f"solution/solve.sh ran past the agent timeout of {timeout_sec:g} s")
        return AgentOutcome(metadata={"exit_code": result.exit_code})


class NopAgent:
    """Does nothing: a well-made task scores 0 on its fresh environment."""

    name = "nop"
    version = "1.0"

    def run(self, task: Task, sandbox: DockerSandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        return AgentOutcome()


AGENTS = {"oracle": OracleAgent, "nop": NopAgent}
