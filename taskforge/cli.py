"""The taskforge command line: a thin typer layer over the library functions."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HARBOR_TELEMETRY", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

app = typer.Typer(
    help="taskforge: verified terminal tasks, frontier-model solvability filtering and ECHO training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)


PathsArg = Annotated[list[Path], typer.Argument(help="Task directories, or folders holding task directories.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the taskforge version."""
    from taskforge import __version__

    console.print(__version__)


@app.command()
def lint(paths: PathsArg) -> None:
    """Check Harbor task directories; print every problem with its file and the fix."""
    from taskforge.tasks import TaskLoadError, discover_task_dirs, lint_task

    try:
        task_dirs = discover_task_dirs(paths)
    except TaskLoadError as exc:
        raise _fail(str(exc)) from None
    n_errors = n_warnings = 0
    for task_dir in task_dirs:
        for problem in lint_task(task_dir):
            style = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{style}]{problem.severity}[/] {problem.path}: {problem.message}\n    fix: {problem.fix}", highlight=False)
            n_errors += problem.severity == "error"
            n_warnings += problem.severity == "warning"
    console.print(f"{len(task_dirs)} task(s) checked: {n_errors} error(s), {n_warnings} warning(s)")
    if n_errors:
        raise typer.Exit(1)


@app.command()
def validate(
    paths: PathsArg,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Tasks validated in parallel.")] = 2,
    run: Annotated[str | None, typer.Option(help="Run name under --runs-dir; the default is derived from the paths, so re-running resumes.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start the run over instead of resuming it.")] = False,
) -> None:
    """Per task: the environment builds, the oracle scores 1.0 and the nop agent 0.0.

    Trials are written under runs/<run>/trials/ in Harbor's result layout, with a JSONL ledger;
    re-running resumes. Exits 1 when any task fails.
    """
    from taskforge.tasks import TaskLoadError, discover_task_dirs
    from taskforge.validate import default_run_name, validate_tasks

    try:
        task_dirs = discover_task_dirs(paths)
    except TaskLoadError as exc:
        raise _fail(str(exc)) from None
    run_dir = runs_dir / (run or default_run_name(task_dirs))
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    results = _run_with_docker(lambda: validate_tasks(task_dirs, run_dir, jobs=jobs))
    _print_validation(results, run_dir)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def _register_commands() -> None:
    from taskforge.filter import filter_command
    from taskforge.forge.command import generate_command

    app.command("generate")(generate_command)
    app.command("filter")(filter_command)


_register_commands()


def _run_with_docker(fn):
    from taskforge.sandbox.base import SandboxError

    try:
        return fn()
    except SandboxError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished trials are in the ledger; run the same command again to resume.")
        raise typer.Exit(130) from None


def _print_validation(results, run_dir: Path) -> None:
    table = Table(title=f"validation ({run_dir})", show_lines=False)
    for column in ("task", "status", "oracle", "nop", "seconds", "reason"):
        table.add_column(column, overflow="fold")
    shown = [r for r in results if not r.passed] + [r for r in results if r.passed][: max(0, 20 - sum(not r.passed for r in results))]
    for r in shown:
        status = "[green]passed[/]" if r.passed else f"[red]{r.status}[/]"
        table.add_row(r.task_name, status, _fmt(r.oracle_reward), _fmt(r.nop_reward), f"{r.seconds:.1f}", r.detail)
    console.print(table)
    if len(shown) < len(results):
        console.print(f"(showing {len(shown)} of {len(results)} tasks; all are in {run_dir / 'validation.json'})")
    n_passed = sum(r.passed for r in results)
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    breakdown = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    color = "green" if n_passed == len(results) else "red"
    console.print(f"[{color}]{n_passed}/{len(results)} tasks passed validation[/] ({breakdown}). Ledger: {run_dir / 'ledger.jsonl'}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@app.command("eval")
def eval_command(
    tasks: PathsArg,
    policy: Annotated[str | None, typer.Option(help="A checkpoint directory (runs/<run>/checkpoints/step-N) or 'tiny', run in-process.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Or: a model behind an OpenAI-compatible endpoint.")] = None,
    base_url: Annotated[str | None, typer.Option(help="The endpoint of --model (default: $OPENAI_BASE_URL).")] = None,
    attempts: Annotated[int, typer.Option("--attempts", "-k", min=1, help="Attempts per task (pass@k for k up to this).")] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", "-n", min=1, help="Sandboxes at once.")] = 2,
    max_turns: Annotated[int, typer.Option(help="Policy replies per episode.")] = 16,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (the paper evaluates at 0.6).")] = 0.6,
    max_tokens: Annotated[int, typer.Option(help="Tokens per reply.")] = 256,
    env_ce_on: Annotated[list[Path] | None, typer.Option(help="Also measure --policy's environment-token CE on these stored transcripts (another policy's run).")] = None,
    run: Annotated[str | None, typer.Option(help="Run name (default derived from the settings, so re-running resumes).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
) -> None:
    """Evaluate a checkpoint or an API model: pass@1 and unbiased pass@k, timeouts, turns and tokens, per family, domain and difficulty."""
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.agent.policy import PolicyConfigError
    from taskforge.evaluate import checkpoint_policy_factory, env_ce_of_checkpoint, evaluate, write_env_ce
    from taskforge.tasks import TaskLoadError, discover_task_dirs, load_task

    if (policy is None) == (model is None):
        raise _fail("pass exactly one of --policy CHECKPOINT or --model NAME")
    if env_ce_on and policy is None:
        raise _fail("--env-ce-on needs --policy (the env CE is measured on a checkpoint)")
    try:
        loaded = [load_task(d) for d in discover_task_dirs(tasks)]
    except TaskLoadError as exc:
        raise _fail(str(exc)) from None
    episode = EpisodeConfig(max_turns=max_turns)
    if policy is not None:
        from trainer.model import PolicyLoadError

        try:
            factory = checkpoint_policy_factory(policy, temperature=temperature, max_new_tokens=max_tokens)
        except PolicyLoadError as exc:
            raise _fail(str(exc)) from None
    else:
        from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy

        chat_policy = OpenAIChatPolicy(ChatConfig(model=model, base_url=base_url or os.environ.get("OPENAI_BASE_URL"), temperature=temperature, max_tokens=max_tokens))
        factory = lambda: chat_policy  # noqa: E731 - one client shared by all attempts
    settings = {"tasks": sorted(str(t.path) for t in loaded), "policy": policy, "model": model, "base_url": base_url, "attempts": attempts, "max_turns": max_turns, "temperature": temperature, "max_tokens": max_tokens}
    run_dir = runs_dir / (run or _settings_run_name("eval", settings))
    try:
        summary, not_recorded = _run_with_docker(lambda: evaluate(loaded, run_dir, factory, attempts=attempts, concurrency=concurrency, episode=episode))
    except PolicyConfigError as exc:
        raise _fail(str(exc), 1) from None
    if env_ce_on:
        result = env_ce_of_checkpoint(policy, list(env_ce_on))
        write_env_ce(run_dir, result)
        summary.env_ce = result["after"]
    _print_eval(summary)
    console.print(f"episodes: {run_dir / 'trials'}; summary: {run_dir / 'eval.json'}")
    if not_recorded:
        raise _fail(f"{len(not_recorded)} attempt(s) could not run; run the same command again to retry them:\n  " + "\n  ".join(not_recorded[:5]), 1)


def _print_eval(summary) -> None:
    from taskforge.report import _fmt_num, _fmt_pct

    table = Table(title=f"eval {summary.name}")
    for column in ("group", "tasks", "pass@1", "pass@k", "timeouts", "turns", "tokens in/out"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = [("all", summary.overall)] if summary.overall else []
    for attribute in ("by_domain", "by_difficulty", "by_family"):
        rows += [(f"{attribute[3:]}: {name}", stats) for name, stats in getattr(summary, attribute).items()]
    for name, stats in rows:
        pass_k = ", ".join(f"@{k} {_fmt_pct(v)}" for k, v in stats.pass_at_k.items() if k > 1) or "-"
        table.add_row(name, str(stats.n_tasks), _fmt_pct(stats.pass_at_1), pass_k, _fmt_pct(stats.timeout_rate), _fmt_num(stats.mean_turns), f"{_fmt_num(stats.mean_input_tokens, 0)}/{_fmt_num(stats.mean_output_tokens, 0)}")
    console.print(table)
    if summary.env_ce is not None:
        console.print(f"environment-token CE on held-out transcripts: {summary.env_ce:.3f} nats/token")


@app.command("env-ce")
def env_ce_command(
    checkpoint: Annotated[str, typer.Argument(help="The checkpoint to score ('tiny' or a checkpoint directory).")],
    transcripts: Annotated[list[Path], typer.Argument(help="Stored episodes another policy played: run directories or transcript.json files.")],
    before: Annotated[str | None, typer.Option(help="Also score this checkpoint (e.g. the starting point) on the same transcripts.")] = None,
    write: Annotated[Path | None, typer.Option(help="Write env_ce.json into this run directory (the report shows it).")] = None,
) -> None:
    """Environment-token cross-entropy of a checkpoint on held-out rollouts, as the paper measures world-model quality."""
    from taskforge.evaluate import env_ce_of_checkpoint, write_env_ce
    from trainer.model import PolicyLoadError

    try:
        result = env_ce_of_checkpoint(checkpoint, transcripts, before=before)
    except (PolicyLoadError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    line = f"env CE {result['after']:.4f} nats/token over {int(result['n_sequences'])} sequences ({int(result['n_obs_tokens'])} observation tokens)"
    if before is not None:
        line += f"; before: {result['before']:.4f}"
    console.print(line)
    if write is not None:
        console.print(f"written: {write_env_ce(write, result)}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (runs/<run>) or Harbor job directories (jobs/<job>).")],
    out: Annotated[Path | None, typer.Option(help="Where report.md, report.html and the PNG plots go (default: runs/report-<time>).")] = None,
) -> None:
    """Compare runs side by side: pass@1 (with CI), timeouts, turns, tokens, env-token CE."""
    from taskforge.report import RunNotFoundError, comparison_rows, load_run, write_report
    from taskforge.runner import new_run_name

    try:
        summaries = [load_run(path) for path in runs]
    except RunNotFoundError as exc:
        raise _fail(str(exc)) from None
    table = Table(title="runs")
    for column in ("run", "pass@1 (95% CI)", "timeouts", "turns", "tokens in/out", "env CE"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in comparison_rows(summaries):
        env_ce = row["env CE"] if row["env CE before"] == "-" else f"{row['env CE before']} -> {row['env CE']}"
        table.add_row(row["run"], f"{row['pass@1']} ({row['95% CI']})", row["timeouts"], row["turns"], f"{row['input tokens']}/{row['output tokens']}", env_ce)
    console.print(table)
    for s in summaries:
        for problem in s.missing:
            err.print(f"[yellow]incomplete[/] {s.name}: {problem}")
    out_dir = out or Path("runs") / new_run_name("report")
    md_path, html_path = write_report(summaries, out_dir)
    console.print(f"report: {html_path} (and {md_path})")


def _settings_run_name(prefix: str, settings: dict) -> str:
    """Same settings, same run: re-running an interrupted command resumes it."""
    import hashlib
    import json

    return f"{prefix}-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]}"


train_app = typer.Typer(help="Train a policy: sft (expert baseline), echo, grpo, env-only (verifier-free).", no_args_is_help=True)
app.add_typer(train_app, name="train")

_TRAIN_HELP = """Train with {mode}: rollouts of the current policy in Docker sandboxes, {what}.

Writes runs/<run>/metrics.jsonl (one line per step) and checkpoints/step-N; running the same command again resumes from the last checkpoint (the default run name is derived from the settings).

Defaults suit the tiny CPU model; --preset paper gives the paper's hyperparameters (lr 1e-6, lambda 0.05, 16 tasks x 16 samples, 16 turns, temperature 0.8, 2048 tokens per turn). Settings come from flags, or from --config FILE (JSON or TOML with TrainConfig's field names)."""


def _make_train_command(mode: str, what: str):
    def command(
        tasks: Annotated[Path, typer.Option(help="Task set to train on.")] = Path("tasks/sample"),
        steps: Annotated[int | None, typer.Option(help="Optimizer steps (rollout batches).")] = None,
        group_size: Annotated[int | None, typer.Option("--group-size", "-g", help="Rollouts per task per step (the GRPO group).")] = None,
        tasks_per_step: Annotated[int | None, typer.Option(help="Tasks per step.")] = None,
        env_coef: Annotated[float | None, typer.Option("--lambda", help="lambda, the env-CE coefficient (echo: 0.05, env-only: 1.0 by default).")] = None,
        lambda_schedule: Annotated[str | None, typer.Option(help="constant | linear | step")] = None,
        lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
        policy: Annotated[str | None, typer.Option(help="tiny (offline default), a checkpoint dir (e.g. an SFT run's), or a HF model.")] = None,
        max_turns: Annotated[int | None, typer.Option(help="Policy replies per episode.")] = None,
        max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per reply.")] = None,
        temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps.")] = None,
        concurrency: Annotated[int | None, typer.Option(help="Sandboxes running at once.")] = None,
        sampler_url: Annotated[str | None, typer.Option(help="Sample from this OpenAI-compatible server (vLLM token-id extension) instead of in-process.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
        preset: Annotated[str, typer.Option(help="tiny (CPU defaults) or paper (the paper's hyperparameters).")] = "tiny",
        config_file: Annotated[Path | None, typer.Option("--config", help="JSON or TOML file of settings; flags override it.")] = None,
        run: Annotated[str | None, typer.Option(help="Run name (default: <mode>-<time>); an existing run resumes.")] = None,
        runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    ) -> None:
        from trainer.train import TrainConfig, train

        overrides = dict(
            tasks=str(tasks), steps=steps, group_size=group_size, tasks_per_step=tasks_per_step, env_coef=env_coef, lambda_schedule=lambda_schedule, lr=lr, policy=policy,
            max_turns=max_turns, max_new_tokens=max_new_tokens, temperature=temperature, checkpoint_every=checkpoint_every, concurrency=concurrency, sampler_url=sampler_url, seed=seed,
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        try:
            if config_file is not None:
                config = TrainConfig.from_file(config_file, mode=mode, **overrides)
            elif preset == "paper":
                config = TrainConfig.paper(mode=mode, **overrides)
            elif preset == "tiny":
                config = TrainConfig(mode=mode, **overrides)
            else:
                raise ValueError(f"--preset must be tiny or paper, not {preset!r}")
            config.loss_config()
        except (ValueError, OSError) as exc:
            raise _fail(str(exc)) from None
        run_dir = runs_dir / (run or _settings_run_name(mode, asdict(config)))
        try:
            final = _run_with_docker(lambda: train(config, run_dir, log=console.print))
        except ValueError as exc:
            raise _fail(str(exc)) from None
        console.print(f"done: {final}  (metrics: {run_dir / 'metrics.jsonl'}; compare runs with `taskforge report {run_dir}`)")

    command.__doc__ = _TRAIN_HELP.format(mode=mode, what=what)
    return command


train_app.command("echo")(_make_train_command("echo", "loss = GRPO on action tokens + lambda x CE of the observation tokens"))
train_app.command("grpo")(_make_train_command("grpo", "loss = GRPO on action tokens only (lambda 0)"))
train_app.command("env-only")(_make_train_command("env-only", "loss = CE of the observation tokens only: verifier-free, the reward is not used"))


@train_app.command("sft")
def train_sft(
    tasks: Annotated[Path, typer.Option(help="Task set whose solutions are the demonstrations.")] = Path("tasks/sample"),
    epochs: Annotated[int, typer.Option(help="Passes over the demonstrations.")] = 20,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    policy: Annotated[str, typer.Option(help="Model to start from.")] = "tiny",
    env_coef: Annotated[float, typer.Option("--lambda", help="Add lambda x env CE on the demonstrations' observations.")] = 0.0,
    demonstrator: Annotated[str, typer.Option(help="oracle-text (the solution, then DONE) or explorer (ls and head first, then the solution).")] = "oracle-text",
    run: Annotated[str | None, typer.Option(help="Run name (default derived from the settings, so re-running resumes).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
) -> None:
    """Expert SFT (the paper's baseline): run every task's solution through the agent loop in Docker, keep the transcripts the verifier scores 1.0, and fine-tune on their action tokens."""
    from trainer.sft import SFTConfig, sft

    if demonstrator not in ("oracle-text", "explorer"):
        raise _fail(f"--demonstrator must be oracle-text or explorer, not {demonstrator!r}")
    config = SFTConfig(tasks=str(tasks), epochs=epochs, lr=lr, policy=policy, env_coef=env_coef, demonstrator=demonstrator)
    run_dir = runs_dir / (run or _settings_run_name("sft", asdict(config)))
    try:
        final = _run_with_docker(lambda: sft(config, run_dir, log=console.print))
    except RuntimeError as exc:
        raise _fail(str(exc), 1) from None
    console.print(f"done: {final}  (start RL from it with --policy {final})")


@app.command()
def serve(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint directory (runs/<run>/checkpoints/step-N) or 'tiny'.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    model_name: Annotated[str | None, typer.Option(help="Model id clients send (default: the checkpoint's folder name).")] = None,
) -> None:
    """Serve a checkpoint as an OpenAI-compatible endpoint (chat completions, completions over token
    ids, usage, logprobs and vLLM's return_token_ids), for Harbor's agents or `taskforge filter`."""
    from trainer.model import PolicyLoadError, load_policy
    from trainer.serve import CheckpointServer

    try:
        model, tokenizer = load_policy(checkpoint)
    except PolicyLoadError as exc:
        raise _fail(str(exc)) from None
    name = model_name or (Path(checkpoint).name if checkpoint != "tiny" else "tiny")
    server = CheckpointServer(model, tokenizer, model_name=name, host=host, port=port)
    console.print(f"serving {checkpoint} as model {name!r} at {server.base_url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's tasks, runs and report go.")] = Path("runs/demo"),
) -> None:
    """The whole pipeline on the embedded default, small: generate tasks, validate them in Docker, expert SFT of the tiny model, a few ECHO steps, held-out eval and env CE, report. Resumes when run again."""
    from trainer.pipeline import run_demo

    html_path = _run_with_docker(lambda: run_demo(out))
    console.print(f"report: {html_path.resolve()}")


if __name__ == "__main__":
    app()
