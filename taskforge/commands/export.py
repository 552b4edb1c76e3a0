"""`taskforge export`: a filtered task set, split as generate wrote it, in an RL engine's dataset format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from taskforge.commands.common import console, fail


def export_command(
    task_set: Annotated[
        Path,
        typer.Argument(
            help="A filter run's kept.json, a generate output (train/ and val/), or a folder of task directories."
        ),
    ],
    engine: Annotated[
        str,
        typer.Option(
            help="Target engine: skyrl (SkyRL's Harbor integration, GRPO), skyrl-echo (SkyRL's echo_terminal "
            "integration, PR 1716) or verl (verl-recipe's echo)."
        ),
    ] = "skyrl",
    out: Annotated[
        Path | None, typer.Option(help="Folder to write (must be new or empty; default exports/ENGINE).")
    ] = None,
    model: Annotated[str, typer.Option(help="Policy model the launch trains.")] = "Qwen/Qwen3-8B",
) -> None:
    """Write a task set for a multi-node engine: the tasks per split, rows naming each Harbor task and
    verifier, a config with the paper's settings (16 rollouts, lambda 0.05, 16 turns, 16k context) and
    the launch command."""
    from taskforge.export import ExportError, export

    try:
        result = export(engine, task_set, out or Path("exports") / engine, model=model)
    except ExportError as exc:
        raise fail(str(exc)) from None
    cfg = result.config
    console.print(f"exported {cfg.n_train} train + {cfg.n_val} val tasks for {cfg.engine} to {escape(result.out_dir)}")
    console.print(f"rows:   {escape(result.rows_path)}")
    console.print(f"config: {escape(result.config_path)}")
    console.print(f"launch: {escape(result.launch_path)}")
    for note in cfg.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    where = {
        "skyrl": "a SkyRL checkout",
        "skyrl-echo": "a SkyRL checkout of PR 1716",
        "verl": "a verl checkout (verl-recipe at recipe/)",
    }[cfg.engine]
    console.print(f"run from {where}:")
    print(cfg.launch)  # plain print: a copyable command, no wrapping or markup
