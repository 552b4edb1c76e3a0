"""`taskforge demo`: the whole pipeline on the embedded default, small."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskforge.commands.common import console, exits_on_failure


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's tasks, runs and report go.")] = Path("runs/demo"),
) -> None:
    """Run the whole pipeline, small, on the embedded default; resumes when run again.

    Generates tasks, validates them in Docker, runs expert SFT of the tiny model and a few ECHO
    steps, evaluates both checkpoints on held-out tasks with their env CE, and writes a report.
    """
    from taskforge.commands.pipeline import run_demo

    with exits_on_failure("stages"):
        html_path = run_demo(out)
    console.print(f"report: {html_path.resolve()}")
