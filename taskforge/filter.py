"""The filter stage: keep the tasks a real model solves at least once in N attempts.

The attempts run through `taskforge.attempts` (crash-safe ledger, resume; see there) or, with
the Harbor backend, through Harbor's Job API (`taskforge.harbor_backend`); both end here, in
per-task pass rates over the ledger.

Outputs: runs/<run>/filter.json (per-task pass rates), kept.json and registry.json (a Harbor
registry: `harbor run --registry-path registry.json -d <set>-kept`) in --out (default: the task
set's folder when TASKS is one folder of tasks, else the run directory).

Measured difficulty (`bucket_of`, the one definition): a task's bucket by the pass rate of the
filter's model over the run's N attempts (errored attempts count as failed), OpenThoughts-TBLite's
split: easy >= 70%, medium 40-69%, hard 10-39%, extreme > 0 and < 10%, and "unsolved" (0%) apart,
since those are the dropped tasks. With N = 16 one pass is 6.25%: extreme means "solved once or
twice". It is not the generator's requested difficulty ([metadata] difficulty, `tasks.Difficulty`),
which filter.json and kept.json carry beside it as requested_difficulty.

Where it goes: filter.json and kept.json (per task), registry.json (`<set>-<bucket>` datasets of kept
tasks), and each task's task.toml as [metadata.measured] (`tasks.write_measured`: bucket, pass rate,
passes, attempts, errored attempts, model, run). That block is rewritten by every filter run that
completes and is left out of the task's checksum (`tasks.task_checksum`), so the verdicts in the run
ledgers stay valid and running the same command again reruns nothing. Not written by a
--stop-on-success run (its pass rates stop at the first success, so they are not rates) or with
--no-write-measured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from taskforge.agent.episode import EpisodeConfig
from taskforge.agent.policy import Policy
from taskforge.attempts import run_attempts
from taskforge.runner import Ledger, hold_run_dir, write_json
from taskforge.tasks import MeasuredDifficulty, Task, TaskLoadError, write_measured
from taskforge.trial import TrialRecord

# A task's bucket by the model's pass rate (not the generator's requested difficulty, tasks.Difficulty).
PassRateBucket = Literal["easy", "medium", "hard", "extreme", "unsolved"]
DIFFICULTY_THRESHOLDS: dict[str, float] = {
    "easy": 0.7,
    "medium": 0.4,
    "hard": 0.1,
    "extreme": 0.0,
}  # lower bounds; extreme is > 0
RUN_SETTINGS_FILE = "filter-run.json"


def bucket_of(pass_rate: float) -> PassRateBucket:
    """A task's measured difficulty from its pass rate (see the module docstring)."""
    if pass_rate <= 0:
        return "unsolved"
    for name in ("easy", "medium", "hard"):
        if pass_rate >= DIFFICULTY_THRESHOLDS[name]:
            return name  # type: ignore[return-value]
    return "extreme"


@dataclass
class FilterConfig:
    attempts: int = 16
    concurrency: int = 2
    min_success: int = 1  # a task is kept with at least this many passing attempts
    stop_on_success: bool = False  # stop a task's attempts once it is kept (pass rates then cover fewer attempts)
    write_measured: bool = True  # write each task's measured difficulty into its task.toml
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    price_input_per_mtok: float | None = None  # USD per million input tokens, for the cost column
    price_output_per_mtok: float | None = None


class TaskFilterResult(BaseModel):
    task_name: str
    task_path: str
    n_attempts: int
    n_passed: int
    n_errors: int  # attempts that ended without a reward (build, verifier errors): count as failed
    pass_rate: float
    difficulty: PassRateBucket  # measured: bucket_of(pass_rate)
    requested_difficulty: str | None = None  # the generator's, task.toml [metadata] difficulty
    kept: bool
    n_input_tokens: int
    n_output_tokens: int
    cost_usd: float | None = None
    stop_reasons: dict[str, int]


class FilterReport(BaseModel):
    run_dir: str
    backend: str
    harbor_env: str | None = None  # with --backend harbor: the Harbor environment the attempts ran in
    model: str | None
    attempts: int
    min_success: int
    thresholds: dict[str, float]
    tasks: list[TaskFilterResult]
    n_not_recorded: int = 0  # attempts that could not run; running the same command again retries them
    not_recorded_errors: list[str] = []
    kept_path: str | None = None
    registry_path: str | None = None
    dataset_name: str | None = None
    n_measured_written: int = 0  # task.toml files whose measured block this run wrote or changed
    measured_not_written: list[str] = []  # why a task.toml could not take its measured block

    @property
    def kept(self) -> list[TaskFilterResult]:
        return [t for t in self.tasks if t.kept]

    @property
    def n_input_tokens(self) -> int:
        return sum(t.n_input_tokens for t in self.tasks)

    @property
    def n_output_tokens(self) -> int:
        return sum(t.n_output_tokens for t in self.tasks)

    @property
    def cost_usd(self) -> float | None:
        costs = [t.cost_usd for t in self.tasks]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def filter_tasks(
    tasks: list[Task],
    run_dir: Path,
    policy_factory: Callable[[], Policy],
    config: FilterConfig,
    *,
    out_dir: Path | None = None,
    dataset_name: str | None = None,
    model: str | None = None,
) -> FilterReport:
    """Runs config.attempts episodes of the policy per task (resuming run_dir), writes the
    outputs and returns the report. Raises PolicyConfigError when the model cannot be used."""
    with hold_run_dir(run_dir):
        not_recorded = run_attempts(
            tasks,
            run_dir,
            policy_factory,
            attempts=config.attempts,
            concurrency=config.concurrency,
            episode=config.episode,
            stop_after_passes=config.min_success if config.stop_on_success else None,
            description="filter",
        )
        report = filter_report(
            tasks,
            Ledger(run_dir / "ledger.jsonl", TrialRecord).load(),
            config,
            run_dir=run_dir,
            backend="docker",
            model=model,
        )
        report.n_not_recorded, report.not_recorded_errors = len(not_recorded), not_recorded[:20]
        write_outputs(
            report,
            out_dir or run_dir,
            dataset_name or dataset_name_for(out_dir or run_dir),
            write_measured=config.write_measured and not config.stop_on_success,
        )
    return report


def filter_report(
    tasks: list[Task],
    records: list[TrialRecord],
    config: FilterConfig,
    *,
    run_dir: Path,
    backend: str,
    model: str | None,
) -> FilterReport:
    """Per-task pass rates over the ledger's attempts (attempt < config.attempts, one per index)."""
    by_task: dict[str, dict[int, TrialRecord]] = {str(t.path): {} for t in tasks}
    for record in records:
        if record.task_path in by_task and record.attempt < config.attempts:
            by_task[record.task_path].setdefault(record.attempt, record)
    results = []
    for task in tasks:
        attempts = list(by_task[str(task.path)].values())
        n_passed = sum(r.passed for r in attempts)
        pass_rate = n_passed / len(attempts) if attempts else 0.0
        n_in = sum(r.n_input_tokens or 0 for r in attempts)
        n_out = sum(r.n_output_tokens or 0 for r in attempts)
        results.append(
            TaskFilterResult(
                task_name=task.name,
                task_path=str(task.path),
                n_attempts=len(attempts),
                n_passed=n_passed,
                n_errors=sum(r.reward is None for r in attempts),
                pass_rate=pass_rate,
                difficulty=bucket_of(pass_rate),
                requested_difficulty=_requested_difficulty(task),
                kept=n_passed >= config.min_success,
                n_input_tokens=n_in,
                n_output_tokens=n_out,
                cost_usd=_cost(n_in, n_out, config),
                stop_reasons=dict(Counter(r.stop_reason or r.error_type or "unknown" for r in attempts)),
            )
        )
    return FilterReport(
        run_dir=str(run_dir),
        backend=backend,
        model=model,
        attempts=config.attempts,
        min_success=config.min_success,
        thresholds=DIFFICULTY_THRESHOLDS,
        tasks=results,
    )


def _requested_difficulty(task: Task) -> str | None:
    """The generator's difficulty from task.toml's [metadata] (other task sets may not have one)."""
    requested = task.metadata.get("difficulty")
    return None if requested is None else str(requested)


def _cost(n_input: int, n_output: int, config: FilterConfig) -> float | None:
    if config.price_input_per_mtok is None and config.price_output_per_mtok is None:
        return None
    return n_input / 1e6 * (config.price_input_per_mtok or 0.0) + n_output / 1e6 * (config.price_output_per_mtok or 0.0)


def dataset_name_for(out_dir: Path) -> str:
    """The registry's dataset name: the output folder's name (the task set's, by default)."""
    return out_dir.resolve().name or "tasks"


def write_outputs(report: FilterReport, out_dir: Path, dataset_name: str, *, write_measured: bool = True) -> None:
    """filter.json in the run dir; kept.json and a Harbor registry.json in out_dir; with write_measured,
    each task's measured difficulty in its task.toml. Nothing while attempts could not run: a task
    missing them would be dropped (and measured) on attempts that never happened."""
    if report.n_not_recorded:
        return
    run_dir = Path(report.run_dir)
    if write_measured:
        write_measured_difficulty(report)
    kept_path, registry_path = out_dir / "kept.json", out_dir / "registry.json"
    report.kept_path, report.registry_path, report.dataset_name = (
        str(kept_path),
        str(registry_path),
        f"{dataset_name}-kept",
    )
    write_json(run_dir / "filter.json", report.model_dump())
    write_json(
        kept_path,
        {
            "run": str(run_dir),
            "backend": report.backend,
            "harbor_env": report.harbor_env,
            "model": report.model,
            "attempts": report.attempts,
            "min_success": report.min_success,
            "thresholds": report.thresholds,
            "written_at": datetime.now(UTC).isoformat(),
            "kept": [
                t.model_dump(
                    include={
                        "task_name",
                        "task_path",
                        "n_passed",
                        "n_attempts",
                        "pass_rate",
                        "difficulty",
                        "requested_difficulty",
                    }
                )
                for t in report.kept
            ],
            "dropped": [t.task_name for t in report.tasks if not t.kept],
        },
    )
    write_json(registry_path, harbor_registry(dataset_name, report))


def write_measured_difficulty(report: FilterReport) -> None:
    """Each task's [metadata.measured] block (tasks.write_measured). A task.toml that cannot take it
    (read-only, [metadata] as an inline table) is named in report.measured_not_written; the run's
    other outputs are written all the same."""
    run_name = Path(report.run_dir).name
    for result in report.tasks:
        measured = MeasuredDifficulty(
            difficulty=result.difficulty,
            pass_rate=result.pass_rate,
            n_passed=result.n_passed,
            n_attempts=result.n_attempts,
            n_errors=result.n_errors,
            model=report.model,
            run=run_name,
        )
        try:
            report.n_measured_written += write_measured(Path(result.task_path), measured)
        except (OSError, TaskLoadError) as exc:
            report.measured_not_written.append(str(exc))


def harbor_registry(dataset_name: str, report: FilterReport) -> list[dict]:
    """Harbor's registry format (a list of DatasetSpec): `<name>-kept` with every kept task and
    `<name>-<difficulty>` per bucket; task paths are absolute (Harbor reads them as given)."""
    from harbor.models.registry import DatasetSpec, RegistryTaskId

    def spec(name: str, tasks: list[TaskFilterResult], description: str) -> dict:
        entries = [RegistryTaskId(name=t.task_name, path=Path(t.task_path)) for t in tasks]
        return DatasetSpec(name=name, version="1.0", description=description, tasks=entries).model_dump(
            mode="json", exclude={"metrics"}
        )

    model = report.model or "the policy"
    datasets = [
        spec(
            f"{dataset_name}-kept",
            report.kept,
            f"Tasks {model} solved at least {report.min_success} time(s) in {report.attempts} attempts",
        )
    ]
    for difficulty in ("easy", "medium", "hard", "extreme"):
        bucket = [t for t in report.kept if t.difficulty == difficulty]
        if bucket:
            datasets.append(
                spec(
                    f"{dataset_name}-{difficulty}",
                    bucket,
                    f"Kept tasks of measured difficulty {difficulty} ({model}, {report.attempts} attempts)",
                )
            )
    return datasets
