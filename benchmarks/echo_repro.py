"""Reproduce the ECHO paper's claims in miniature, offline, on this machine's CPU.

    .venv/bin/python benchmarks/echo_repro.py            # full: 3 seeds, < 60 min here
    .venv/bin/python benchmarks/echo_repro.py --quick    # CI-sized: < 10 min here

One command runs the whole study on the embedded default (procedural tasks, the tiny
Qwen3-architecture model, the local Docker engine):
  1. generate a procedural corpus with a held-out split (family-stratified);
  2. held-out transcripts for the environment-token CE: a scripted explorer (ls, head, then the
     reference solution) plays the held-out tasks; none of the compared policies generated them;
  3. expert-SFT warm start on explorer demonstrations of the training split (run in Docker);
  4. from that one start, GRPO, ECHO and env-only (verifier-free), equal budgets, >= 3 seeds;
  5. every policy evaluated on the held-out split (pass@1 with a CI, timeouts, turns, tokens) and
     scored for env CE on the held-out transcripts, before (the SFT start) and after;
  6. results.json, results.md and the HTML/Markdown report with plots under --out.
Every stage resumes: run the same command again after an interruption.
Task parameters come from the families' closed pools (see taskforge/forge/pools.py), the
setting in which a from-scratch CPU model can learn anything at all (reference/machine.md).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODES = ("grpo", "echo", "env-only")


@dataclass
class Study:
    n_train: int
    n_val: int
    seeds: tuple[int, ...]
    steps: int
    tasks_per_step: int
    group_size: int
    sft_epochs: int
    eval_attempts: int
    max_turns: int = 5
    max_new_tokens: int = 160
    rl_lr: float = 2e-4
    sft_lr: float = 2e-3
    env_coef: float = 0.05
    corpus_seed: int = 2026


FULL = Study(n_train=240, n_val=24, seeds=(1, 2, 3), steps=16, tasks_per_step=4, group_size=4, sft_epochs=12, eval_attempts=2)
QUICK = Study(n_train=60, n_val=8, seeds=(1, 2, 3), steps=2, tasks_per_step=2, group_size=2, sft_epochs=4, eval_attempts=1, max_new_tokens=128)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generate_corpus(study: Study, out: Path) -> tuple[Path, Path]:
    from taskforge.forge.generate import generate

    tasks = out / "tasks"
    if not (tasks / "summary.json").is_file():
        generate(study.n_train + study.n_val, study.corpus_seed, tasks, val=study.n_val, progress=False, force=True)
    return tasks / "train", tasks / "val"


def held_out_transcripts(val_dir: Path, out: Path) -> Path:
    from trainer.sft import SFTConfig, collect_demonstrations
    from taskforge.tasks import discover_task_dirs

    target = out / "heldout-transcripts"
    episodes = collect_demonstrations(discover_task_dirs([val_dir]), target, SFTConfig(demonstrator="explorer"))
    log(f"held-out transcripts: {len(episodes)} explorer episodes scored 1.0 ({target})")
    return target


def sft_start(study: Study, train_dir: Path, out: Path) -> Path:
    from trainer.sft import SFTConfig, sft

    config = SFTConfig(tasks=str(train_dir), epochs=study.sft_epochs, lr=study.sft_lr, demonstrator="explorer", max_turns=study.max_turns)
    return sft(config, out / "sft", log=log)


def evaluate_policy(checkpoint: Path, val_dir: Path, run_dir: Path, study: Study, seed: int) -> dict:
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.evaluate import checkpoint_policy_factory, evaluate
    from taskforge.tasks import discover_task_dirs, load_task
    from trainer.train import TINY_SYSTEM_PROMPT

    import torch

    torch.manual_seed(seed)
    tasks = [load_task(d) for d in discover_task_dirs([val_dir])]
    factory = checkpoint_policy_factory(str(checkpoint), temperature=0.6, max_new_tokens=study.max_new_tokens)
    episode = EpisodeConfig(max_turns=study.max_turns, command_timeout_sec=10.0, max_output_chars=2000, system_prompt=TINY_SYSTEM_PROMPT)
    summary, _ = evaluate(tasks, run_dir, factory, attempts=study.eval_attempts, concurrency=2, episode=episode)
    return summary.model_dump()


def env_ce(checkpoint: Path, transcripts: Path) -> float:
    from taskforge.evaluate import env_ce_of_checkpoint

    return env_ce_of_checkpoint(str(checkpoint), [transcripts])["after"]


def train_mode(mode: str, seed: int, start: Path, train_dir: Path, out: Path, study: Study) -> Path:
    from trainer.train import TrainConfig, train

    config = TrainConfig(
        mode=mode, tasks=str(train_dir), policy=str(start), steps=study.steps, tasks_per_step=study.tasks_per_step, group_size=study.group_size,
        env_coef=None if mode == "grpo" else (study.env_coef if mode == "echo" else 1.0), lr=study.rl_lr, max_turns=study.max_turns,
        max_new_tokens=study.max_new_tokens, checkpoint_every=max(1, study.steps), seed=seed, epochs_per_batch=2,
    )
    return train(config, out, log=log)


def mean_ci(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95% percentile-bootstrap CI."""
    if not values:
        return (math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(2000))
    return (sum(values) / len(values), means[50], means[1949])


def task_success_rates(run_dir: Path) -> list[float]:
    """Per-task success rate of an eval run (the unit the pass@1 CI is bootstrapped over)."""
    per_task: dict[str, list[float]] = {}
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        record = json.loads(line)
        per_task.setdefault(record["task_path"], []).append(1.0 if (record.get("reward") or 0) >= 1.0 else 0.0)
    return [sum(v) / len(v) for v in per_task.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI-sized study (< 10 min here)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/repro-quick or runs/repro)")
    args = parser.parse_args()
    study = QUICK if args.quick else FULL
    out = args.out or REPO / "runs" / ("repro-quick" if args.quick else "repro")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"study {'quick' if args.quick else 'full'}: {asdict(study)} -> {out}")

    train_dir, val_dir = generate_corpus(study, out)
    transcripts = held_out_transcripts(val_dir, out)
    start = sft_start(study, train_dir, out)
    env_ce_start = env_ce(start, transcripts)
    results: dict = {"study": asdict(study), "start": {"checkpoint": str(start), "env_ce": env_ce_start}, "runs": {}}
    sft_eval = evaluate_policy(start, val_dir, out / "sft" / "eval", study, seed=0)
    (out / "sft" / "env_ce.json").write_text(json.dumps({"after": env_ce_start}))
    results["start"]["eval"] = sft_eval["overall"]
    log(f"SFT start: held-out pass@1 {sft_eval['overall']['pass_at_1']:.3f}, env CE {env_ce_start:.3f}")

    for seed in study.seeds:
        for mode in MODES:
            run_dir = out / f"{mode}-s{seed}"
            final = train_mode(mode, seed, start, train_dir, run_dir, study)
            summary = evaluate_policy(final, val_dir, run_dir / "eval", study, seed=seed)
            after = env_ce(final, transcripts)
            (run_dir / "env_ce.json").write_text(json.dumps({"before": env_ce_start, "after": after}))
            results["runs"][run_dir.name] = {"mode": mode, "seed": seed, "eval": summary["overall"], "env_ce_after": after, "success_rates": task_success_rates(run_dir / "eval")}
            log(f"{run_dir.name}: held-out pass@1 {summary['overall']['pass_at_1']:.3f}, env CE {env_ce_start:.3f} -> {after:.3f}")

    table = aggregate(results)
    results["table"] = table
    results["wall_seconds"] = time.monotonic() - started
    results["machine"] = machine()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    markdown = render(results, args.quick)
    (out / "results.md").write_text(markdown)

    from taskforge.report import load_run, write_report

    runs = [out / "sft"] + [out / f"{mode}-s{seed}" for mode in MODES for seed in study.seeds]
    md_path, html_path = write_report([load_run(p) for p in runs], out / "report")
    print(markdown)
    log(f"done in {results['wall_seconds'] / 60:.1f} min; report: {html_path}")


def aggregate(results: dict) -> list[dict]:
    rows = []
    start = results["start"]
    rows.append({"policy": "expert SFT (start)", "pass@1": start["eval"]["pass_at_1"], "ci": None, "timeouts": start["eval"]["timeout_rate"], "turns": start["eval"]["mean_turns"], "output_tokens": start["eval"]["mean_output_tokens"], "env_ce": start["env_ce"], "env_ce_delta": 0.0})
    for mode in MODES:
        runs = [r for r in results["runs"].values() if r["mode"] == mode]
        rates = [rate for r in runs for rate in r["success_rates"]]
        mean, lo, hi = mean_ci(rates)
        avg = lambda key: sum(r["eval"][key] or 0 for r in runs) / len(runs)  # noqa: E731
        env_after = sum(r["env_ce_after"] for r in runs) / len(runs)
        rows.append({"policy": f"SFT + {mode} ({len(runs)} seeds)", "pass@1": mean, "ci": [lo, hi], "timeouts": avg("timeout_rate"), "turns": avg("mean_turns"), "output_tokens": avg("mean_output_tokens"), "env_ce": env_after, "env_ce_delta": env_after - start["env_ce"]})
    return rows


def render(results: dict, quick: bool) -> str:
    lines = [
        f"Study: {'quick' if quick else 'full'}; {results['study']['n_train']} training tasks, {results['study']['n_val']} held-out tasks; "
        f"{len(results['study']['seeds'])} seeds x {results['study']['steps']} steps x {results['study']['tasks_per_step']} tasks x {results['study']['group_size']} rollouts per mode; "
        f"wall time {results['wall_seconds'] / 60:.1f} min on {results['machine']}.",
        "",
        "| policy | held-out pass@1 (95% CI) | timeouts | turns | output tokens | held-out env CE (nats/token) | change vs start |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        ci = f" ({100 * row['ci'][0]:.1f}-{100 * row['ci'][1]:.1f})" if row["ci"] else ""
        lines.append(f"| {row['policy']} | {100 * row['pass@1']:.1f}%{ci} | {100 * row['timeouts']:.1f}% | {row['turns']:.2f} | {row['output_tokens']:.0f} | {row['env_ce']:.3f} | {row['env_ce_delta']:+.3f} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.system()} {platform.machine()}, {cores} cores{memory}, CPU only"


if __name__ == "__main__":
    main()
