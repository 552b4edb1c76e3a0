"""What every command shares: the consoles, the one error-and-exit rule and the one run-name rule.

Exit codes: 0 success, 1 the work could not be done (infrastructure: Docker, the model server, a
bad key), 2 bad input (a path, an option), 130 interrupted. Messages are printed as plain text
(rich markup in them is escaped), so `[agent] timeout_sec` stays readable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from taskforge.runner import RunDirBusyError, empty_run_dir, run_name

os.environ.setdefault("HARBOR_TELEMETRY", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

console = Console()
err = Console(stderr=True, soft_wrap=True)

PathsArg = Annotated[list[Path], typer.Argument(help="Task directories, or folders holding task directories.")]
RunOption = Annotated[
    str | None,
    typer.Option(
        help="Run name under --runs-dir; the default is derived from the inputs and settings, so re-running resumes."
    ),
]
RunsDirOption = Annotated[Path, typer.Option(help="Where runs are written.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints `error: message` on stderr; raise the returned Exit."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def run_dir_for(runs_dir: Path, run: str | None, prefix: str, settings: dict, *, fresh: bool = False) -> Path:
    """runs_dir/<run>, the name derived from the settings unless given (taskforge.runner.run_name);
    with fresh, what an earlier run left there is removed first (not while another process runs it)."""
    run_dir = runs_dir / (run or run_name(prefix, settings))
    if fresh:
        try:
            empty_run_dir(run_dir)
        except RunDirBusyError as exc:
            raise fail(str(exc), 1) from None
    return run_dir


@contextmanager
def exits_on_failure(what: str = "trials") -> Iterator[None]:
    """Turns the failures a long run can end with into a message and an exit code."""
    from taskforge.agent.policy import PolicyConfigError
    from taskforge.attempts import AttemptsNotRunError
    from taskforge.sandbox.base import SandboxError

    try:
        yield
    except PolicyConfigError as exc:
        raise fail(
            f"{exc}\nFinished {what} are in the ledger; fix this and run the same command to resume.", 1
        ) from None
    except (SandboxError, RunDirBusyError, AttemptsNotRunError) as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]: finished {what} are in the ledger; run the same command again to resume.")
        raise typer.Exit(130) from None


def load_tasks_or_exit(paths: list[Path]):
    """(task dirs, loaded tasks) under `paths`, or exit 2 naming the unreadable one."""
    from taskforge.tasks import TaskLoadError, discover_task_dirs, load_task

    try:
        task_dirs = discover_task_dirs(paths)
        return task_dirs, [load_task(d) for d in task_dirs]
    except TaskLoadError as exc:
        raise fail(str(exc)) from None


def task_dirs_or_exit(paths: list[Path]) -> list[Path]:
    from taskforge.tasks import TaskLoadError, discover_task_dirs

    try:
        return discover_task_dirs(paths)
    except TaskLoadError as exc:
        raise fail(str(exc)) from None


def sorted_resolved(paths: list[Path]) -> list[str]:
    return sorted(str(p.resolve()) for p in paths)


HARBOR_ENV_HELP = (
    "With --backend harbor: Harbor's environment for the trials (docker, daytona, modal, e2b, runloop, ... as "
    "Harbor's EnvironmentType names them); cloud ones need their credentials set."
)


def check_backend_or_exit(backend: str, harbor_env: str) -> None:
    """--backend and --harbor-env as filter, eval and validate take them; a cloud environment without
    its credentials fails here, before any run dir, trial or container."""
    if backend not in ("docker", "harbor"):
        raise fail(f"--backend must be docker or harbor, not {backend!r}")
    if harbor_env != "docker" and backend != "harbor":
        raise fail("--harbor-env needs --backend harbor")
    if backend == "harbor":
        from taskforge.harbor_backend import HarborEnvError, check_harbor_env, harbor_env_names

        if harbor_env not in harbor_env_names():
            raise fail(f"--harbor-env must be one of Harbor's environments ({', '.join(harbor_env_names())})")
        try:
            check_harbor_env(harbor_env)
        except HarborEnvError as exc:
            raise fail(str(exc), 1) from None
