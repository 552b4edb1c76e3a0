"""The taskforge command line: a thin typer layer over the library."""

import typer

app = typer.Typer(help="taskforge: verified terminal tasks, solvability filtering and ECHO training.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the taskforge version."""
    from taskforge import __version__

    print(__version__)
