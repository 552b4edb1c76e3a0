"""The taskforge command line: a thin typer layer over the library functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HARBOR_TELEMETRY", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

app = typer.Typer(
    help="taskforge: verified terminal tasks, frontier-model solvability filtering and ECHO training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TASKS = REPO_ROOT / "tasks" / "sample"

PathsArg = Annotated[list[Path], typer.Argument(help="Task directories, or folders holding task directories.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the taskforge version."""
    from taskforge import __version__

    console.print(__version__)


@app.command()
def lint(paths: PathsArg) -> None:
    """Check Harbor task directories; print every problem with its file and the fix."""
    from taskforge.tasks import TaskLoadError, discover_task_dirs, lint_task

    try:
        task_dirs = discover_task_dirs(paths)
    except TaskLoadError as exc:
        raise _fail(str(exc)) from None
    n_errors = n_warnings = 0
    for task_dir in task_dirs:
        for problem in lint_task(task_dir):
            style = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{style}]{problem.severity}[/] {problem.path}: {problem.message}\n    fix: {problem.fix}", highlight=False)
            n_errors += problem.severity == "error"
            n_warnings += problem.severity == "warning"
    console.print(f"{len(task_dirs)} task(s) checked: {n_errors} error(s), {n_warnings} warning(s)")
    if n_errors:
        raise typer.Exit(1)


@app.command()
def validate(
    paths: PathsArg,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Tasks validated in parallel.")] = 2,
    run: Annotated[str | None, typer.Option(help="Run name under --runs-dir; the default is derived from the paths, so re-running resumes.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start the run over instead of resuming it.")] = False,
) -> None:
    """Per task: the environment builds, the oracle scores 1.0 and the nop agent 0.0.

    Trials are written under runs/<run>/trials/ in Harbor's result layout, with a JSONL ledger;
    re-running resumes. Exits 1 when any task fails.
    """
    from taskforge.tasks import TaskLoadError, discover_task_dirs
    from taskforge.validate import default_run_name, validate_tasks

    try:
        task_dirs = discover_task_dirs(paths)
    except TaskLoadError as exc:
        raise _fail(str(exc)) from None
    run_dir = runs_dir / (run or default_run_name(task_dirs))
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    results = _run_with_docker(lambda: validate_tasks(task_dirs, run_dir, jobs=jobs))
    _print_validation(results, run_dir)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def _run_with_docker(fn):
    from taskforge.sandbox.base import SandboxError

    try:
        return fn()
    except SandboxError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished trials are in the ledger; run the same command again to resume.")
        raise typer.Exit(130) from None


def _print_validation(results, run_dir: Path) -> None:
    table = Table(title=f"validation ({run_dir})", show_lines=False)
    for column in ("task", "status", "oracle", "nop", "seconds", "reason"):
        table.add_column(column, overflow="fold")
    shown = [r for r in results if not r.passed] + [r for r in results if r.passed][: max(0, 20 - sum(not r.passed for r in results))]
    for r in shown:
        status = "[green]passed[/]" if r.passed else f"[red]{r.status}[/]"
        table.add_row(r.task_name, status, _fmt(r.oracle_reward), _fmt(r.nop_reward), f"{r.seconds:.1f}", r.detail)
    console.print(table)
    if len(shown) < len(results):
        console.print(f"(showing {len(shown)} of {len(results)} tasks; all are in {run_dir / 'validation.json'})")
    n_passed = sum(r.passed for r in results)
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    breakdown = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    color = "green" if n_passed == len(results) else "red"
    console.print(f"[{color}]{n_passed}/{len(results)} tasks passed validation[/] ({breakdown}). Ledger: {run_dir / 'ledger.jsonl'}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (runs/<run>) or Harbor job directories (jobs/<job>).")],
    out: Annotated[Path | None, typer.Option(help="Where report.md, report.html and the PNG plots go (default: runs/report-<time>).")] = None,
) -> None:
    """Compare runs side by side: pass@1 (with CI), timeouts, turns, tokens, env-token CE."""
    from taskforge.report import RunNotFoundError, comparison_rows, load_run, write_report
    from taskforge.runner import new_run_name

    try:
        summaries = [load_run(path) for path in runs]
    except RunNotFoundError as exc:
        raise _fail(str(exc)) from None
    table = Table(title="runs")
    for column in ("run", "pass@1 (95% CI)", "timeouts", "turns", "tokens in/out", "env CE"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in comparison_rows(summaries):
        env_ce = row["env CE"] if row["env CE before"] == "-" else f"{row['env CE before']} -> {row['env CE']}"
        table.add_row(row["run"], f"{row['pass@1']} ({row['95% CI']})", row["timeouts"], row["turns"], f"{row['input tokens']}/{row['output tokens']}", env_ce)
    console.print(table)
    for s in summaries:
        for problem in s.missing:
            err.print(f"[yellow]incomplete[/] {s.name}: {problem}")
    out_dir = out or Path("runs") / new_run_name("report")
    md_path, html_path = write_report(summaries, out_dir)
    console.print(f"report: {html_path} (and {md_path})")


@app.command()
def demo(
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    jobs: Annotated[int, typer.Option("--jobs", "-j")] = 2,
) -> None:
    """The main job on the embedded default: validate the committed sample tasks."""
    if not SAMPLE_TASKS.is_dir():
        raise _fail(f"{SAMPLE_TASKS} is missing; this command runs from a taskforge checkout.")
    validate(paths=[SAMPLE_TASKS], jobs=jobs, run="demo-validate", runs_dir=runs_dir, fresh=False)


if __name__ == "__main__":
    app()
