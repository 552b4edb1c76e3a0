"""`taskforge demo`: the whole pipeline on the embedded default, small."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskforge.commands.common import console, exits_on_failure, fail


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's tasks, runs and report go.")] = Path("runs/demo"),
) -> None:
    """Run the whole pipeline, small, on the embedded default; resumes when run again.

    Generates tasks of one study family (archive_backup, with a fair held-out split),
    validates the held-out ones in Docker, runs expert SFT of the `small` model (~5 M parameters,
    built offline) on oracle demonstrations and a few ECHO steps (groups of 8), evaluates both
    checkpoints on held-out tasks (4 attempts each) with their env CE, and writes a report. About
    15 min on 2 CPU cores.
    """
    from taskforge.commands.pipeline import run_demo

    with exits_on_failure("stages"):
        try:
            html_path = run_demo(out)
        except ValueError as exc:  # the folder holds a run made with other settings: the message says what to do
            raise fail(str(exc), 2) from None
    console.print(f"report: {html_path.resolve()}")
