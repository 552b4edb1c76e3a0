"""Does the trainer raise pass@1 on the tasks it trains on? The most basic claim an RL trainer
makes, measured on its own: from a checkpoint that solves some tasks, GRPO (and ECHO) for many
steps on a fixed set of training tasks, then the same tasks (and the held-out ones) evaluated
again with the same number of attempts. The study (echo_repro.py) spreads its few RL steps over
hundreds of tasks, so it cannot see this; here each task is visited several times.

    .venv/bin/python benchmarks/rl_learns.py --start runs/repro/sft-s1/checkpoints/final \\
        --tasks runs/repro/tasks/train --val runs/repro/tasks/val --out runs/rl-learns

Per task: pass rate over `attempts` sandbox-verified attempts before and after; the effect is the
mean paired difference with a 95% bootstrap interval over tasks (one seed: the interval does not
cover seed-to-seed spread, and says so). Resumes from its files.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taskforge.commands.pipeline import (  # noqa: E402
    PipelineSize,
    evaluate_checkpoint,
    evenly_spaced,
    log,
    per_task_pass_rates,
    train_mode,
)


@dataclass
class Size(PipelineSize):
    n_tasks: int = 24  # the fixed training set RL visits again and again
    rl_steps: int = 20
    tasks_per_step: int = 4
    group_size: int = 8
    rl_lr: float = 1e-4
    eval_attempts: int = 8  # per trained task
    held_out_attempts: int = 4
    concurrency: int = 3
    modes: tuple[str, ...] = ("grpo", "echo")


def bootstrap(diffs: list[float], reps: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile interval of the mean, resampling tasks."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(reps))
    return (sum(diffs) / len(diffs), means[int(0.025 * reps)], means[int(0.975 * reps) - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=Path, required=True, help="checkpoint to start from (it must solve some tasks)")
    parser.add_argument("--tasks", type=Path, required=True, help="training tasks; a fixed subset is used")
    parser.add_argument("--val", type=Path, default=None, help="held-out tasks, evaluated before and after too")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rl-learns")
    parser.add_argument("--steps", type=int, default=Size.rl_steps)
    parser.add_argument("--lr", type=float, default=Size.rl_lr)
    parser.add_argument("--modes", default="grpo,echo")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not (args.start / "config.json").is_file():
        sys.exit(f"{args.start} is not a checkpoint (no config.json): pass a checkpoints/final directory")
    size = replace(Size(), rl_steps=args.steps, rl_lr=args.lr, modes=tuple(args.modes.split(",")))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # The fixed training set: n_tasks evenly spaced over the sorted task folders (all families).
    subset = out / "tasks"
    if not subset.is_dir():
        from taskforge.tasks import discover_task_dirs

        chosen = evenly_spaced(discover_task_dirs([args.tasks]), size.n_tasks)
        tmp = out / "tasks.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for task_dir in chosen:
            shutil.copytree(task_dir, tmp / task_dir.name)
        tmp.rename(subset)
    log(f"{size.n_tasks} training tasks in {subset}; {size.eval_attempts} attempts per task per eval")

    def evaluate(name: str, checkpoint: Path) -> dict:
        row = {"train": evaluate_checkpoint(checkpoint, subset, out / name / "eval-train", size, seed=args.seed)}
        if args.val:
            held_out_size = replace(size, eval_attempts=size.held_out_attempts)
            row["heldout"] = evaluate_checkpoint(
                checkpoint, args.val, out / name / "eval-heldout", held_out_size, seed=args.seed
            )
        return {
            split: per_task_pass_rates(out / name / f"eval-{split}") for split in ("train", "heldout") if split in row
        }

    results = {"size": asdict(size), "start": str(args.start), "seed": args.seed, "policies": {}}
    results["policies"]["start"] = evaluate("start", args.start)
    for mode in size.modes:
        run_dir = out / mode
        final = train_mode(mode, args.seed, args.start, subset, run_dir, size)
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results["policies"][mode] = evaluate(mode, final) | {
            "reward_by_step": [row["reward_mean"] for row in curve],
            "signal_group_share_by_step": [row["signal_group_share"] for row in curve],
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))

    lines = [
        f"Start {args.start}; {size.n_tasks} training tasks, RL {size.rl_steps} steps x {size.tasks_per_step} tasks x "
        f"{size.group_size} rollouts, lr {size.rl_lr:g}, seed {args.seed}; eval {size.eval_attempts} attempts per "
        f"trained task ({size.held_out_attempts} per held-out task) at temperature {size.eval_temperature:g}. "
        "One seed: intervals resample tasks only.",
        "",
        "| policy | trained-task pass@1 | effect vs start (95% CI over tasks) | held-out pass@1 | effect vs start |",
        "|---|---|---|---|---|",
    ]
    start = results["policies"]["start"]
    for name, policy in results["policies"].items():
        cells = []
        for split in ("train", "heldout"):
            if split not in policy:
                cells += ["-", "-"]
                continue
            mean = sum(policy[split].values()) / len(policy[split])
            cells.append(f"{100 * mean:.1f}%")
            if name == "start":
                cells.append("-")
            else:
                point, lo, hi = bootstrap([policy[split][t] - start[split][t] for t in policy[split]])
                cells.append(f"{100 * point:+.1f} pp ({100 * lo:+.1f} to {100 * hi:+.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for mode in size.modes:
        rewards = results["policies"][mode]["reward_by_step"]
        lines.append("")
        lines.append(f"{mode} training reward by step: " + " ".join(f"{r:.2f}" for r in rewards))
    results["wall_seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"done in {results['wall_seconds'] / 60:.1f} min -> {out / 'results.md'}")


if __name__ == "__main__":
    main()
