"""`taskforge validate`: per task, the environment builds, the oracle scores 1.0, nop scores 0.0."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from taskforge.agent.simple import NopAgent, OracleAgent
from taskforge.runner import Ledger, run_concurrently, trial_dir_name, write_json
from taskforge.tasks import TaskLoadError, discover_task_dirs, load_task
from taskforge.trial import TrialRecord, run_trial

Status = Literal["passed", "invalid_task", "build_failed", "oracle_failed", "nop_passed", "verifier_error", "timeout"]
_TIMEOUTS = {"AgentTimeoutError", "VerifierTimeoutError"}
_VERIFIER_ERRORS = {"RewardFileNotFoundError", "RewardFileEmptyError", "InvalidRewardError", "VerifierError"}


class TaskValidation(BaseModel):
    task_name: str
    task_path: str
    status: Status
    detail: str = ""
    oracle_reward: float | None = None
    nop_reward: float | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def default_run_name(task_dirs: list[Path]) -> str:
    """Same inputs, same run: re-running a command resumes it."""
    digest = hashlib.sha256("\n".join(sorted(str(p.resolve()) for p in task_dirs)).encode()).hexdigest()[:10]
    return f"validate-{digest}"


def classify(oracle: TrialRecord | None, nop: TrialRecord | None) -> tuple[Status, str]:
    """Names the first reason a task fails validation, or 'passed'."""
    for record in (oracle, nop):
        if record is not None and record.error_type == "ImageBuildError":
            return "build_failed", _short(record.error_message)
    if oracle is not None:
        status = _trial_problem(oracle)
        if status:
            return status, f"oracle: {_short(oracle.error_message)}"
        if oracle.reward != 1.0:
            return "oracle_failed", f"oracle scored {oracle.reward:g} (needs 1.0); see {oracle.trial_dir}/verifier/test-stdout.txt"
    if nop is not None:
        status = _trial_problem(nop)
        if status:
            return status, f"nop: {_short(nop.error_message)}"
        if nop.reward != 0.0:
            return "nop_passed", f"nop scored {nop.reward:g} (needs 0.0): the tests pass on the untouched environment"
    return "passed", ""


def _trial_problem(record: TrialRecord) -> Status | None:
    if record.error_type in _TIMEOUTS or record.agent_timed_out:
        return "timeout"
    if record.error_type in _VERIFIER_ERRORS:
        return "verifier_error"
    if record.error_type is not None:
        return "verifier_error"
    return None


def _short(message: str | None, limit: int = 300) -> str:
    message = (message or "").strip()
    return message if len(message) <= limit else message[: limit - 3] + "..."


def validate_tasks(paths: list[Path], run_dir: Path, *, jobs: int = 2) -> list[TaskValidation]:
    """Validates every task under `paths`, resuming from run_dir/ledger.jsonl."""
    task_dirs = discover_task_dirs(paths)
    ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
    finished = {(r.task_path, r.agent): r for r in ledger.load()}
    trials_dir = run_dir / "trials"

    def validate_one(task_dir: Path) -> TaskValidation:
        try:
            task = load_task(task_dir)
        except TaskLoadError as exc:
            return TaskValidation(task_name=task_dir.name, task_path=str(task_dir.resolve()), status="invalid_task", detail=str(exc))
        records: dict[str, TrialRecord] = {}
        for agent in (OracleAgent(), NopAgent()):
            key = (str(task.path), agent.name)
            if key in finished:
                records[agent.name] = finished[key]
                continue
            if agent.name == "nop" and records["oracle"].error_type == "ImageBuildError":
                # The same build would fail again; record nop as not run for the same reason.
                record = records["oracle"].model_copy(update={"agent": "nop", "trial_name": records["oracle"].trial_name.replace("__oracle", "__nop")})
            else:
                record = run_trial(task, agent, trials_dir / trial_dir_name(task, agent.name))
            ledger.append(record)
            records[agent.name] = record
        status, detail = classify(records.get("oracle"), records.get("nop"))
        return TaskValidation(
            task_name=task.name,
            task_path=str(task.path),
            status=status,
            detail=detail,
            oracle_reward=records["oracle"].reward,
            nop_reward=records["nop"].reward,
            seconds=sum(r.seconds for r in records.values()),
        )

    def show(result: TaskValidation, progress, bar) -> None:
        counts = getattr(show, "counts", {"ok": 0, "failed": 0})
        counts["ok" if result.passed else "failed"] += 1
        show.counts = counts
        progress.update(bar, status=f"[green]{counts['ok']} ok[/] [red]{counts['failed']} failed[/]")

    results = run_concurrently(task_dirs, validate_one, jobs=jobs, description="validate", on_done=show)
    order = {str(p.resolve()): i for i, p in enumerate(task_dirs)}
    results.sort(key=lambda r: order.get(r.task_path, 0))
    write_json(run_dir / "validation.json", [r.model_dump() for r in results])
    return results
