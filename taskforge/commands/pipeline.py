"""The whole pipeline on the embedded default, as stages that read what the previous one wrote:
generate -> validate -> held-out transcripts -> demonstrations -> expert SFT -> RL -> eval -> env CE
-> report.

`taskforge demo` runs it at small size; benchmarks/echo_repro.py runs the same stages as a study
(RL modes x seeds, a control start). Every stage resumes from its files, so an interrupted run
continues.

It lives in the command layer because it composes taskforge's stages with trainer/ (which
taskforge's core never imports).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

# The study's family set: five families whose easy tasks a from-scratch CPU model learns to solve
# from a few hundred demonstrations (their solutions are one or two short commands over closed
# vocabularies; see docs/repro). The other families need programs the tiny model does not learn in
# this budget, and a start that solves nothing gives RL no signal.
STUDY_FAMILIES = ("archive_backup", "archive_restore", "stale_file_cleanup", "permissions_fix", "permission_audit")


@dataclass
class PipelineSize:
    n_train: int = 150
    n_val: int = 20
    families: tuple[str, ...] = STUDY_FAMILIES
    difficulties: tuple[str, ...] = ("easy",)
    corpus_seed: int = 2026
    policy: str = "small"
    demonstrator: str = "oracle-text"
    sft_epochs: int = 12
    control_epochs: int = 3
    sft_lr: float = 3e-3
    sft_batch_size: int = 16
    rl_steps: int = 3
    tasks_per_step: int = 2
    group_size: int = 8
    rl_lr: float = 2e-4
    env_coef: float = 0.05
    temperature: float = 1.0
    eval_attempts: int = 4
    eval_temperature: float = 1.0
    max_turns: int = 3
    max_new_tokens: int = 96
    max_output_chars: int = 1000
    concurrency: int = 2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generate_corpus(size: PipelineSize, out: Path) -> tuple[Path, Path]:
    """A procedural corpus with a held-out split in which every held-out (family, difficulty) cell
    is also in training: (train dir, val dir)."""
    from taskforge.forge.generate import generate

    tasks = out / "tasks"
    summary = tasks / "summary.json"
    if summary.is_file():
        made = json.loads(summary.read_text())
        wanted = {
            "seed": size.corpus_seed,
            "n": size.n_train + size.n_val,
            "val": size.n_val,
            "families": list(size.families),
            "difficulties": list(size.difficulties),
        }
        differs = {key: (made.get(key), value) for key, value in wanted.items() if made.get(key) != value}
        if differs:
            shown = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in differs.items())
            raise ValueError(
                f"{tasks} holds another corpus ({shown}): it comes from an earlier version of this run. "
                f"Delete {out} or choose another output folder (--out)"
            )
    else:
        generate(
            size.n_train + size.n_val,
            size.corpus_seed,
            tasks,
            families=list(size.families),
            difficulties=list(size.difficulties),
            val=size.n_val,
            progress=False,
            force=True,
        )
    return tasks / "train", tasks / "val"


def check_demonstration_budget(size: PipelineSize, *task_sets: Path) -> int:
    """The longest demonstration reply in tokens; raises if max_new_tokens would cut one."""
    from taskforge.tasks import discover_task_dirs
    from trainer.model import load_policy
    from trainer.sft import longest_demonstration_action

    _, tokenizer = load_policy(size.policy)
    longest, where = longest_demonstration_action(tokenizer, discover_task_dirs(list(task_sets)), size.demonstrator)
    if longest > size.max_new_tokens:
        raise ValueError(
            f"the {size.demonstrator} demonstration of {where} has a {longest}-token reply but max_new_tokens is "
            f"{size.max_new_tokens}: the policy could never write it. Raise max_new_tokens to >= {longest}."
        )
    return longest


def validate_split(task_dir: Path, out: Path) -> tuple[int, int]:
    """taskforge validate on a split: (passed, total)."""
    from taskforge.validate import validate_tasks

    results = validate_tasks([task_dir], out / f"validate-{task_dir.name}", jobs=2)
    return sum(r.passed for r in results), len(results)


def _sft_config(size: PipelineSize, task_dir: Path, **overrides):
    from trainer.sft import SFTConfig

    settings = dict(
        tasks=str(task_dir),
        epochs=size.sft_epochs,
        lr=size.sft_lr,
        batch_size=size.sft_batch_size,
        demonstrator=size.demonstrator,
        max_turns=size.max_turns,
        max_output_chars=size.max_output_chars,
        concurrency=size.concurrency,
    )
    if overrides.get("demonstrator", size.demonstrator) == "explorer":
        settings["max_turns"] = max(size.max_turns, 4)  # ls, head, the solution, DONE
    return SFTConfig(**(settings | overrides))


def held_out_transcripts(size: PipelineSize, val_dir: Path, out: Path) -> Path:
    """Episodes of the scripted explorer (ls, head, then the reference solution) on the held-out
    tasks: stored rollouts none of the trained policies generated, for the env CE."""
    from taskforge.tasks import discover_task_dirs
    from trainer.sft import collect_demonstrations

    target = out / "heldout-transcripts"
    config = _sft_config(size, val_dir, demonstrator="explorer")
    episodes = collect_demonstrations(discover_task_dirs([val_dir]), target, config)
    log(f"held-out transcripts: {len(episodes)} explorer episodes ({target})")
    return target


def demonstrations(size: PipelineSize, train_dir: Path, out: Path, demonstrator: str | None = None) -> Path:
    """A demonstrator's episodes on the training tasks, run once in Docker and shared by every SFT."""
    from taskforge.tasks import discover_task_dirs
    from trainer.sft import collect_demonstrations

    demonstrator = demonstrator or size.demonstrator
    target = out / f"demonstrations-{demonstrator}"
    config = _sft_config(size, train_dir, demonstrator=demonstrator)
    episodes = collect_demonstrations(discover_task_dirs([train_dir]), target, config)
    log(f"demonstrations: {len(episodes)} {demonstrator} episodes scored 1.0 ({target})")
    return target


def sft_start(size: PipelineSize, train_dir: Path, run_dir: Path, *, seed: int = 0, demos: Path) -> Path:
    """Expert SFT of size.policy on the shared demonstrations (action tokens); seed sets the data order."""
    from trainer.sft import sft

    config = _sft_config(size, train_dir, seed=seed, policy=size.policy)
    return sft(config, run_dir, log=log, demonstrations=[demos])


def world_model_start(
    size: PipelineSize, start: Path, train_dir: Path, run_dir: Path, *, seed: int = 0, demos: Path, transcripts: Path
) -> Path:
    """The control start: the SFT start trained further on its demonstrations' actions plus the env
    CE of explorer transcripts of the training tasks (their actions not imitated), so it models
    observations before RL while it keeps acting as the SFT start does (env CE alone made it
    forget its actions: action CE 0.09 -> 4.0 in 2 epochs)."""
    from trainer.sft import sft

    config = _sft_config(
        size, train_dir, seed=seed, policy=str(start), epochs=size.control_epochs, env_coef=1.0, lr=size.sft_lr / 4
    )
    return sft(config, run_dir, log=log, demonstrations=[demos], observation_transcripts=[transcripts])


def train_mode(
    mode: str,
    seed: int,
    start: Path,
    train_dir: Path,
    run_dir: Path,
    size: PipelineSize,
    *,
    env_coef: float | None = None,
    lr: float | None = None,
) -> Path:
    from trainer.train import TrainConfig, train

    if env_coef is None:
        env_coef = size.env_coef if mode == "echo" else 1.0
    config = TrainConfig(
        mode=mode,
        tasks=str(train_dir),
        policy=str(start),
        steps=size.rl_steps,
        tasks_per_step=size.tasks_per_step,
        group_size=size.group_size,
        env_coef=None if mode == "grpo" else env_coef,
        lr=lr if lr is not None else size.rl_lr,
        temperature=size.temperature,
        max_turns=size.max_turns,
        max_new_tokens=size.max_new_tokens,
        max_output_chars=size.max_output_chars,
        concurrency=size.concurrency,
        checkpoint_every=max(1, size.rl_steps),
        seed=seed,
    )
    return train(config, run_dir, log=log)


def evenly_spaced(items: list, k: int) -> list:
    """k items spread over the list (all of them when k >= len)."""
    if k >= len(items):
        return list(items)
    return [items[int((j + 0.5) * len(items) / k)] for j in range(k)]


def evaluate_checkpoint(
    checkpoint: Path, task_dir: Path, run_dir: Path, size: PipelineSize, seed: int = 0, limit: int | None = None
) -> dict:
    """Eval of a checkpoint on a task set (or `limit` tasks of it, evenly spaced) into run_dir
    (ledger + trials + eval.json); the summary."""
    import torch

    from taskforge.agent.episode import EpisodeConfig
    from taskforge.evaluate import evaluate
    from taskforge.tasks import discover_task_dirs, load_task
    from trainer.checkpoint_eval import checkpoint_policy_factory
    from trainer.train import TINY_SYSTEM_PROMPT

    torch.manual_seed(seed)
    task_dirs = discover_task_dirs([task_dir])
    if limit is not None:
        task_dirs = evenly_spaced(task_dirs, limit)
    tasks = [load_task(d) for d in task_dirs]
    factory = checkpoint_policy_factory(
        str(checkpoint), temperature=size.eval_temperature, max_new_tokens=size.max_new_tokens
    )
    episode = EpisodeConfig(
        max_turns=size.max_turns,
        command_timeout_sec=10.0,
        max_output_chars=size.max_output_chars,
        system_prompt=TINY_SYSTEM_PROMPT,
    )
    summary, _ = evaluate(
        tasks, run_dir, factory, attempts=size.eval_attempts, concurrency=size.concurrency, episode=episode
    )
    return summary.model_dump()


def per_task_pass_rates(run_dir: Path) -> dict[str, float]:
    """Task -> share of its attempts in run_dir's ledger that passed (reward 1.0; an errored
    attempt counts as failed)."""
    attempts: dict[str, list[float]] = {}
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        record = json.loads(line)
        attempts.setdefault(Path(record["task_path"]).name, []).append(float((record.get("reward") or 0) >= 1.0))
    return {task: sum(v) / len(v) for task, v in sorted(attempts.items())}


def env_ce(checkpoint: Path, transcripts: Path) -> float:
    from trainer.checkpoint_eval import env_ce_of_checkpoint

    return env_ce_of_checkpoint(str(checkpoint), [transcripts])["after"]


# The demo: the study's policy on one study family, sized for ~15 min on 2 cores.
# Probes (set-up done, other jobs beside it): archive_backup alone, 100 demonstrations x 20 epochs:
# the SFT start solved 4 of 40 held-out attempts, ECHO's third step had reward 0.50 with signal in
# every group. stale_file_cleanup (the demo's family through generator 1.1) fell to 0 of 40 once its
# instances got harder. Two families (120 x 16 epochs) left the start at 0 of 40; all five (150 x 12)
# at 0 of 80. RL at lr 1e-4 (2e-4 took ECHO's training reward from 0.25 to 0 in 3 steps).
DEMO_SIZE = PipelineSize(
    n_train=100,
    n_val=10,
    families=("archive_backup",),
    sft_epochs=20,
    sft_batch_size=8,
    sft_lr=2e-3,
    rl_steps=3,
    tasks_per_step=2,
    rl_lr=1e-4,
)


def run_demo(out: Path, size: PipelineSize = DEMO_SIZE) -> Path:
    """generate, validate, SFT, ECHO for a few steps, eval, report; returns report.html."""
    from taskforge.report import load_run, write_report

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    log(f"1/7 generate {size.n_train} + {size.n_val} procedural tasks ({', '.join(size.families)}) -> {out / 'tasks'}")
    train_dir, val_dir = generate_corpus(size, out)
    longest = check_demonstration_budget(size, train_dir, val_dir)
    log(f"    longest demonstration reply: {longest} tokens (budget {size.max_new_tokens} per turn)")
    log("2/7 validate the held-out split in Docker (oracle 1.0, nop 0.0)")
    passed, total = validate_split(val_dir, out)
    log(f"    {passed}/{total} held-out tasks passed validation")
    log("3/7 held-out transcripts for the environment-token CE")
    transcripts = held_out_transcripts(size, val_dir, out)
    log(f"4/7 expert SFT on {size.demonstrator} demonstrations of the training split")
    start = sft_start(size, train_dir, out / "sft", demos=demonstrations(size, train_dir, out))
    start_ce = env_ce(start, transcripts)
    (out / "sft" / "env_ce.json").write_text(json.dumps({"after": start_ce}))
    log(f"5/7 ECHO for {size.rl_steps} steps x {size.tasks_per_step} tasks x {size.group_size} rollouts from SFT")
    final = train_mode("echo", 0, start, train_dir, out / "echo", size)
    log(f"6/7 held-out eval of both checkpoints ({size.eval_attempts} attempts per task), and their env CE")
    for name, checkpoint in (("sft", start), ("echo", final)):
        summary = evaluate_checkpoint(checkpoint, val_dir, out / name / "eval", size)
        overall = summary["overall"]
        log(f"    {name}: held-out pass@1 {overall['pass_at_1']:.3f} over {overall['n_trials']} trials")
    (out / "echo" / "env_ce.json").write_text(json.dumps({"before": start_ce, "after": env_ce(final, transcripts)}))
    log("7/7 report")
    _, html_path = write_report([load_run(out / "sft"), load_run(out / "echo")], out / "report")
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return html_path
