"""`taskforge report`: runs side by side, as terminal tables, report.md, report.html and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taskforge.commands.common import console, err, fail, sorted_resolved


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories (runs/RUN) or Harbor job directories (jobs/JOB).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where report.md, report.html and the PNG plots go (default: runs/report-HASH, from the runs given)."
        ),
    ] = None,
) -> None:
    """Compare runs side by side: pass@1 (with CI), errored trials, timeouts, turns, tokens, env-token CE, and
    for training runs whether the steps had a learning signal."""
    from taskforge.report import RunNotFoundError, comparison_rows, difficulty_tables, load_run, write_report
    from taskforge.runner import run_name

    try:
        summaries = [load_run(path) for path in runs]
    except RunNotFoundError as exc:
        raise fail(str(exc)) from None
    rows = comparison_rows(summaries)
    table = Table(title="runs")
    for column in ("run", "pass@1 (95% CI)", "errored", "timeouts", "turns", "tokens in/out", "env CE"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        env_ce = row["env CE"] if row["env CE before"] == "-" else f"{row['env CE before']} -> {row['env CE']}"
        table.add_row(
            escape(row["run"]),
            f"{row['pass@1']} ({row['95% CI']})",
            row["errored"],
            row["timeouts"],
            row["turns"],
            f"{row['input tokens']}/{row['output tokens']}",
            env_ce,
        )
    console.print(table)
    # Whether RL had anything to learn from: a table of its own, so the runs table stays narrow.
    training_columns = ("groups with signal", "steps without obs tokens", "output tokens/episode")
    training_rows = [row for row in rows if row["kind"] == "train"]
    if training_rows:
        training = Table(title="training steps")
        training.add_column("run")
        for column in training_columns:
            training.add_column(column, justify="right")
        for row in training_rows:
            training.add_row(escape(row["run"]), *(row[column] for column in training_columns))
        console.print(training)
    for title, difficulty_rows in difficulty_tables(summaries):
        difficulty = Table(title=escape(title))
        for column in difficulty_rows[0]:
            difficulty.add_column(column, justify="left" if column == "requested" else "right")
        for row in difficulty_rows:
            if row["requested"] == "all":
                difficulty.add_section()
            difficulty.add_row(*row.values())
        console.print(difficulty)
    for s in summaries:
        for problem in s.missing:
            err.print(f"[yellow]incomplete[/] {escape(s.name)}: {escape(problem)}")
    out_dir = out or Path("runs") / run_name("report", {"runs": sorted_resolved(runs)})
    md_path, html_path = write_report(summaries, out_dir)
    console.print(f"report: {html_path} (and {md_path})")
