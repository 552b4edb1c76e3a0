"""Reproduce the ECHO paper's claims in miniature, offline, on this machine's CPU.

    .venv/bin/python benchmarks/echo_repro.py            # full: 3 seeds, < 60 min here
    .venv/bin/python benchmarks/echo_repro.py --quick    # CI-sized: ~2 min here, one seed

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

from taskforge.commands.pipeline import (
    PipelineSize,
    env_ce,
    evaluate_checkpoint,
    generate_corpus,
    held_out_transcripts,
    log,
    sft_start,
    train_mode,
)

MODES = ("grpo", "echo", "env-only")


@dataclass
class Study(PipelineSize):
    seeds: tuple[int, ...] = (1, 2, 3)


FULL = Study(
    n_train=120,
    n_val=24,
    seeds=(1, 2, 3),
    rl_steps=8,
    tasks_per_step=4,
    group_size=2,
    sft_epochs=25,
    rl_lr=1e-3,
    eval_attempts=1,
)
# CI-sized: checks the study's stages and bookkeeping, not its outcome. One seed, short replies
# and few turns keep it at ~2 min on a quiet machine and well inside the test's limit under load.
QUICK = Study(
    n_train=12,
    n_val=4,
    seeds=(1,),
    rl_steps=2,
    tasks_per_step=1,
    group_size=2,
    sft_epochs=4,
    rl_lr=1e-3,
    eval_attempts=1,
    max_turns=3,
    max_new_tokens=64,
)


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
    parser.add_argument("--quick", action="store_true", help="the CI-sized study (~2 min here, one seed)")
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
    sft_eval = evaluate_checkpoint(start, val_dir, out / "sft" / "eval", study, seed=0)
    (out / "sft" / "env_ce.json").write_text(json.dumps({"after": env_ce_start}))
    results["start"]["eval"] = sft_eval["overall"]
    log(f"SFT start: held-out pass@1 {sft_eval['overall']['pass_at_1']:.3f}, env CE {env_ce_start:.3f}")

    for seed in study.seeds:
        for mode in MODES:
            run_dir = out / f"{mode}-s{seed}"
            final = train_mode(mode, seed, start, train_dir, run_dir, study)
            summary = evaluate_checkpoint(final, val_dir, run_dir / "eval", study, seed=seed)
            after = env_ce(final, transcripts)
            (run_dir / "env_ce.json").write_text(json.dumps({"before": env_ce_start, "after": after}))
            results["runs"][run_dir.name] = {
                "mode": mode,
                "seed": seed,
                "eval": summary["overall"],
                "env_ce_after": after,
                "success_rates": task_success_rates(run_dir / "eval"),
            }
            log(
                f"{run_dir.name}: held-out pass@1 {summary['overall']['pass_at_1']:.3f}, "
                f"env CE {env_ce_start:.3f} -> {after:.3f}"
            )

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
    rows.append(
        {
            "policy": "expert SFT (start)",
            "pass@1": start["eval"]["pass_at_1"],
            "ci": None,
            "timeouts": start["eval"]["timeout_rate"],
            "turns": start["eval"]["mean_turns"],
            "output_tokens": start["eval"]["mean_output_tokens"],
            "env_ce": start["env_ce"],
            "env_ce_delta": 0.0,
        }
    )
    for mode in MODES:
        runs = [r for r in results["runs"].values() if r["mode"] == mode]
        rates = [rate for r in runs for rate in r["success_rates"]]
        mean, lo, hi = mean_ci(rates)
        env_after = sum(r["env_ce_after"] for r in runs) / len(runs)
        rows.append(
            {
                "policy": f"SFT + {mode} ({len(runs)} seed{'s' if len(runs) != 1 else ''})",
                "pass@1": mean,
                "ci": [lo, hi],
                "timeouts": _mean_eval(runs, "timeout_rate"),
                "turns": _mean_eval(runs, "mean_turns"),
                "output_tokens": _mean_eval(runs, "mean_output_tokens"),
                "env_ce": env_after,
                "env_ce_delta": env_after - start["env_ce"],
            }
        )
    return rows


def _mean_eval(runs: list[dict], key: str) -> float:
    """Mean of one held-out eval metric over the seeds' runs (a missing value counts as 0)."""
    return sum(r["eval"][key] or 0 for r in runs) / len(runs)


def render(results: dict, quick: bool) -> str:
    lines = [
        f"Study: {'quick' if quick else 'full'}; {results['study']['n_train']} training tasks, "
        f"{results['study']['n_val']} held-out tasks; "
        f"{len(results['study']['seeds'])} seeds x {results['study']['rl_steps']} steps x "
        f"{results['study']['tasks_per_step']} tasks x {results['study']['group_size']} rollouts per mode; "
        f"wall time {results['wall_seconds'] / 60:.1f} min on {results['machine']}.",
        "",
        "| policy | held-out pass@1 (95% CI) | timeouts | turns | output tokens "
        "| held-out env CE (nats/token) | change vs start |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        ci = f" ({100 * row['ci'][0]:.1f}-{100 * row['ci'][1]:.1f})" if row["ci"] else ""
        lines.append(
            f"| {row['policy']} | {100 * row['pass@1']:.1f}%{ci} | {100 * row['timeouts']:.1f}% "
            f"| {row['turns']:.2f} | {row['output_tokens']:.0f} | {row['env_ce']:.3f} | {row['env_ce_delta']:+.3f} |"
        )
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
