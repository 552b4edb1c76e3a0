"""`taskforge filter`: keep the tasks a real model solves at least once in N attempts.

Every attempt is one trial (sandbox, agent episode, verifier) written under runs/<run>/trials/
(result.json in Harbor's TrialResult shape, transcript.json with the Episode) and appended to
runs/<run>/ledger.jsonl once it has finished: the ledger is the commit point, so a run killed at
any moment and started again repeats only the attempts that were in flight, and never counts
one twice. Attempts that could not run for reasons outside the task (the model server stayed
unreachable, a sandbox failure) are not recorded, so the next run retries them.

Outputs: runs/<run>/filter.json (per-task pass rates), kept.json and registry.json (a Harbor
registry: `harbor run --registry-path registry.json -d <set>-kept`) in --out (default: the task
set's folder when TASKS is one folder of tasks, else the run directory).

Difficulty buckets by pass rate, OpenThoughts-TBLite's split (easy >= 70%, medium 40-69%,
hard 10-39%, extreme < 10%) with "unsolved" (0%) apart, since those are the dropped tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel

from taskforge.agent.episode import Episode, EpisodeConfig
from taskforge.agent.loop import run_episode_trial
from taskforge.agent.policy import Policy
from taskforge.runner import Ledger, run_concurrently, trial_dir_name, write_json
from taskforge.tasks import Task
from taskforge.trial import TrialRecord

Difficulty = Literal["easy", "medium", "hard", "extreme", "unsolved"]
DIFFICULTY_THRESHOLDS: dict[str, float] = {"easy": 0.7, "medium": 0.4, "hard": 0.1, "extreme": 0.0}  # lower bounds; extreme is > 0
RUN_SETTINGS_FILE = "filter-run.json"


def difficulty_of(pass_rate: float) -> Difficulty:
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
    difficulty: Difficulty
    kept: bool
    n_input_tokens: int
    n_output_tokens: int
    cost_usd: float | None = None
    stop_reasons: dict[str, int]


class FilterReport(BaseModel):
    run_dir: str
    backend: str
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


@dataclass
class _Attempt:
    """What one unit of work produced: a ledger record, nothing (skipped) or an unrecorded failure."""

    task: Task
    index: int
    record: TrialRecord | None = None
    not_recorded: str | None = None


def _infrastructure_failure(record: TrialRecord, episode: Episode | None) -> str | None:
    """Why an attempt says nothing about the task (so it is retried, not recorded), or None."""
    if episode is not None and episode.stop_reason == "policy_error" and episode.error_type == "PolicyUnavailableError":
        return f"{record.task_name}: {episode.error_message}"
    if episode is not None and episode.stop_reason == "sandbox_error":
        return f"{record.task_name}: sandbox failed during the episode: {episode.error_message}"
    if record.error_type == "SandboxError":
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
    running again retries them). Raises PolicyConfigError when the model cannot be used."""
    ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
    done = {(r.task_path, r.attempt) for r in ledger.load()}
    passes = Counter(r.task_path for r in ledger.load() if r.passed and r.attempt < attempts)
    build_failures: dict[str, TrialRecord] = {}
    lock = threading.Lock()
    policy_name = policy_factory().name
    trials_dir = run_dir / "trials"

    # Attempt-major order: every task gets its first attempt before any gets its second, so
    # --stop-on-success saves the most and the solve count climbs early.
    todo = [(task, i) for i in range(attempts) for task in tasks if (str(task.path), i) not in done]

    def attempt(item: tuple[Task, int]) -> _Attempt:
        task, index = item
        with lock:
            if stop_after_passes is not None and passes[str(task.path)] >= stop_after_passes:
                return _Attempt(task, index)
            failed_build = build_failures.get(str(task.path))
        name = trial_dir_name(task, policy_name, index)
        if failed_build is not None:  # the same image would fail to build again
            record = failed_build.model_copy(update={"attempt": index, "trial_name": name, "trial_dir": str(trials_dir / name), "seconds": 0.0})
        else:
            record, episode_ = run_episode_trial(task, policy_factory(), trials_dir / name, episode, attempt=index)
            problem = _infrastructure_failure(record, episode_)
            if problem is not None:
                return _Attempt(task, index, not_recorded=problem)
        ledger.append(record)
        with lock:
            passes[str(task.path)] += record.passed
            if record.error_type == "ImageBuildError":
                build_failures[str(task.path)] = record
        return _Attempt(task, index, record=record)

    solved = {path for path, n in passes.items() if n > 0}
    tally = Counter(attempts=len(done), passed=sum(passes.values()))
    not_recorded: list[str] = []

    def show(result: _Attempt, progress, bar) -> None:
        if result.not_recorded:
            not_recorded.append(result.not_recorded)
        if result.record is not None:
            tally["attempts"] += 1
            tally["passed"] += result.record.passed
            if result.record.passed:
                solved.add(str(result.task.path))
        status = f"[green]{len(solved)}/{len(tasks)} tasks solved[/] · {tally['passed']}/{tally['attempts']} attempts passed"
        if not_recorded:
            status += f" · [red]{len(not_recorded)} failed to run[/]"
        progress.update(bar, status=status)

    label = description if not done else f"{description} (resuming: {len(done)} done)"
    run_concurrently(todo, attempt, jobs=concurrency, description=label, on_done=show)
    return not_recorded


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
    report = summarize(tasks, Ledger(run_dir / "ledger.jsonl", TrialRecord).load(), config, run_dir=run_dir, backend="docker", model=model)
    report.n_not_recorded, report.not_recorded_errors = len(not_recorded), not_recorded[:20]
    write_outputs(report, out_dir or run_dir, dataset_name or _default_dataset_name(out_dir or run_dir))
    return report


def summarize(tasks: list[Task], records: list[TrialRecord], config: FilterConfig, *, run_dir: Path, backend: str, model: str | None) -> FilterReport:
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
                difficulty=difficulty_of(pass_rate),
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


def _cost(n_input: int, n_output: int, config: FilterConfig) -> float | None:
    if config.price_input_per_mtok is None and config.price_output_per_mtok is None:
        return None
    return n_input / 1e6 * (config.price_input_per_mtok or 0.0) + n_output / 1e6 * (config.price_output_per_mtok or 0.0)


def _default_dataset_name(out_dir: Path) -> str:
    return out_dir.resolve().name or "tasks"


def write_outputs(report: FilterReport, out_dir: Path, dataset_name: str) -> None:
    """filter.json in the run dir; kept.json and a Harbor registry.json in out_dir."""
    run_dir = Path(report.run_dir)
    kept_path, registry_path = out_dir / "kept.json", out_dir / "registry.json"
    report.kept_path, report.registry_path, report.dataset_name = str(kept_path), str(registry_path), f"{dataset_name}-kept"
    write_json(run_dir / "filter.json", report.model_dump())
    write_json(
        kept_path,
        {
            "run": str(run_dir),
            "backend": report.backend,
            "model": report.model,
            "attempts": report.attempts,
            "min_success": report.min_success,
            "thresholds": report.thresholds,
            "written_at": datetime.now(timezone.utc).isoformat(),
            "kept": [t.model_dump(include={"task_name", "task_path", "n_passed", "n_attempts", "pass_rate", "difficulty"}) for t in report.kept],
            "dropped": [t.task_name for t in report.tasks if not t.kept],
        },
    )
    write_json(registry_path, harbor_registry(dataset_name, report))


def harbor_registry(dataset_name: str, report: FilterReport) -> list[dict]:
    """Harbor's registry format (a list of DatasetSpec): `<name>-kept` with every kept task and
    `<name>-<difficulty>` per bucket; task paths are absolute (Harbor reads them as given)."""
    from harbor.models.registry import DatasetSpec, RegistryTaskId

    def spec(name: str, tasks: list[TaskFilterResult], description: str) -> dict:
        entries = [RegistryTaskId(name=t.task_name, path=Path(t.task_path)) for t in tasks]
        return DatasetSpec(name=name, version="1.0", description=description, tasks=entries).model_dump(mode="json", exclude={"metrics"})

    model = report.model or "the policy"
    datasets = [spec(f"{dataset_name}-kept", report.kept, f"Tasks {model} solved at least {report.min_success} time(s) in {report.attempts} attempts")]
    for difficulty in ("easy", "medium", "hard", "extreme"):
        bucket = [t for t in report.kept if t.difficulty == difficulty]
        if bucket:
            datasets.append(spec(f"{dataset_name}-{difficulty}", bucket, f"Kept tasks with {difficulty} pass rate for {model}"))
    return datasets


# ---------------------------------------------------------------------------------------------
# Run settings: a run resumes only with the settings it was started with


def run_settings_mismatch(run_dir: Path, settings: dict) -> str | None:
    """Records the run's settings on first use; afterwards names what differs, or None."""
    path = run_dir / RUN_SETTINGS_FILE
    if not path.exists():
        write_json(path, settings)
        return None
    before = json.loads(path.read_text())
    changed = [f"{key}: {before.get(key)!r} -> {settings.get(key)!r}" for key in sorted(set(before) | set(settings)) if before.get(key) != settings.get(key)]
    return "; ".join(changed) or None


def default_run_name(task_dirs: list[Path], model: str, base_url: str | None, backend: str) -> str:
    """Same tasks, model and endpoint: the same run, so re-running the command resumes it."""
    key = "\n".join([*sorted(str(p.resolve()) for p in task_dirs), model, base_url or "", backend])
    return f"filter-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------
# The command


def filter_command(
    tasks: Annotated[list[Path], typer.Argument(help="Task directories, or folders holding task directories.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name as the endpoint knows it.")],
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else api.openai.com).")] = None,
    attempts: Annotated[int, typer.Option(min=1, help="Attempts per task.")] = 16,
    concurrency: Annotated[int, typer.Option("--concurrency", "-n", min=1, help="Attempts running at once (one sandbox each).")] = 2,
    min_success: Annotated[int, typer.Option(min=1, help="Keep a task with at least this many passing attempts.")] = 1,
    stop_on_success: Annotated[bool, typer.Option(help="Stop a task's attempts once it is kept (saves tokens; pass rates then cover fewer attempts).")] = False,
    max_turns: Annotated[int, typer.Option(min=1, help="Policy replies per episode.")] = 16,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the server's).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per reply.")] = 4096,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    request_timeout: Annotated[float, typer.Option(help="Seconds to wait for one reply before retrying.")] = 600.0,
    tools: Annotated[bool, typer.Option(help="Offer bash/done as chat-API tools; --no-tools: plain text (```bash blocks, DONE).")] = True,
    backend: Annotated[str, typer.Option(help="docker: taskforge's agent loop; harbor: Harbor's Job API with its terminus-2 agent.")] = "docker",
    price_input: Annotated[float | None, typer.Option(help="USD per million input tokens (adds a cost column).")] = None,
    price_output: Annotated[float | None, typer.Option(help="USD per million output tokens.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where kept.json and registry.json go (default: the task set folder when TASKS is one folder of tasks, else the run dir).")] = None,
    run: Annotated[str | None, typer.Option(help="Run name under --runs-dir; the default comes from tasks, model, endpoint and backend, so re-running resumes.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start the run over instead of resuming it.")] = False,
) -> None:
    """Run a model on every task ATTEMPTS times; keep the tasks it solves at least MIN_SUCCESS times.

    Attempts run in parallel sandboxes and are written under runs/<run>/trials/ (Harbor result.json
    plus transcript.json) with a crash-safe ledger: re-running the same command resumes. Writes
    kept.json and a Harbor registry.json. Exits 0 when the run completed (dropping tasks is not a
    failure), 1 when attempts could not run (bad key, unknown model, unreachable server), 2 on bad input.
    """
    from rich.console import Console

    from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
    from taskforge.agent.policy import PolicyConfigError
    from taskforge.sandbox.base import SandboxError
    from taskforge.tasks import TaskLoadError, discover_task_dirs, load_task

    err = Console(stderr=True)

    def fail(message: str, code: int) -> typer.Exit:
        err.print(f"[bold red]error:[/] {message}", highlight=False)
        return typer.Exit(code)

    if backend not in ("docker", "harbor"):
        raise fail(f"--backend must be docker or harbor, not {backend!r}", 2)
    try:
        task_dirs = discover_task_dirs(tasks)
        loaded = [load_task(d) for d in task_dirs]
    except TaskLoadError as exc:
        raise fail(str(exc), 2) from None
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    run_dir = runs_dir / (run or default_run_name(task_dirs, model, base_url, backend))
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"backend": backend, "model": model, "base_url": base_url, "max_turns": max_turns, "temperature": temperature, "max_tokens": max_tokens, "tools": tools}
    changed = run_settings_mismatch(run_dir, settings)
    if changed:
        raise fail(f"{run_dir} was started with other settings ({changed}); pass --fresh to start over or --run NAME for a new run", 2)

    out_dir = out if out is not None else _default_out_dir(tasks, run_dir)
    chat = ChatConfig(model=model, base_url=base_url, api_key_env=api_key_env, temperature=temperature, max_tokens=max_tokens, request_timeout_sec=request_timeout, use_tools=tools)
    config = FilterConfig(
        attempts=attempts,
        concurrency=concurrency,
        min_success=min_success,
        stop_on_success=stop_on_success,
        episode=EpisodeConfig(max_turns=max_turns),
        price_input_per_mtok=price_input,
        price_output_per_mtok=price_output,
    )
    try:
        if backend == "harbor":
            from taskforge.harbor_backend import HarborBackendError, filter_tasks_harbor

            try:
                report = filter_tasks_harbor(loaded, run_dir, chat, config, out_dir=out_dir)
            except HarborBackendError as exc:
                raise fail(str(exc), 2) from None
        else:
            policy = OpenAIChatPolicy(chat)  # one client (and connection pool) shared by all attempts
            report = filter_tasks(loaded, run_dir, lambda: policy, config, out_dir=out_dir, model=model)
    except PolicyConfigError as exc:
        raise fail(f"{exc}\nFinished attempts are in the ledger; fix this and run the same command to resume.", 1) from None
    except SandboxError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished attempts are in the ledger; run the same command again to resume.")
        raise typer.Exit(130) from None
    print_report(report)
    if report.n_not_recorded:
        first = "\n  ".join(report.not_recorded_errors[:5])
        raise fail(f"{report.n_not_recorded} attempt(s) could not run and were not recorded; run the same command again to retry them:\n  {first}", 1)


def _default_out_dir(paths: list[Path], run_dir: Path) -> Path:
    """The task set folder when one folder of tasks was given, else the run directory."""
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "task.toml").is_file():
        return paths[0]
    return run_dir


def print_report(report: FilterReport, limit: int = 30) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with_cost = report.cost_usd is not None
    table = Table(title=f"filter: {report.model or ''} x {report.attempts} attempts ({report.run_dir})")
    for column, justify in [("task", "left"), ("passed", "right"), ("pass rate", "right"), ("difficulty", "left"), ("kept", "left"), ("input tok", "right"), ("output tok", "right")] + ([("cost $", "right")] if with_cost else []):
        table.add_column(column, justify=justify, overflow="fold")
    ordered = sorted(report.tasks, key=lambda t: (-t.pass_rate, t.task_name))
    for t in ordered[:limit]:
        kept = "[green]yes[/]" if t.kept else "[red]no[/]"
        row = [t.task_name, f"{t.n_passed}/{t.n_attempts}", f"{t.pass_rate:.0%}", t.difficulty, kept, f"{t.n_input_tokens:,}", f"{t.n_output_tokens:,}"]
        table.add_row(*row, *([f"{t.cost_usd:.4f}"] if with_cost else []))
    n_attempts = sum(t.n_attempts for t in report.tasks)
    n_passed = sum(t.n_passed for t in report.tasks)
    table.add_section()
    totals = ["total", f"{n_passed}/{n_attempts}", f"{n_passed / n_attempts:.0%}" if n_attempts else "-", "", f"{len(report.kept)}/{len(report.tasks)}", f"{report.n_input_tokens:,}", f"{report.n_output_tokens:,}"]
    table.add_row(*totals, *([f"{report.cost_usd:.4f}"] if with_cost else []))
    console.print(table)
    if len(ordered) > limit:
        console.print(f"(showing {limit} of {len(ordered)} tasks; all are in {report.run_dir}/filter.json)")
    buckets = Counter(t.difficulty for t in report.tasks)
    breakdown = ", ".join(f"{name} {buckets[name]}" for name in ("easy", "medium", "hard", "extreme", "unsolved"))
    console.print(f"kept {len(report.kept)} of {len(report.tasks)} tasks ({breakdown}; easy >= 70%, medium >= 40%, hard >= 10%, extreme > 0%)")
    console.print(f"wrote {report.kept_path} and {report.registry_path}")
    if report.kept:
        console.print(f"  harbor run --registry-path {report.registry_path} -d {report.dataset_name} -a oracle --extra-docker-compose envs/harbor-fast.yaml")


def main() -> None:
    typer.run(filter_command)


if __name__ == "__main__":
    main()
