"""`taskforge demo`: the whole pipeline on the embedded default, small."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskforge.commands.common import console, exits_on_failure


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's tasks, runs and report go.")] = Path("runs/demo"),
) -> None:
    from taskforge.commands.pipeline import run_demo

    with exits_on_failure("stages"):
        html_path = run_demo(out)
    console.print(f"report: {html_path.resolve()}")


# The help text, set here rather than as a docstring: typer would print a wrapped docstring's line
# breaks in `taskforge --help`.
demo.__doc__ = (
    "The whole pipeline on the embedded default, small: generate tasks, validate them in Docker, "
    "expert SFT of the tiny model, a few ECHO steps, held-out eval and env CE, report. Resumes when run again."
)
