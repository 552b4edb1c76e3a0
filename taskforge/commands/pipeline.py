"""The whole pipeline on the embedded default, as stages that read what the previous one wrote:
generate -> validate -> held-out transcripts -> expert SFT -> RL -> eval -> env CE -> report.

`taskforge demo` runs it at small size; benchmarks/echo_repro.py runs the same stages as a study
(three RL modes x seeds). Every stage resumes from its files, so an interrupted run continues.

It lives in the command layer because it composes taskforge's stages with trainer/ (which
taskforge's core never imports).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PipelineSize:
    n_train: int = 48
    n_val: int = 8
    corpus_seed: int = 2026
    sft_epochs: int = 12
    sft_lr: float = 3e-3
    rl_steps: int = 3
    tasks_per_step: int = 2
    group_size: int = 2
    rl_lr: float = 2e-4
    env_coef: float = 0.05
    eval_attempts: int = 1
    max_turns: int = 5
    max_new_tokens: int = 160


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generate_corpus(size: PipelineSize, out: Path) -> tuple[Path, Path]:
    """A procedural corpus with a family-stratified held-out split: (train dir, val dir)."""
    from taskforge.forge.generate import generate

    tasks = out / "tasks"
    if not (tasks / "summary.json").is_file():
        generate(size.n_train + size.n_val, size.corpus_seed, tasks, val=size.n_val, progress=False, force=True)
    return tasks / "train", tasks / "val"


def validate_split(task_dir: Path, out: Path) -> tuple[int, int]:
    """taskforge validate on a split: (passed, total)."""
    from taskforge.validate import validate_tasks

    results = validate_tasks([task_dir], out / f"validate-{task_dir.name}", jobs=2)
    return sum(r.passed for r in results), len(results)


def held_out_transcripts(val_dir: Path, out: Path) -> Path:
    """Episodes of a scripted explorer (ls, head, then the reference solution) on the held-out
    tasks: stored rollouts none of the trained policies generated, for the env CE."""
    from taskforge.tasks import discover_task_dirs
    from trainer.sft import SFTConfig, collect_demonstrations

    target = out / "heldout-transcripts"
    episodes = collect_demonstrations(discover_task_dirs([val_dir]), target, SFTConfig(demonstrator="explorer"))
    log(f"held-out transcripts: {len(episodes)} explorer episodes ({target})")
    return target


def sft_start(size: PipelineSize, train_dir: Path, out: Path) -> Path:
    from trainer.sft import SFTConfig, sft

    config = SFTConfig(
        tasks=str(train_dir), epochs=size.sft_epochs, lr=size.sft_lr, demonstrator="explorer", max_turns=size.max_turns
    )
    return sft(config, out / "sft", log=log)


def train_mode(mode: str, seed: int, start: Path, train_dir: Path, run_dir: Path, size: PipelineSize) -> Path:
    from trainer.train import TrainConfig, train

    config = TrainConfig(
        mode=mode,
        tasks=str(train_dir),
        policy=str(start),
        steps=size.rl_steps,
        tasks_per_step=size.tasks_per_step,
        group_size=size.group_size,
        env_coef=None if mode == "grpo" else (size.env_coef if mode == "echo" else 1.0),
        lr=size.rl_lr,
        max_turns=size.max_turns,
        max_new_tokens=size.max_new_tokens,
        checkpoint_every=max(1, size.rl_steps),
        seed=seed,
    )
    return train(config, run_dir, log=log)


def evaluate_checkpoint(checkpoint: Path, val_dir: Path, run_dir: Path, size: PipelineSize, seed: int = 0) -> dict:
    """Held-out eval of a checkpoint into run_dir (ledger + trials + eval.json); the summary."""
    import torch

    from taskforge.agent.episode import EpisodeConfig
    from taskforge.evaluate import evaluate
    from taskforge.tasks import discover_task_dirs, load_task
    from trainer.checkpoint_eval import checkpoint_policy_factory
    from trainer.train import TINY_SYSTEM_PROMPT

    torch.manual_seed(seed)
    tasks = [load_task(d) for d in discover_task_dirs([val_dir])]
    factory = checkpoint_policy_factory(str(checkpoint), temperature=0.6, max_new_tokens=size.max_new_tokens)
    episode = EpisodeConfig(
        max_turns=size.max_turns, command_timeout_sec=10.0, max_output_chars=2000, system_prompt=TINY_SYSTEM_PROMPT
    )
    summary, _ = evaluate(tasks, run_dir, factory, attempts=size.eval_attempts, concurrency=2, episode=episode)
    return summary.model_dump()


def env_ce(checkpoint: Path, transcripts: Path) -> float:
    from trainer.checkpoint_eval import env_ce_of_checkpoint

    return env_ce_of_checkpoint(str(checkpoint), [transcripts])["after"]


def run_demo(out: Path, size: PipelineSize = PipelineSize()) -> Path:
    """generate, validate, SFT, train echo for a few steps, eval, report; returns report.html."""
    from taskforge.report import load_run, write_report

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    log(f"1/7 generate {size.n_train} + {size.n_val} procedural tasks -> {out / 'tasks'}")
    train_dir, val_dir = generate_corpus(size, out)
    log("2/7 validate the held-out split in Docker (oracle 1.0, nop 0.0)")
    passed, total = validate_split(val_dir, out)
    log(f"    {passed}/{total} held-out tasks passed validation")
    log("3/7 held-out transcripts for the environment-token CE")
    transcripts = held_out_transcripts(val_dir, out)
    log("4/7 expert SFT on explorer demonstrations of the training split")
    start = sft_start(size, train_dir, out)
    start_ce = env_ce(start, transcripts)
    (out / "sft" / "env_ce.json").write_text(json.dumps({"after": start_ce}))
    log(f"5/7 ECHO for {size.rl_steps} steps from the SFT checkpoint")
    final = train_mode("echo", 0, start, train_dir, out / "echo", size)
    log("6/7 held-out eval of both checkpoints, and their env CE")
    evaluate_checkpoint(start, val_dir, out / "sft" / "eval", size)
    evaluate_checkpoint(final, val_dir, out / "echo" / "eval", size)
    (out / "echo" / "env_ce.json").write_text(json.dumps({"before": start_ce, "after": env_ce(final, transcripts)}))
    log("7/7 report")
    _, html_path = write_report([load_run(out / "sft"), load_run(out / "echo")], out / "report")
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return html_path
