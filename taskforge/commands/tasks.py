"""Commands that make and check task sets: generate, lint, validate."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taskforge.commands.common import (
    HARBOR_ENV_HELP,
    PathsArg,
    RunOption,
    RunsDirOption,
    check_backend_or_exit,
    console,
    exits_on_failure,
    fail,
    run_dir_for,
    sorted_resolved,
    task_dirs_or_exit,
)
from taskforge.forge.base import DIFFICULTIES


def lint(paths: PathsArg) -> None:
    """Check Harbor task directories; print every problem with its file and the fix."""
    from taskforge.tasks import lint_task

    task_dirs = task_dirs_or_exit(paths)
    n_errors = n_warnings = 0
    for task_dir in task_dirs:
        for problem in lint_task(task_dir):
            style = "red" if problem.severity == "error" else "yellow"
            console.print(
                f"[{style}]{problem.severity}[/] {escape(str(problem.path))}: {escape(problem.message)}\n"
                f"    fix: {escape(problem.fix)}",
                highlight=False,
            )
            n_errors += problem.severity == "error"
            n_warnings += problem.severity == "warning"
    console.print(f"{len(task_dirs)} task(s) checked: {n_errors} error(s), {n_warnings} warning(s)")
    if n_errors:
        raise typer.Exit(1)


def validate(
    paths: PathsArg,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Tasks validated in parallel.")] = 2,
    run: RunOption = None,
    runs_dir: RunsDirOption = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start the run over instead of resuming it.")] = False,
    near_misses: Annotated[
        bool,
        typer.Option(
            help="Run each task's near-miss solutions (solution/near_miss/*.sh) after oracle and nop; "
            "each must score 0. About doubles the trials per task."
        ),
    ] = True,
    backend: Annotated[
        str, typer.Option(help="docker: taskforge's sandbox; harbor: Harbor's Job API with its oracle and nop agents.")
    ] = "docker",
    harbor_env: Annotated[
        str,
        typer.Option(help=HARBOR_ENV_HELP),
    ] = "docker",
) -> None:
    """Per task: the environment builds, the oracle scores 1.0, the nop agent 0.0, and each near-miss
    solution (solution/near_miss/NAME.sh, right but for one stated requirement) 0.0.

    Trials are written under runs/RUN/trials/ in Harbor's result layout, with a JSONL ledger;
    re-running resumes. Exits 1 when any task fails.
    """
    from taskforge.validate import validate_tasks

    check_backend_or_exit(backend, harbor_env)
    task_dirs = task_dirs_or_exit(paths)
    identity: dict = {"tasks": sorted_resolved(task_dirs)}
    if backend == "harbor":  # Harbor's trials live in their own run, per environment; docker runs keep their names
        identity |= {"backend": backend, "harbor_env": harbor_env}
    run_dir = run_dir_for(runs_dir, run, "validate", identity, fresh=fresh)
    with exits_on_failure():
        if backend == "harbor":
            from taskforge.harbor_backend import HarborBackendError

            try:
                results = validate_tasks(task_dirs, run_dir, jobs=jobs, backend="harbor", harbor_env=harbor_env)
            except HarborBackendError as exc:
                raise fail(str(exc)) from None
        else:
            results = validate_tasks(task_dirs, run_dir, jobs=jobs, near_misses=near_misses)
    print_validation(results, run_dir)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def print_validation(results, run_dir: Path) -> None:
    """A table of verdicts, then each failure's reason in full below it: a reason column wrapped
    to the terminal's last few characters is unreadable (a build error's last lines, a hint)."""
    console.print(escape(f"validation ({run_dir})"), highlight=False, soft_wrap=True)
    table = Table(show_lines=False)
    for column in ("task", "status", "oracle", "nop", "near-misses 0", "seconds"):
        table.add_column(column, overflow="fold")
    n_failed = sum(not r.passed for r in results)
    shown = [r for r in results if not r.passed] + [r for r in results if r.passed][: max(0, 20 - n_failed)]
    for r in shown:
        status = "[green]passed[/]" if r.passed else f"[red]{escape(r.status)}[/]"
        table.add_row(
            escape(r.task_name),
            status,
            _reward(r.oracle_reward),
            _reward(r.nop_reward),
            _near_misses_caught(r.near_miss_rewards),
            f"{r.seconds:.1f}",
        )
    console.print(table)
    if len(shown) < len(results):
        console.print(
            escape(f"(showing {len(shown)} of {len(results)} tasks; all are in {run_dir / 'validation.json'})")
        )
    for r in results:
        if not r.passed and r.detail:
            console.print(f"[red]{escape(r.task_name)}[/] {escape(r.status)}:", highlight=False)
            # soft_wrap: long lines go to the terminal as they are (copyable), not cut into columns
            console.print(textwrap.indent(escape(r.detail.rstrip()), "  "), highlight=False, soft_wrap=True)
    n_passed = len(results) - n_failed
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    breakdown = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    color = "green" if n_failed == 0 else "red"
    console.print(
        f"[{color}]{n_passed}/{len(results)} tasks passed validation[/] ({breakdown}). "
        f"Ledger: {escape(str(run_dir / 'ledger.jsonl'))}",
        highlight=False,
        soft_wrap=True,
    )


def _reward(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _near_misses_caught(rewards: dict[str, float | None]) -> str:
    """'caught/run': how many near-miss solutions scored 0, of those run."""
    return f"{sum(r == 0.0 for r in rewards.values())}/{len(rewards)}" if rewards else "-"


def _split(values: list[str] | None) -> list[str] | None:
    """Accepts repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def generate(
    n: Annotated[int, typer.Option("--n", "-n", help="Number of tasks to write (train + val).")] = 600,
    seed: Annotated[int, typer.Option(help="Seed; the same seed and --n give byte-identical output.")] = 0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (created; must be empty unless --force).")
    ] = Path("tasks/generated"),
    families: Annotated[
        list[str] | None,
        typer.Option(
            "--families",
            "-f",
            help="Only these families (repeat or comma-separate). Default: all; see --list-families.",
        ),
    ] = None,
    difficulty: Annotated[
        list[str] | None,
        typer.Option(
            "--difficulty", "-d", help=f"Only these difficulties ({', '.join(DIFFICULTIES)}); repeat or comma-separate."
        ),
    ] = None,
    val: Annotated[
        int,
        typer.Option(help="Hold out a family-stratified validation split of this many tasks: OUT/train and OUT/val."),
    ] = 0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes (output does not depend on it).")] = 2,
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    skeleton_cap: Annotated[
        int,
        typer.Option(
            min=1,
            help="Tasks that may share one instruction or solution skeleton (a program with its data abstracted) "
            "before a task over it is redrawn (a few times at most).",
        ),
    ] = 30,
    list_families: Annotated[bool, typer.Option("--list-families", help="Print the families and exit.")] = False,
    llm: Annotated[
        bool,
        typer.Option(
            "--llm",
            help="Generate through an LLM (staged, Endless-Terminals style) instead of the procedural families.",
            rich_help_panel="LLM generation",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="With --llm: the model name at the endpoint.", rich_help_panel="LLM generation"
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="With --llm: OpenAI-compatible endpoint (default: $OPENAI_BASE_URL).", rich_help_panel="LLM generation"
        ),
    ] = None,
    api_key_env: Annotated[
        str,
        typer.Option(help="With --llm: environment variable holding the API key.", rich_help_panel="LLM generation"),
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[
        int, typer.Option(help="With --llm: tasks drafted and validated at once.", rich_help_panel="LLM generation")
    ] = 4,
    repair_rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --llm: per task, how many failed gates go back to the failing stage with the error.",
            rich_help_panel="LLM generation",
        ),
    ] = 3,
) -> None:
    """Write procedural Harbor tasks: instruction, Docker environment, tests with embedded answers, oracle solution.

    Each set gets a manifest.jsonl and a Harbor registry.json (task paths relative to the set), so
    `cd OUT && harbor run --registry-path registry.json -d taskforge@VERSION -a oracle` runs it offline.
    """
    from taskforge.forge.families import FAMILIES
    from taskforge.forge.generate import GenerateError
    from taskforge.forge.generate import generate as generate_tasks

    if llm:
        _generate_with_llm(n, seed, out, model, base_url, api_key_env, concurrency, repair_rounds)
        return
    if list_families:
        table = Table(title=f"{len(FAMILIES)} families")
        for column in ("family", "domain", "what it asks"):
            table.add_column(column)
        for family in FAMILIES.values():
            table.add_row(family.name, family.domain, escape(family.summary))
        console.print(table)
        return
    try:
        summary = generate_tasks(
            n,
            seed,
            out,
            families=_split(families),
            difficulties=_split(difficulty),
            val=val,
            jobs=jobs,
            force=force,
            skeleton_cap=skeleton_cap,
        )
    except GenerateError as exc:
        raise fail(str(exc)) from None
    console.print(
        f"[green]wrote {summary['n']} tasks[/] from {len(summary['by_family'])} families in {summary['seconds']:.1f} s "
        f"({summary['tasks_per_sec']:.0f} tasks/s; {summary['redrawn']} redrawn as duplicates)"
    )
    console.print("by difficulty: " + ", ".join(f"{d} {c}" for d, c in summary["by_difficulty"].items()))
    if summary["symptom_share_medium_hard"] is not None:
        console.print(f"symptom-style share of medium+hard: {summary['symptom_share_medium_hard']:.1%}")
    programs = summary["skeletons"]
    console.print(
        f"programs: {programs['instruction']} distinct instruction skeletons, {programs['solution']} solution "
        f"skeletons (cap {programs['cap']} tasks each; {programs['redrawn_over_cap']} redrawn over it, "
        f"{programs['over_cap']} kept over it)"
    )
    for name, info in summary["sets"].items():
        console.print(f"[bold]{name}[/]: {info['tasks']} tasks in {info['path']}  dataset {info['dataset']}")
        console.print(f"  run with Harbor: {escape(info['harbor'])}", highlight=False, soft_wrap=True)


def _generate_with_llm(
    n: int,
    seed: int,
    out: Path,
    model: str | None,
    base_url: str | None,
    api_key_env: str,
    concurrency: int,
    repair_rounds: int,
) -> None:
    """`--llm`: staged LLM generation with the same validation gates; resumes from OUT."""
    from taskforge.forge.llm import LLMForgeConfig, generate_llm, print_summary

    if not model:
        raise fail("--llm needs --model NAME (and usually --base-url URL)")
    config = LLMForgeConfig(
        model=model,
        base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
        api_key_env=api_key_env,
        concurrency=concurrency,
        repair_rounds=repair_rounds,
    )
    with exits_on_failure("tasks"):
        records = generate_llm(n, seed, out, config)
    print_summary(records, out, console)
