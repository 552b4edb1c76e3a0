"""The command layer: every `taskforge` command, registered on one typer app.

Each module holds the commands of one stage and is a thin layer over library functions; the
shared rules (errors and exit codes, run names) are in `common`.
"""

from __future__ import annotations

import typer

from taskforge.commands import demo, evaluate, export, filter, model, report, tasks, train
from taskforge.commands.common import console

app = typer.Typer(
    help="taskforge: verified terminal tasks, frontier-model solvability filtering and ECHO training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help paragraphs wrap to the terminal instead of keeping source line breaks
)


@app.command()
def version() -> None:
    """Print the taskforge version."""
    from taskforge import __version__

    console.print(__version__)


app.command("generate")(tasks.generate)
app.command("lint")(tasks.lint)
app.command("validate")(tasks.validate)
app.command("filter")(filter.filter_command)
app.command("eval")(evaluate.eval_command)
app.command("env-ce")(evaluate.env_ce_command)
app.command("report")(report.report)
app.add_typer(train.train_app, name="train")
app.command("serve")(train.serve)
app.add_typer(model.model_app, name="model")
app.command("demo")(demo.demo)
app.command("export")(export.export_command)
