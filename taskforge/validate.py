"""`taskforge validate`: per task, the environment builds, the oracle scores 1.0, nop scores 0.0, and
every near-miss solution (solution/near_miss/<name>.sh: right but for one stated requirement) 0.0."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from taskforge.agent.scripted import NearMissAgent, NopAgent, OracleAgent
from taskforge.runner import Ledger, hold_run_dir, run_concurrently, trial_dir_name, write_json
from taskforge.tasks import Task, TaskLoadError, discover_task_dirs, load_task
from taskforge.trial import TrialRecord, retire_changed_tasks, run_trial

Status = Literal[
    "passed",
    "invalid_task",
    "build_failed",
    "solution_missing",
    "oracle_failed",
    "nop_passed",
    "near_miss_passed",
    "verifier_error",
    "timeout",
]


class TaskValidation(BaseModel):
    task_name: str
    task_path: str
    status: Status
    detail: str = ""
    oracle_reward: float | None = None
    nop_reward: float | None = None
    # near-miss name -> its reward; empty when the task has none or failed before they ran
    near_miss_rewards: dict[str, float | None] = {}
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def classify(oracle: TrialRecord | None, nop: TrialRecord | None) -> tuple[Status, str]:
    """Names the first reason a task fails validation, or 'passed'."""
    for record in (oracle, nop):
        if record is not None and record.error_kind == "build_failed":
            return "build_failed", _short(record.error_message)
    if oracle is not None:
        said = "".join(f"; {notice}" for notice in oracle.notices)  # what the sandbox saw the oracle do
        status = _trial_problem(oracle)
        if status:
            return status, f"oracle: {_short(oracle.error_message)}{said}"
        if oracle.reward != 1.0:
            return (
                "oracle_failed",
                f"oracle scored {oracle.reward:g} (needs 1.0){said}; see {oracle.trial_dir}/verifier/test-stdout.txt",
            )
    if nop is not None:
        status = _trial_problem(nop)
        if status:
            return status, f"nop: {_short(nop.error_message)}"
        if nop.reward != 0.0:
            return "nop_passed", f"nop scored {nop.reward:g} (needs 0.0): the tests pass on the untouched environment"
    return "passed", ""


def classify_near_misses(records: Mapping[str, TrialRecord]) -> tuple[Status, str]:
    """Names the first near-miss (by name) that scored above 0 or could not be graded, or 'passed'.
    A near-miss that ran past its timeout but was graded 0 is a near-miss caught."""
    for slug, record in sorted(records.items()):
        if record.reward is None:
            status = _trial_problem(record) or "verifier_error"
            return status, f"near-miss {slug}: {_short(record.error_message)}"
        if record.reward > 0.0:
            return (
                "near_miss_passed",
                f"near-miss solution {slug} scored {record.reward:g} (needs 0.0): the tests do not check the "
                f"requirement it skips; see {record.trial_dir}/verifier/test-stdout.txt",
            )
    return "passed", ""


def _trial_problem(record: TrialRecord) -> Status | None:
    if record.error_kind in ("agent_timeout", "verifier_timeout") or record.agent_timed_out:
        return "timeout"
    if record.error_kind is not None:
        return "verifier_error"
    return None


def _short(message: str | None, limit: int = 1500) -> str:
    """The message, or its start and its end when long: a build error's cause is in its last lines."""
    message = (message or "").strip()
    if len(message) <= limit:
        return message
    head = limit // 3
    return message[:head] + "\n...\n" + message[-(limit - head - 5) :]


def validate_task(
    task: Task,
    trials_dir: Path,
    *,
    finished: Mapping[str, TrialRecord] | None = None,
    on_record: Callable[[TrialRecord], None] | None = None,
    near_misses: bool = True,
) -> TaskValidation:
    """Runs the oracle and nop trials of one task, then (when both are right and `near_misses`) one
    trial per near-miss solution; trials in `finished` (by agent name) are not run again. Hands each
    new record to `on_record` (a ledger's append) and classifies the outcome."""
    finished = finished or {}
    records: dict[str, TrialRecord] = {}
    solve_sh = task.solution_dir / "solve.sh"
    # Without solve.sh the oracle has nothing to run: name that, as Harbor does, rather than "scored 0".
    agents = (OracleAgent(), NopAgent()) if solve_sh.is_file() else (NopAgent(),)
    for agent in agents:
        if agent.name in finished:
            records[agent.name] = finished[agent.name]
            continue
        if agent.name == "nop" and "oracle" in records and records["oracle"].error_kind == "build_failed":
            # The same build would fail again; record nop as not run for the same reason.
            record = records["oracle"].model_copy(
                update={"agent": "nop", "trial_name": records["oracle"].trial_name.replace("__oracle", "__nop")}
            )
            if on_record is not None:
                on_record(record)
        else:
            record = _run_and_record(task, agent, trials_dir, on_record)
        records[agent.name] = record
    if "oracle" in records:
        status, detail = classify(records["oracle"], records["nop"])
    elif records["nop"].error_kind == "build_failed":
        status, detail = classify(None, records["nop"])
    else:
        status, detail = "solution_missing", f"{solve_sh} is missing: add solution/solve.sh that solves the task"
    near_miss_records: dict[str, TrialRecord] = {}
    if status == "passed" and near_misses:
        # Only a task whose oracle and nop are right says something through its near-misses.
        for slug in task.near_miss_scripts:
            agent = NearMissAgent(slug)
            record = finished.get(agent.name) or _run_and_record(task, agent, trials_dir, on_record)
            near_miss_records[slug] = records[agent.name] = record
        status, detail = classify_near_misses(near_miss_records)
    return TaskValidation(
        task_name=task.name,
        task_path=str(task.path),
        status=status,
        detail=detail,
        oracle_reward=records["oracle"].reward if "oracle" in records else None,
        nop_reward=records["nop"].reward,
        near_miss_rewards={slug: record.reward for slug, record in near_miss_records.items()},
        seconds=sum(r.seconds for r in records.values()),
    )


def _run_and_record(task: Task, agent, trials_dir: Path, on_record) -> TrialRecord:
    record = run_trial(task, agent, trials_dir / trial_dir_name(task, agent.name))
    # A sandbox failure (the container removed under the trial by Ctrl-C or SIGTERM, an engine
    # error) says nothing about the task: not recorded, so the next run tries again.
    if on_record is not None and record.error_kind != "sandbox_error":
        on_record(record)
    return record


def validate_tasks(
    paths: list[Path],
    run_dir: Path,
    *,
    jobs: int = 2,
    near_misses: bool = True,
    backend: Literal["docker", "harbor"] = "docker",
    harbor_env: str = "docker",
) -> list[TaskValidation]:
    """Validates every task under `paths`, resuming from run_dir/ledger.jsonl. Raises RunDirBusyError
    when another process is validating into run_dir. `near_misses=False` skips the near-miss trials.
    backend="harbor": Harbor's oracle and nop agents in Harbor's environment `harbor_env`
    (taskforge.harbor_backend; no near-misses there)."""
    with hold_run_dir(run_dir):
        if backend == "harbor":
            from taskforge.harbor_backend import validate_tasks_harbor

            return _written(
                run_dir, validate_tasks_harbor(discover_task_dirs(paths), run_dir, jobs=jobs, harbor_env=harbor_env)
            )
        return _validate_tasks(paths, run_dir, jobs=jobs, near_misses=near_misses)


def _written(run_dir: Path, results: list[TaskValidation]) -> list[TaskValidation]:
    write_json(run_dir / "validation.json", [r.model_dump() for r in results])
    return results


def _validate_tasks(paths: list[Path], run_dir: Path, *, jobs: int, near_misses: bool) -> list[TaskValidation]:
    task_dirs = discover_task_dirs(paths)
    ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
    retire_changed_tasks(ledger, task_dirs)
    finished: dict[str, dict[str, TrialRecord]] = {}
    for record in ledger.load():
        finished.setdefault(record.task_path, {})[record.agent] = record
    trials_dir = run_dir / "trials"

    def validate_one(task_dir: Path) -> TaskValidation:
        try:
            task = load_task(task_dir)
        except TaskLoadError as exc:
            return TaskValidation(
                task_name=task_dir.name, task_path=str(task_dir.resolve()), status="invalid_task", detail=str(exc)
            )
        return validate_task(
            task,
            trials_dir,
            finished=finished.get(str(task.path), {}),
            on_record=ledger.append,
            near_misses=near_misses,
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
