"""`taskforge generate`: the typer command over taskforge.forge.generate (registered in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from taskforge.forge.base import DIFFICULTIES

console = Console()
err = Console(stderr=True)


def _split(values: list[str] | None) -> list[str] | None:
    """Accepts repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def generate_command(
    n: Annotated[int, typer.Option("--n", "-n", help="Number of tasks to write (train + val).")] = 600,
    seed: Annotated[int, typer.Option(help="Seed; the same seed and --n give byte-identical output.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; must be empty unless --force).")] = Path("tasks/generated"),
    families: Annotated[list[str] | None, typer.Option("--families", "-f", help="Only these families (repeat or comma-separate). Default: all; see --list-families.")] = None,
    difficulty: Annotated[list[str] | None, typer.Option("--difficulty", "-d", help=f"Only these difficulties ({', '.join(DIFFICULTIES)}); repeat or comma-separate.")] = None,
    val: Annotated[int, typer.Option(help="Hold out a family-stratified validation split of this many tasks: OUT/train and OUT/val.")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes (output does not depend on it).")] = 2,
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    list_families: Annotated[bool, typer.Option("--list-families", help="Print the families and exit.")] = False,
    llm: Annotated[bool, typer.Option("--llm", help="Generate through an LLM (staged, Endless-Terminals style) instead of the procedural families.", rich_help_panel="LLM generation")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="With --llm: the model name at the endpoint.", rich_help_panel="LLM generation")] = None,
    base_url: Annotated[str | None, typer.Option(help="With --llm: OpenAI-compatible endpoint (default: $OPENAI_BASE_URL).", rich_help_panel="LLM generation")] = None,
    api_key_env: Annotated[str, typer.Option(help="With --llm: environment variable holding the API key.", rich_help_panel="LLM generation")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="With --llm: tasks drafted and validated at once.", rich_help_panel="LLM generation")] = 4,
) -> None:
    """Write procedural Harbor tasks: instruction, Docker environment, tests with embedded answers, oracle solution.

    Each set gets a manifest.jsonl and a Harbor registry.json (task paths relative to the set), so
    `cd OUT && harbor run --registry-path registry.json -d taskforge@<version> -a oracle` runs it offline.
    """
    from taskforge.forge.families import FAMILIES
    from taskforge.forge.generate import GenerateError, generate

    if llm:
        _generate_with_llm(n, seed, out, model, base_url, api_key_env, concurrency)
        return
    if list_families:
        table = Table(title=f"{len(FAMILIES)} families")
        for column in ("family", "domain", "what it asks"):
            table.add_column(column)
        for family in FAMILIES.values():
            table.add_row(family.name, family.domain, family.summary)
        console.print(table)
        return
    try:
        summary = generate(n, seed, out, families=_split(families), difficulties=_split(difficulty), val=val, jobs=jobs, force=force)
    except GenerateError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"[green]wrote {summary['n']} tasks[/] from {len(summary['by_family'])} families in {summary['seconds']:.1f} s "
        f"({summary['tasks_per_sec']:.0f} tasks/s; {summary['redrawn']} redrawn as duplicates)"
    )
    console.print("by difficulty: " + ", ".join(f"{d} {c}" for d, c in summary["by_difficulty"].items()))
    for name, info in summary["sets"].items():
        console.print(f"[bold]{name}[/]: {info['tasks']} tasks in {info['path']}  dataset {info['dataset']}")
        console.print(f"  run with Harbor: {info['harbor']}", highlight=False, soft_wrap=True)


def _generate_with_llm(n: int, seed: int, out: Path, model: str | None, base_url: str | None, api_key_env: str, concurrency: int) -> None:
    """`--llm`: staged LLM generation with the same validation gates; resumes from OUT."""
    import os

    from taskforge.agent.policy import PolicyConfigError
    from taskforge.forge.llm import LLMForgeConfig, generate_llm, print_summary
    from taskforge.sandbox.base import SandboxError

    if not model:
        err.print("[bold red]error:[/] --llm needs --model NAME (and usually --base-url URL)")
        raise typer.Exit(2)
    config = LLMForgeConfig(model=model, base_url=base_url or os.environ.get("OPENAI_BASE_URL"), api_key_env=api_key_env, concurrency=concurrency)
    try:
        records = generate_llm(n, seed, out, config)
    except PolicyConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except SandboxError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished tasks are in the ledger; run the same command again to resume.")
        raise typer.Exit(130) from None
    print_summary(records, out, console)
