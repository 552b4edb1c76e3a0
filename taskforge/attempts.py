"""The attempt loop shared by `filter` and `eval`: N episodes of a policy per task, each one trial.

Every attempt is written under runs/<run>/trials/ (result.json in Harbor's TrialResult shape,
transcript.json with the Episode) and appended to runs/<run>/ledger.jsonl once it has finished:
the ledger is the commit point, so a run killed at any moment and started again repeats only the
attempts that were in flight, and never counts one twice. Attempts that could not run for
reasons outside the task (the model server stayed unreachable, a sandbox failure) are not
recorded, so the next run retries them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskforge.agent.episode import Episode, EpisodeConfig
from taskforge.agent.policy import Policy, PolicyUnavailableError
from taskforge.runner import Ledger, hold_run_dir, run_concurrently, trial_dir_name
from taskforge.tasks import Task
from taskforge.trial import TrialRecord, retire_changed_tasks, run_episode_trial


class AttemptsNotRunError(RuntimeError):
    """Attempts could not run (the model server kept failing, a sandbox failure): no verdict is written
    from a run missing them, since a task with no attempts would look like one the model cannot solve."""

    def __init__(self, errors: list[str], n_not_run: int | None = None):
        self.errors = errors
        self.n_not_run = len(errors) if n_not_run is None else n_not_run
        first = "\n  ".join(errors[:5])
        super().__init__(
            f"{self.n_not_run} attempt(s) could not run and were not recorded, so no verdict was written; "
            f"fix the cause and run the same command again to retry them:\n  {first}"
        )


@dataclass
class Attempt:
    """What one unit of work produced: a ledger record, nothing (skipped) or an unrecorded failure."""

    task: Task
    index: int
    record: TrialRecord | None = None
    not_recorded: str | None = None


def infrastructure_failure(record: TrialRecord, episode: Episode | None) -> str | None:
    """Why an attempt says nothing about the task (so it is retried, not recorded), or None."""
    if (
        episode is not None
        and episode.stop_reason == "policy_error"
        and episode.error_type == PolicyUnavailableError.__name__
    ):
        return f"{record.task_name}: {episode.error_message}"
    if episode is not None and episode.stop_reason == "sandbox_error":
        return f"{record.task_name}: sandbox failed during the episode: {episode.error_message}"
    if record.error_kind == "sandbox_error":
        return f"{record.task_name}: {record.error_message}"
    return None


def run_attempts(
    tasks: list[Task],
    run_dir: Path,
    policy_factory: Callable[[], Policy],
    *,
    attempts: int,
    concurrency: int,
    episode: EpisodeConfig,
    stop_after_passes: int | None = None,
    description: str = "attempts",
) -> list[str]:
    """Runs `attempts` episodes of the policy per task into run_dir (ledger.jsonl + trials/),
    resuming what is there. With stop_after_passes, a task's remaining attempts are skipped once
    it has that many passes. Returns the errors of attempts that could not run (not recorded, so
    running again retries them). Raises PolicyConfigError when the model cannot be used, and
    RunDirBusyError when another process is running attempts into run_dir."""
    with hold_run_dir(run_dir):
        ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
        retire_changed_tasks(ledger, [task.path for task in tasks])
        done = {(r.task_path, r.attempt) for r in ledger.load()}
        passes = Counter(r.task_path for r in ledger.load() if r.passed and r.attempt < attempts)
        build_failures: dict[str, TrialRecord] = {}
        lock = threading.Lock()
        policy_name = policy_factory().name
        trials_dir = run_dir / "trials"

        # Attempt-major order: every task gets its first attempt before any gets its second, so
        # --stop-on-success saves the most and the solve count climbs early.
        todo = [(task, i) for i in range(attempts) for task in tasks if (str(task.path), i) not in done]

        def attempt(item: tuple[Task, int]) -> Attempt:
            task, index = item
            with lock:
                if stop_after_passes is not None and passes[str(task.path)] >= stop_after_passes:
                    return Attempt(task, index)
                failed_build = build_failures.get(str(task.path))
            name = trial_dir_name(task, policy_name, index)
            if failed_build is not None:  # the same image would fail to build again
                record = failed_build.model_copy(
                    update={"attempt": index, "trial_name": name, "trial_dir": str(trials_dir / name), "seconds": 0.0}
                )
            else:
                record, episode_ = run_episode_trial(task, policy_factory(), trials_dir / name, episode, attempt=index)
                problem = infrastructure_failure(record, episode_)
                if problem is not None:
                    return Attempt(task, index, not_recorded=problem)
            ledger.append(record)
            with lock:
                passes[str(task.path)] += record.passed
                if record.error_kind == "build_failed":
                    build_failures[str(task.path)] = record
            return Attempt(task, index, record=record)

        solved = {path for path, n in passes.items() if n > 0}
        tally = Counter(attempts=len(done), passed=sum(passes.values()))
        not_recorded: list[str] = []

        def show(result: Attempt, progress, bar) -> None:
            if result.not_recorded:
                not_recorded.append(result.not_recorded)
            if result.record is not None:
                tally["attempts"] += 1
                tally["passed"] += result.record.passed
                if result.record.passed:
                    solved.add(str(result.task.path))
            status = (
                f"[green]{len(solved)}/{len(tasks)} tasks solved[/] · "
                f"{tally['passed']}/{tally['attempts']} attempts passed"
            )
            if not_recorded:
                status += f" · [red]{len(not_recorded)} failed to run[/]"
            progress.update(bar, status=status)

        label = description if not done else f"{description} (resuming: {len(done)} done)"
        run_concurrently(todo, attempt, jobs=concurrency, description=label, on_done=show)
        return not_recorded
