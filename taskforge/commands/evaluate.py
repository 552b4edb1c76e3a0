"""`taskforge eval` and `taskforge env-ce`: how well a policy does, and how well it predicts the terminal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taskforge.commands.common import (
    HARBOR_ENV_HELP,
    PathsArg,
    RunOption,
    RunsDirOption,
    check_backend_or_exit,
    console,
    exits_on_failure,
    fail,
    load_tasks_or_exit,
    run_dir_for,
)


def eval_command(
    tasks: PathsArg,
    policy: Annotated[
        str | None,
        typer.Option(
            help="A checkpoint directory (runs/RUN/checkpoints/step-N), tiny, small or smollm2-135m, run in-process."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Or: a model behind an OpenAI-compatible endpoint.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="The endpoint of --model (default: $OPENAI_BASE_URL).")] = None,
    attempts: Annotated[
        int, typer.Option("--attempts", "-k", min=1, help="Attempts per task (pass@k for k up to this).")
    ] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", "-n", min=1, help="Sandboxes at once.")] = 2,
    max_turns: Annotated[int, typer.Option(help="Policy replies per episode.")] = 16,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (the paper evaluates at 0.6).")] = 0.6,
    max_tokens: Annotated[int, typer.Option(help="Tokens per reply.")] = 256,
    max_context_tokens: Annotated[
        int | None,
        typer.Option(
            help="With --policy: an episode ends (context_exceeded) before a turn whose prompt + --max-tokens "
            "would pass this (default: the model's max_position_embeddings)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="With --policy: where it runs (cpu, cuda, cuda:N).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="With --policy: float32, bfloat16, float16 or auto.")] = "float32",
    max_retries: Annotated[
        int, typer.Option(min=0, help="With --model: retries of a failing request (5xx, 429, malformed replies).")
    ] = 6,
    env_ce_on: Annotated[
        list[Path] | None,
        typer.Option(
            help="Also measure --policy's environment-token CE on these stored transcripts (another policy's run)."
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="docker: taskforge's agent loop; harbor: Harbor's Job API with its terminus-2 agent (needs --model; "
            "serve a checkpoint with `taskforge serve` first)."
        ),
    ] = "docker",
    harbor_env: Annotated[str, typer.Option(help=HARBOR_ENV_HELP)] = "docker",
    run: RunOption = None,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Evaluate a checkpoint or an API model: pass@1, pass@k, timeouts, turns and tokens.

    Results are broken down per family, domain and difficulty; pass@k is the unbiased estimator.
    """
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.evaluate import evaluate
    from taskforge.runner import run_settings_mismatch

    if (policy is None) == (model is None):
        raise fail("pass exactly one of --policy CHECKPOINT or --model NAME")
    if env_ce_on and policy is None:
        raise fail("--env-ce-on needs --policy (the env CE is measured on a checkpoint)")
    check_backend_or_exit(backend, harbor_env)
    if backend == "harbor" and policy is not None:
        raise fail(
            "--backend harbor evaluates a model behind an endpoint (--model); serve the checkpoint first: "
            f"taskforge serve {policy}, then --model NAME --base-url http://127.0.0.1:8000/v1"
        )
    _, loaded = load_tasks_or_exit(tasks)
    episode = EpisodeConfig(max_turns=max_turns)
    if policy is not None:
        from trainer.checkpoint_eval import checkpoint_policy_factory
        from trainer.model import PolicyLoadError

        try:
            factory = checkpoint_policy_factory(
                policy,
                temperature=temperature,
                max_new_tokens=max_tokens,
                max_context_tokens=max_context_tokens,
                device=device,
                dtype=dtype,
            )
        except PolicyLoadError as exc:
            raise fail(str(exc)) from None
    else:
        from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy

        chat = ChatConfig(
            model=model,
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            temperature=temperature,
            max_tokens=max_tokens,
            max_retries=max_retries,
        )
        chat_policy = OpenAIChatPolicy(chat)
        factory = lambda: chat_policy  # noqa: E731 - one client shared by all attempts
    settings = {
        "tasks": sorted(str(t.path) for t in loaded),
        "policy": policy,
        "model": model,
        "base_url": base_url,
        "attempts": attempts,
        "max_turns": max_turns,
        "temperature": temperature,
        "max_tokens": max_tokens,
        # Only when set: runs started before the cap existed keep their name and resume.
        **({"max_context_tokens": max_context_tokens} if max_context_tokens is not None else {}),
        # Only with Harbor: docker runs keep the names they had; another sandbox is another run.
        **({"backend": backend, "harbor_env": harbor_env} if backend == "harbor" else {}),
    }
    run_dir = run_dir_for(runs_dir, run, "eval", settings)
    # A run named with --run resumes only with the policy and sampling it started with (the same model
    # may move to another address; more attempts or other tasks extend the run).
    changed = run_settings_mismatch(run_dir, settings, file="eval-run.json", ignore=("tasks", "attempts", "base_url"))
    if changed:
        raise fail(f"{run_dir} was started with other settings ({changed}); pass --run NAME for a new run")
    with exits_on_failure("attempts"):  # attempts that could not run exit 1 with their cause, writing no verdict
        if backend == "harbor":
            from taskforge.harbor_backend import AttemptPlan, HarborBackendError, evaluate_harbor

            plan = AttemptPlan(attempts=attempts, concurrency=concurrency, max_turns=max_turns)
            try:
                summary = evaluate_harbor(loaded, run_dir, chat, plan, harbor_env)
            except HarborBackendError as exc:
                raise fail(str(exc)) from None
        else:
            summary, _ = evaluate(loaded, run_dir, factory, attempts=attempts, concurrency=concurrency, episode=episode)
    if env_ce_on:
        from trainer.checkpoint_eval import env_ce_of_checkpoint, write_env_ce

        result = env_ce_of_checkpoint(policy, list(env_ce_on))
        write_env_ce(run_dir, result)
        summary.env_ce = result["after"]
    print_eval(summary)
    console.print(f"episodes: {run_dir / 'trials'}; summary: {run_dir / 'eval.json'}")


def print_eval(summary) -> None:
    from taskforge.report import format_number, format_percent

    table = Table(title=escape(f"eval {summary.name}"))
    # errored: attempts the harness could not score (build, sandbox, endpoint, verifier errors),
    # shown apart from plain failures; pass@1 counts them as failed.
    for column in ("group", "tasks", "pass@1", "pass@k", "errored", "timeouts", "turns", "tokens in/out"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = [("all", summary.overall)] if summary.overall else []
    for attribute in ("by_domain", "by_difficulty", "by_family"):
        rows += [(f"{attribute[3:]}: {name}", stats) for name, stats in getattr(summary, attribute).items()]
    for name, stats in rows:
        pass_k = ", ".join(f"@{k} {format_percent(v)}" for k, v in stats.pass_at_k.items() if k > 1) or "-"
        tokens = f"{format_number(stats.mean_input_tokens, 0)}/{format_number(stats.mean_output_tokens, 0)}"
        table.add_row(
            escape(name),
            str(stats.n_tasks),
            format_percent(stats.pass_at_1),
            pass_k,
            format_percent(stats.error_rate),
            format_percent(stats.timeout_rate),
            format_number(stats.mean_turns),
            tokens,
        )
    console.print(table)
    if summary.env_ce is not None:
        console.print(f"environment-token CE on held-out transcripts: {summary.env_ce:.3f} nats/token")


def env_ce_command(
    checkpoint: Annotated[str, typer.Argument(help="The checkpoint to score ('tiny' or a checkpoint directory).")],
    transcripts: Annotated[
        list[Path],
        typer.Argument(help="Stored episodes another policy played: run directories or transcript.json files."),
    ],
    before: Annotated[
        str | None, typer.Option(help="Also score this checkpoint (e.g. the starting point) on the same transcripts.")
    ] = None,
    write: Annotated[
        Path | None, typer.Option(help="Write env_ce.json into this run directory (the report shows it).")
    ] = None,
) -> None:
    """Environment-token CE of a checkpoint on held-out rollouts (the paper's world-model measure)."""
    from trainer.checkpoint_eval import env_ce_of_checkpoint, write_env_ce
    from trainer.model import PolicyLoadError

    try:
        result = env_ce_of_checkpoint(checkpoint, transcripts, before=before)
    except (PolicyLoadError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    line = (
        f"env CE {result['after']:.4f} nats/token over {int(result['n_sequences'])} sequences "
        f"({int(result['n_obs_tokens'])} observation tokens)"
    )
    if before is not None:
        line += f"; before: {result['before']:.4f}"
    console.print(line)
    if write is not None:
        console.print(f"written: {write_env_ce(write, result)}")
