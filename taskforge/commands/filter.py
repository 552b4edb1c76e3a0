"""`taskforge filter`: keep the tasks a real model solves at least once in N attempts."""

from __future__ import annotations

import os
from collections import Counter
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
    err,
    exits_on_failure,
    fail,
    load_tasks_or_exit,
    run_dir_for,
    sorted_resolved,
)
from taskforge.filter import FilterConfig, FilterReport

RUN_SETTINGS_FILE = "filter-run.json"


def filter_command(
    tasks: PathsArg,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name as the endpoint knows it.")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
            "(default: $OPENAI_BASE_URL, else api.openai.com)."
        ),
    ] = None,
    attempts: Annotated[int, typer.Option(min=1, help="Attempts per task.")] = 16,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-n", min=1, help="Attempts running at once (one sandbox each).")
    ] = 2,
    min_success: Annotated[int, typer.Option(min=1, help="Keep a task with at least this many passing attempts.")] = 1,
    stop_on_success: Annotated[
        bool,
        typer.Option(
            help="Stop a task's attempts once it is kept (saves tokens; pass rates then cover fewer attempts)."
        ),
    ] = False,
    max_turns: Annotated[int, typer.Option(min=1, help="Policy replies per episode.")] = 16,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the server's).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per reply.")] = 4096,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    request_timeout: Annotated[float, typer.Option(help="Seconds to wait for one reply before retrying.")] = 600.0,
    max_retries: Annotated[
        int, typer.Option(min=0, help="Retries of a failing request (5xx, 429, timeouts, malformed replies).")
    ] = 6,
    tools: Annotated[
        bool, typer.Option(help="Offer bash/done as chat-API tools; --no-tools: plain text (```bash blocks, DONE).")
    ] = True,
    backend: Annotated[
        str, typer.Option(help="docker: taskforge's agent loop; harbor: Harbor's Job API with its terminus-2 agent.")
    ] = "docker",
    harbor_env: Annotated[
        str,
        typer.Option(help=HARBOR_ENV_HELP),
    ] = "docker",
    price_input: Annotated[
        float | None, typer.Option(help="USD per million input tokens (adds a cost column).")
    ] = None,
    price_output: Annotated[float | None, typer.Option(help="USD per million output tokens.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where kept.json and registry.json go "
            "(default: the task set folder when TASKS is one folder of tasks, else the run dir)."
        ),
    ] = None,
    write_measured: Annotated[
        bool,
        typer.Option(
            help="Write each task's measured difficulty (pass rate, bucket, model) into its task.toml "
            "as [metadata.measured]; left out of the task's checksum, so it never reruns a task."
        ),
    ] = True,
    run: RunOption = None,
    runs_dir: RunsDirOption = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start the run over instead of resuming it.")] = False,
) -> None:
    """Run a model on every task ATTEMPTS times; keep the tasks it solves at least MIN_SUCCESS times.

    Attempts run in parallel sandboxes and are written under runs/RUN/trials/ (Harbor result.json
    plus transcript.json) with a crash-safe ledger: re-running the same command resumes. Writes
    kept.json and a Harbor registry.json. Exits 0 when the run completed (dropping tasks is not a
    failure), 1 when attempts could not run (bad key, unknown model, unreachable server), 2 on bad input.
    """
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
    from taskforge.attempts import AttemptsNotRunError
    from taskforge.filter import filter_tasks
    from taskforge.runner import run_settings_mismatch

    check_backend_or_exit(backend, harbor_env)
    task_dirs, loaded = load_tasks_or_exit(tasks)
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    identity = {"tasks": sorted_resolved(task_dirs), "model": model, "base_url": base_url, "backend": backend}
    if harbor_env != "docker":  # another sandbox is another run; docker runs keep the names they had
        identity["harbor_env"] = harbor_env
    run_dir = run_dir_for(runs_dir, run, "filter", identity, fresh=fresh)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "max_turns": max_turns,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "tools": tools,
    }
    if harbor_env != "docker":  # absent for docker, so runs started before --harbor-env resume
        settings["harbor_env"] = harbor_env
    changed = run_settings_mismatch(run_dir, settings, file=RUN_SETTINGS_FILE)
    if changed:
        raise fail(
            f"{run_dir} was started with other settings ({changed}); "
            "pass --fresh to start over or --run NAME for a new run"
        )

    out_dir = out if out is not None else _default_out_dir(tasks, run_dir)
    chat = ChatConfig(
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        temperature=temperature,
        max_tokens=max_tokens,
        request_timeout_sec=request_timeout,
        max_retries=max_retries,
        use_tools=tools,
    )
    config = FilterConfig(
        attempts=attempts,
        concurrency=concurrency,
        min_success=min_success,
        stop_on_success=stop_on_success,
        write_measured=write_measured,
        episode=EpisodeConfig(max_turns=max_turns),
        price_input_per_mtok=price_input,
        price_output_per_mtok=price_output,
    )
    with exits_on_failure("attempts"):
        if backend == "harbor":
            from taskforge.harbor_backend import HarborBackendError, filter_tasks_harbor

            try:
                report = filter_tasks_harbor(loaded, run_dir, chat, config, out_dir=out_dir, harbor_env=harbor_env)
            except HarborBackendError as exc:
                raise fail(str(exc)) from None
        else:
            policy = OpenAIChatPolicy(chat)  # one client (and connection pool) shared by all attempts
            report = filter_tasks(loaded, run_dir, lambda: policy, config, out_dir=out_dir, model=model)
    if report.n_not_recorded:  # no verdict was written (filter.write_outputs): say why, not a table of 0/0
        raise fail(str(AttemptsNotRunError(report.not_recorded_errors, report.n_not_recorded)), 1)
    print_report(report)
    if stop_on_success and write_measured:
        console.print(
            "measured difficulty not written to task.toml (--stop-on-success: pass rates stop at the first pass)"
        )


def _default_out_dir(paths: list[Path], run_dir: Path) -> Path:
    """The task set folder when one folder of tasks was given, else the run directory."""
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "task.toml").is_file():
        return paths[0]
    return run_dir


def print_report(report: FilterReport, limit: int = 30) -> None:
    with_cost = report.cost_usd is not None
    table = Table(title=escape(f"filter: {report.model or ''} x {report.attempts} attempts ({report.run_dir})"))
    columns = [
        ("task", "left"),
        ("passed", "right"),
        ("pass rate", "right"),
        ("difficulty", "left"),
        ("kept", "left"),
        ("input tok", "right"),
        ("output tok", "right"),
    ]
    for column, justify in columns + ([("cost $", "right")] if with_cost else []):
        table.add_column(column, justify=justify, overflow="fold")
    ordered = sorted(report.tasks, key=lambda t: (-t.pass_rate, t.task_name))
    for t in ordered[:limit]:
        kept = "[green]yes[/]" if t.kept else "[red]no[/]"
        row = [
            escape(t.task_name),
            f"{t.n_passed}/{t.n_attempts}",
            f"{t.pass_rate:.0%}",
            t.difficulty,
            kept,
            f"{t.n_input_tokens:,}",
            f"{t.n_output_tokens:,}",
        ]
        table.add_row(*row, *([f"{t.cost_usd:.4f}"] if with_cost else []))
    n_attempts = sum(t.n_attempts for t in report.tasks)
    n_passed = sum(t.n_passed for t in report.tasks)
    table.add_section()
    totals = [
        "total",
        f"{n_passed}/{n_attempts}",
        f"{n_passed / n_attempts:.0%}" if n_attempts else "-",
        "",
        f"{len(report.kept)}/{len(report.tasks)}",
        f"{report.n_input_tokens:,}",
        f"{report.n_output_tokens:,}",
    ]
    table.add_row(*totals, *([f"{report.cost_usd:.4f}"] if with_cost else []))
    console.print(table)
    if len(ordered) > limit:
        console.print(f"(showing {limit} of {len(ordered)} tasks; all are in {report.run_dir}/filter.json)")
    buckets = Counter(t.difficulty for t in report.tasks)
    breakdown = ", ".join(f"{name} {buckets[name]}" for name in ("easy", "medium", "hard", "extreme", "unsolved"))
    console.print(
        f"kept {len(report.kept)} of {len(report.tasks)} tasks "
        f"({breakdown}; easy >= 70%, medium >= 40%, hard >= 10%, extreme > 0%)"
    )
    console.print(f"wrote {report.kept_path} and {report.registry_path}")
    if report.n_measured_written:
        console.print(
            f"measured difficulty written to {report.n_measured_written} task.toml file(s) ([metadata.measured])"
        )
    for problem in report.measured_not_written:
        err.print(f"[yellow]measured difficulty not written[/]: {escape(problem)}")
    if report.kept:
        console.print(
            f"  harbor run --registry-path {report.registry_path} -d {report.dataset_name} -a oracle "
            "--extra-docker-compose envs/harbor-fast.yaml",
            highlight=False,
        )
