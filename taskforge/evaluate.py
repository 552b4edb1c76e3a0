"""The eval stage: k attempts per task of a policy; pass@1, pass@k, timeouts, turns and tokens per
family, domain and difficulty.

Episodes are stored exactly like the filter's (runs/<run>/ledger.jsonl, trials/<t>/result.json +
transcript.json), so `taskforge report` reads an eval run like any other and a re-run resumes.
The policy comes from a factory: an API model's client, or a checkpoint loaded by the trainer
(`trainer.checkpoint_eval`), which the command layer picks.
"""

from __future__ import annotations

from pathlib import Path

from taskforge.agent.episode import EpisodeConfig
from taskforge.attempts import AttemptsNotRunError, run_attempts
from taskforge.report import RunSummary, load_run
from taskforge.runner import hold_run_dir, write_json
from taskforge.tasks import Task


def evaluate(
    tasks: list[Task], run_dir: Path, policy_factory, *, attempts: int, concurrency: int, episode: EpisodeConfig
) -> tuple[RunSummary, list[str]]:
    """Runs the attempts (resuming), writes eval.json and returns the summary and the errors of
    attempts that could not run (always empty: when any could not run, AttemptsNotRunError is raised
    and no eval.json is written, so pass rates never count attempts that never ran)."""
    with hold_run_dir(run_dir):
        not_recorded = run_attempts(
            tasks,
            run_dir,
            policy_factory,
            attempts=attempts,
            concurrency=concurrency,
            episode=episode,
            description="eval",
        )
        if not_recorded:
            raise AttemptsNotRunError(not_recorded)
        summary = load_run(run_dir)
        write_json(run_dir / "eval.json", summary.model_dump())
    return summary, not_recorded
