"""`taskforge train sft|echo|grpo|env-only` and `taskforge serve`: the trainer's commands.

The command layer is the only part of taskforge that imports trainer/ (lazily, inside the
commands, so `generate` and `filter` never load torch).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from taskforge.commands.common import RunsDirOption, console, exits_on_failure, fail, run_dir_for

train_app = typer.Typer(
    help="Train a policy: sft (expert baseline), echo, grpo, env-only (verifier-free).", no_args_is_help=True
)

# Rendered as Markdown (see taskforge/commands/__init__.py): placeholders are written RUN, not <run>.
_TRAIN_HELP = (
    "Train with {mode}: rollouts of the current policy in Docker sandboxes, {what}.\n"
    "\n"
    "Writes runs/RUN/metrics.jsonl (one line per step) and checkpoints/step-N; running the same command again "
    "resumes from the last checkpoint (the default run name is derived from the settings).\n"
    "\n"
    "Defaults suit the tiny CPU model; --preset paper gives the paper's hyperparameters (lr 1e-6, lambda 0.05, "
    "16 tasks x 16 samples, 16 turns, temperature 0.8, 2048 tokens per turn, a 16,384-token context). Settings "
    "come from flags, or from --config FILE (JSON or TOML with TrainConfig's field names, e.g. device, dtype, "
    "max_context_tokens)."
)


NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc",
        help="Data-parallel ranks on this machine: re-runs the command under torchrun (FSDP2, sharded "
        "checkpoints; one GPU per rank with --device cuda). "
        "Same as `torchrun --nproc-per-node N -m taskforge.cli -- ...`.",
    ),
]


def _under_torchrun(nproc: int) -> None:
    """--nproc N > 1: replace this process by torchrun running the same command line without --nproc."""
    if nproc < 1:
        raise fail(f"--nproc must be at least 1, not {nproc}")
    if nproc == 1:
        return
    from trainer.distributed import launched_by_torchrun, torchrun_command

    if launched_by_torchrun():
        raise fail("--nproc under torchrun: pass one or the other")
    command = torchrun_command(nproc, sys.argv[1:])
    console.print(f"running {nproc} ranks: {' '.join(command[1:6])} ...")
    os.execv(command[0], command)


def _main_rank() -> bool:
    """Not a torchrun rank other than 0 (those stay quiet)."""
    return os.environ.get("RANK", "0") == "0"


def _make_rl_command(mode: str, what: str):
    def command(
        tasks: Annotated[
            Path | None,
            typer.Option(
                help="Task set to train on: a folder or a filter's kept.json (default: --config's, else tasks/sample)."
            ),
        ] = None,
        steps: Annotated[int | None, typer.Option(help="Optimizer steps (rollout batches).")] = None,
        group_size: Annotated[
            int | None, typer.Option("--group-size", "-g", help="Rollouts per task per step (the GRPO group).")
        ] = None,
        tasks_per_step: Annotated[int | None, typer.Option(help="Tasks per step.")] = None,
        env_coef: Annotated[
            float | None,
            typer.Option("--lambda", help="lambda, the env-CE coefficient (echo: 0.05, env-only: 1.0 by default)."),
        ] = None,
        lambda_schedule: Annotated[str | None, typer.Option(help="constant | linear | step")] = None,
        lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
        policy: Annotated[
            str | None,
            typer.Option(
                help="Start from: a checkpoint dir, tiny (the untrained offline default) or a HF model. "
                "Default: the latest `train sft` checkpoint of the same --tasks under --runs-dir."
            ),
        ] = None,
        max_turns: Annotated[int | None, typer.Option(help="Policy replies per episode.")] = None,
        max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per reply.")] = None,
        temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps.")] = None,
        keep_checkpoints: Annotated[
            int | None, typer.Option(min=1, help="Keep only the newest N checkpoints (default: all).")
        ] = None,
        concurrency: Annotated[int | None, typer.Option(help="Sandboxes running at once.")] = None,
        sampler_url: Annotated[
            str | None,
            typer.Option(
                help="Sample from this OpenAI-compatible server (vLLM token-id extension) instead of in-process."
            ),
        ] = None,
        max_context_tokens: Annotated[
            int | None,
            typer.Option(
                help="Context cap: an episode ends (context_exceeded) before a turn whose prompt + --max-new-tokens "
                "would pass it (paper preset: 16384; default: the model's max_position_embeddings)."
            ),
        ] = None,
        device: Annotated[
            str | None, typer.Option(help="Where the policy trains and samples: cpu, cuda, cuda:N.")
        ] = None,
        dtype: Annotated[str | None, typer.Option(help="float32 (default), bfloat16, float16 or auto.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
        preset: Annotated[
            str, typer.Option(help="tiny (CPU defaults) or paper (the paper's hyperparameters).")
        ] = "tiny",
        config_file: Annotated[
            Path | None,
            typer.Option("--config", help="JSON or TOML file of settings over --preset's; flags override both."),
        ] = None,
        run: Annotated[
            str | None, typer.Option(help="Run name (default derived from the settings); an existing run resumes.")
        ] = None,
        runs_dir: RunsDirOption = Path("runs"),
        nproc: NprocOption = 1,
    ) -> None:
        _under_torchrun(nproc)
        from trainer.train import TrainConfig, train

        overrides = dict(
            tasks=str(tasks) if tasks is not None else None,  # None: the config file's (or the preset's)
            steps=steps,
            group_size=group_size,
            tasks_per_step=tasks_per_step,
            env_coef=env_coef,
            lambda_schedule=lambda_schedule,
            lr=lr,
            policy=policy,
            max_turns=max_turns,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            concurrency=concurrency,
            sampler_url=sampler_url,
            max_context_tokens=max_context_tokens,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        try:
            config = TrainConfig.from_preset(preset, config_file, mode=mode, **overrides)
            if policy is None and not _config_names_policy(config_file):
                start = _sft_start_or_exit(runs_dir, Path(config.tasks))
                console.print(f"starting from the latest SFT checkpoint of {config.tasks}: {start}")
                config = TrainConfig.from_preset(preset, config_file, mode=mode, **overrides, policy=str(start))
            config.loss_config()
        except (ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        run_dir = run_dir_for(runs_dir, run, mode, asdict(config))
        try:
            with exits_on_failure("steps"):
                final = train(config, run_dir, log=console.print)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if _main_rank():
            console.print(
                f"done: {final}  (metrics: {run_dir / 'metrics.jsonl'}; compare runs with `taskforge report {run_dir}`)"
            )

    command.__doc__ = _TRAIN_HELP.format(mode=mode, what=what)
    return command


def _config_names_policy(config_file: Path | None) -> bool:
    if config_file is None:
        return False
    try:
        import tomllib

        text = config_file.read_text()
        data = tomllib.loads(text) if config_file.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError):
        return False  # TrainConfig.from_file reports the bad file
    return isinstance(data, dict) and "policy" in data


def latest_sft_checkpoint(runs_dir: Path, tasks: Path) -> Path | None:
    """The newest finished `train sft` checkpoint under runs_dir trained on the task set `tasks`."""
    wanted = tasks.resolve()
    found = []
    for config_path in runs_dir.glob("*/config.json"):
        final = config_path.parent / "checkpoints" / "final"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):
            continue
        if config.get("mode") == "sft" and final.is_dir() and Path(config.get("tasks", "")).resolve() == wanted:
            found.append(final)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _sft_start_or_exit(runs_dir: Path, tasks: Path) -> Path:
    """RL needs a policy that acts: the untrained model emits no runnable command, so every reward
    is 0 and nothing is learned. Without --policy, start from SFT on the same tasks, or say so."""
    checkpoint = latest_sft_checkpoint(runs_dir, tasks)
    if checkpoint is None:
        raise fail(
            f"no SFT checkpoint for {tasks} under {runs_dir}/, and an untrained model will not act (it emits no "
            f"runnable command, so every reward is 0). Run first:\n  taskforge train sft --tasks {tasks}\n"
            "then run this command again (it starts from that checkpoint), or pass --policy (a checkpoint "
            "directory, or tiny to train the untrained model anyway)."
        )
    return checkpoint


train_app.command("echo")(
    _make_rl_command("echo", "loss = GRPO on action tokens + lambda x CE of the observation tokens")
)
train_app.command("grpo")(_make_rl_command("grpo", "loss = GRPO on action tokens only (lambda 0)"))
train_app.command("env-only")(
    _make_rl_command("env-only", "loss = CE of the observation tokens only: verifier-free, the reward is not used")
)


@train_app.command("sft")
def train_sft(
    tasks: Annotated[Path, typer.Option(help="Task set whose solutions are the demonstrations.")] = Path(
        "tasks/sample"
    ),
    epochs: Annotated[int, typer.Option(help="Passes over the demonstrations.")] = 20,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    policy: Annotated[
        str, typer.Option(help="Model to start from: tiny, small, smollm2-135m (after `model get`) or a checkpoint.")
    ] = "tiny",
    env_coef: Annotated[
        float, typer.Option("--lambda", help="Add lambda x env CE on the demonstrations' observations.")
    ] = 0.0,
    demonstrator: Annotated[
        str,
        typer.Option(help="oracle-text (the solution, then DONE) or explorer (ls and head first, then the solution)."),
    ] = "oracle-text",
    device: Annotated[str, typer.Option(help="Where the policy trains: cpu, cuda, cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
    run: Annotated[
        str | None, typer.Option(help="Run name (default derived from the settings, so re-running resumes).")
    ] = None,
    runs_dir: RunsDirOption = Path("runs"),
    nproc: NprocOption = 1,
) -> None:
    """Expert SFT (the paper's baseline) on the task set's own solutions.

    Runs every task's solution through the agent loop in Docker, keeps the transcripts the
    verifier scores 1.0, and fine-tunes on their action tokens.
    """
    _under_torchrun(nproc)
    from trainer.sft import SFTConfig, sft

    if demonstrator not in ("oracle-text", "explorer"):
        raise fail(f"--demonstrator must be oracle-text or explorer, not {demonstrator!r}")
    config = SFTConfig(
        tasks=str(tasks),
        epochs=epochs,
        lr=lr,
        policy=policy,
        env_coef=env_coef,
        demonstrator=demonstrator,
        device=device,
        dtype=dtype,
    )
    run_dir = run_dir_for(runs_dir, run, "sft", asdict(config))
    try:
        with exits_on_failure("demonstrations"):
            final = sft(config, run_dir, log=console.print)
    except ValueError as exc:  # the run dir was trained with other settings
        raise fail(str(exc)) from None
    except RuntimeError as exc:
        raise fail(str(exc), 1) from None
    if _main_rank():
        console.print(f"done: {final}  (start RL from it with --policy {final})")


def serve(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint directory (runs/RUN/checkpoints/step-N) or 'tiny'.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send (default: the checkpoint's folder name).")
    ] = None,
    device: Annotated[str, typer.Option(help="Where the model runs: cpu, cuda, cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
) -> None:
    """Serve a checkpoint as an OpenAI-compatible endpoint (chat completions, completions over token
    ids, usage, logprobs and vLLM's return_token_ids), for Harbor's agents or `taskforge filter`."""
    from trainer.model import PolicyLoadError, load_policy
    from trainer.serve import CheckpointServer

    try:
        model, tokenizer = load_policy(checkpoint, device=device, dtype=dtype)
    except PolicyLoadError as exc:
        raise fail(str(exc)) from None
    name = model_name or (Path(checkpoint).name if checkpoint != "tiny" else "tiny")
    server = CheckpointServer(model, tokenizer, model_name=name, host=host, port=port)
    console.print(f"serving {checkpoint} as model {name!r} at {server.base_url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
