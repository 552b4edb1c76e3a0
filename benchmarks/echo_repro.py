"""The ECHO study in miniature, offline, on this machine's CPU: does RL from an expert-SFT start raise
pass@1, and does the environment-token term (ECHO) change that or the policy's world model?

    .venv/bin/python benchmarks/echo_repro.py            # the full study (see FULL below)
    .venv/bin/python benchmarks/echo_repro.py --quick    # CI-sized: checks the stages, not the outcome
    .venv/bin/python benchmarks/echo_repro.py --render runs/repro   # table + plots again from results.json

On two or more cores, one process per seed: --part prep once (what they share), then
--seeds N --part main for each seed and --seeds 1 --part sweeps side by side on the same --out, then
--combine DIR/results-main-s1.json ... DIR/results-sweeps-s1.json --out DIR.

Stages (each resumes from its files; run the same command again after an interruption):
  1. a procedural corpus of the study's families with a fair held-out split (every held-out
     (family, difficulty) cell also has training tasks); every demonstration reply must fit the
     per-turn token budget (checked, not assumed);
  2. held-out transcripts of a scripted explorer (ls, head, then the reference solution) on the
     held-out tasks: the env CE is measured on rollouts none of the compared policies played;
  3. demonstrations of the training tasks (the reference solution typed, then DONE), and explorer
     transcripts of the same tasks, each run once in Docker;
  4. per seed, two starts (the seed sets the data order): expert SFT on the demonstrations' action
     tokens (the paper's baseline), and the control: that start trained further on the same
     actions plus the env CE of the explorer transcripts, so it already models observations;
  5. per seed, from the SFT start: GRPO, ECHO (lambda 0.05), env-only; from the control start:
     GRPO and ECHO; at the first seed, a lambda sweep (ECHO) and a learning-rate sweep (GRPO);
  6. every policy evaluated on all held-out tasks and on a fixed subset of training tasks
     (sandbox-verified, several attempts per task), and scored for env CE on the held-out transcripts;
  7. results.json, then results.md and plots written from results.json alone, and the HTML report.

Intervals are 95% hierarchical-bootstrap intervals: seeds resampled, then tasks within each seed, so
they account for both; effects are paired (same seed, same tasks).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taskforge.commands.pipeline import (
    PipelineSize,
    check_demonstration_budget,
    demonstrations,
    env_ce,
    evaluate_checkpoint,
    generate_corpus,
    held_out_transcripts,
    log,
    per_task_pass_rates,
    sft_start,
    train_mode,
    world_model_start,
)


@dataclass
class Study(PipelineSize):
    seeds: tuple[int, ...] = (1, 2, 3)
    lambda_sweep: tuple[float, ...] = (0.01, 0.2)  # ECHO lambdas beyond env_coef (0.05), at the first seed
    lr_sweep: tuple[float, ...] = ()  # GRPO learning rates beyond rl_lr, at the first seed
    eval_train_tasks: int = 5
    control: bool = True  # the control start (SFT + env CE on explorer transcripts) and its GRPO / ECHO runs
    env_only: bool = True  # the env-only run at every seed


# n_train 600: at 300 (20 epochs) the SFT start solved 9.2% held-out (3 seeds, 2.9-16.7) and 40% of its
# own training tasks, i.e. under-trained; a probe at 600 reached 45-49% held-out (2 seeds).
FULL = Study(
    n_train=600,
    n_val=20,
    seeds=(1, 2, 3),
    # 0.001: at 0.01-0.2 the env term's gradient was 5-100x GRPO's on the same first batch (pre-clip
    # norms 0.46-8.7 vs 0.08), and Adam, being scale-free, took about the same env-CE step at each.
    lambda_sweep=(0.001, 0.01, 0.2),
    lr_sweep=(1e-4, 1e-3),
    sft_epochs=20,
    sft_lr=2e-3,
    control_epochs=2,
    rl_steps=4,
    tasks_per_step=2,
    group_size=8,
    rl_lr=3e-4,
    eval_attempts=4,
    eval_train_tasks=5,
    concurrency=3,
)
# CI-sized: every stage and every kind of run once, on a handful of tasks. It checks the study's
# plumbing and bookkeeping, not its outcome.
QUICK = Study(
    n_train=6,
    n_val=3,
    seeds=(1,),
    lambda_sweep=(),
    lr_sweep=(),
    sft_epochs=2,
    control_epochs=1,
    rl_steps=1,
    tasks_per_step=1,
    group_size=4,
    eval_attempts=1,
    eval_train_tasks=1,
    max_turns=2,  # the solution, then DONE
    max_new_tokens=64,  # covers the quick corpus's longest reply (checked at the start)
)
# SmolLM2-135M-Instruct (`taskforge model get smollm2-135m`): 27x the parameters of `small` and about
# 10x slower per token here (training 50-100 tokens/s on one thread), so one seed, the SFT start,
# GRPO and ECHO only, at a size that finishes in about 1.5 h on 2 cores. Learning rates for a
# pretrained model: 1e-4 for SFT (3 epochs), 1e-5 for RL.
SMOLLM2 = Study(
    policy="smollm2-135m",
    n_train=100,
    n_val=10,
    seeds=(1,),
    lambda_sweep=(),
    lr_sweep=(),
    control=False,
    env_only=False,
    sft_epochs=3,
    sft_lr=1e-4,
    sft_batch_size=8,
    rl_steps=4,
    tasks_per_step=2,
    group_size=8,
    rl_lr=1e-5,
    eval_attempts=4,
    eval_train_tasks=5,
    concurrency=3,
)
# A policy named here runs at its own size; any other --policy runs at FULL's.
POLICY_SIZES = {"smollm2-135m": SMOLLM2}


def run_plan(study: Study) -> list[dict]:
    """Every RL run of the study: name, group label, mode, seed, start, lambda, lr. At every seed:
    GRPO, ECHO (lambda env_coef), env-only, and GRPO and ECHO from the control start; at the first
    seed also the learning-rate (GRPO) and lambda (ECHO) sweeps."""
    plan = []
    first = study.seeds[0]
    lam = study.env_coef
    for seed in study.seeds:
        start, control = f"sft-s{seed}", f"sft-env-s{seed}"
        plan += [
            dict(name=f"grpo-s{seed}", group="SFT + GRPO", mode="grpo", seed=seed, start=start),
            dict(name=f"echo{lam:g}-s{seed}", group=f"SFT + ECHO l={lam:g}", mode="echo", seed=seed, start=start)
            | {"lambda": lam},
        ]
        if study.env_only:
            plan.append(dict(name=f"env-only-s{seed}", group="SFT + env-only", mode="env-only", seed=seed, start=start))
        if study.control:
            plan += [
                dict(name=f"control-grpo-s{seed}", group="SFT(+env CE) + GRPO", mode="grpo", seed=seed, start=control),
                dict(name=f"control-echo{lam:g}-s{seed}", group=f"SFT(+env CE) + ECHO l={lam:g}", mode="echo")
                | dict(seed=seed, start=control, **{"lambda": lam}),
            ]
    sweeps = [
        dict(name=f"grpo-lr{lr:g}-s{first}", group=f"SFT + GRPO lr={lr:g}", mode="grpo", seed=first)
        | dict(start=f"sft-s{first}", lr=lr)
        for lr in study.lr_sweep
    ] + [
        dict(name=f"echo{sweep_lambda:g}-s{first}", group=f"SFT + ECHO l={sweep_lambda:g}", mode="echo")
        | dict(seed=first, start=f"sft-s{first}", **{"lambda": sweep_lambda})
        for sweep_lambda in study.lambda_sweep
    ]
    # Every seed's main runs, then the sweeps: a study stopped early has the comparison over seeds
    # (what its intervals need) before the sweeps.
    return [run | {"part": "main"} for run in plan] + [run | {"part": "sweeps"} for run in sweeps]


def sft_curve(run_dir: Path) -> list[dict]:
    """Per epoch: action CE, env CE, tokens trained on and seconds."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: row.get(k) for k in ("step", "sft_loss", "env_ce", "tokens", "seconds")} for row in rows]


def throughput(results: dict) -> dict[str, float | None]:
    """Tokens per second over the whole study: SFT (forward + backward over every token of the
    demonstrations), RL sampling (action tokens per second of rollout time, Docker included) and RL
    training (every token of the batch, forward + backward, per second of update time)."""
    policies = results["policies"].values()
    sft = [row for p in policies for row in p.get("sft_curve") or [] if row.get("tokens")]
    rl = [row for p in policies for row in p.get("curve") or [] if row.get("rollout_seconds")]

    def rate(tokens: float, seconds: float) -> float | None:
        return round(tokens / seconds, 1) if seconds > 0 else None

    return {
        "sft_tokens_per_s": rate(sum(r["tokens"] for r in sft), sum(r["seconds"] for r in sft)),
        "rl_sampling_action_tokens_per_s": rate(
            sum(r["action_tokens"] for r in rl), sum(r["rollout_seconds"] for r in rl)
        ),
        "rl_training_tokens_per_s": rate(
            sum(r["tokens"] for r in rl), sum(r["seconds"] - r["rollout_seconds"] for r in rl)
        ),
    }


def curve(run_dir: Path) -> list[dict]:
    keys = (
        *("step", "reward_mean", "pass_rate", "env_ce", "signal_group_share", "output_tokens_per_episode"),
        *("tokens", "action_tokens", "rollout_seconds", "seconds"),
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: row.get(k) for k in keys} for row in rows]


def evaluate_policy(name: str, checkpoint: Path, study: Study, dirs: dict, out: Path, seed: int) -> dict:
    """Held-out and training-subset pass@1 per task, and env CE on the held-out transcripts."""
    run_dir = out / name
    held = evaluate_checkpoint(checkpoint, dirs["val"], run_dir / "eval", study, seed=seed)
    limit = study.eval_train_tasks
    evaluate_checkpoint(checkpoint, dirs["train"], run_dir / "eval-train", study, seed=seed, limit=limit)
    ce_file = run_dir / "env_ce.json"
    if not ce_file.is_file():
        ce_file.write_text(json.dumps({"after": env_ce(checkpoint, dirs["transcripts"])}))
    result = {
        "heldout": per_task_pass_rates(run_dir / "eval"),
        "train": per_task_pass_rates(run_dir / "eval-train"),
        "env_ce": json.loads(ce_file.read_text())["after"],
        "heldout_eval": {
            k: held["overall"][k]
            for k in ("pass_at_1", "n_trials", "timeout_rate", "mean_turns", "mean_output_tokens", "error_rate")
        },
    }
    log(
        f"{name}: held-out pass@1 {_mean(result['heldout'].values()):.3f}, "
        f"train pass@1 {_mean(result['train'].values()):.3f}, env CE {result['env_ce']:.3f}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI-sized study (checks the stages, not the outcome)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/repro-quick or runs/repro)")
    parser.add_argument("--render", type=Path, default=None, help="only write results.md + plots from DIR/results.json")
    parser.add_argument(
        "--policy", default=None, help="the model to start from (default small; e.g. smollm2-135m after `model get`)"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="run only these seeds of the design, e.g. 1 or 2,3 (the sweeps belong to its first seed); "
        "writes DIR/results[-PART]-sSEEDS.json, so one process per seed can share --out once its corpus and "
        "demonstrations exist; then --combine",
    )
    parser.add_argument(
        "--part",
        choices=("all", "prep", "main", "sweeps"),
        default="all",
        help="prep: only the corpus, held-out transcripts and demonstrations (what every other process "
        "shares), then exit; main or sweeps: only the main comparison or only the sweeps (with the starts "
        "they need), e.g. as processes side by side on one --out; a part writes DIR/results-PART.json, "
        "then --combine DIR/results-main.json DIR/results-sweeps.json --out DIR",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="merge DIR/results.json of runs of one study (e.g. one per seed) into --out, then render",
    )
    args = parser.parse_args()
    if args.render:
        render_all(json.loads((args.render / "results.json").read_text()), args.render)
        return
    if args.combine:
        if args.out is None:
            parser.error("--combine needs --out (the folder for the merged results.json)")
        args.out.mkdir(parents=True, exist_ok=True)
        files = [path if path.suffix == ".json" else path / "results.json" for path in args.combine]
        merged = combine([json.loads(path.read_text()) for path in files], files)
        (args.out / "results.json").write_text(json.dumps(merged, indent=2))
        print(render_all(merged, args.out))
        return
    study = QUICK if args.quick else POLICY_SIZES.get(args.policy, FULL)
    if args.policy:
        study = replace(study, policy=args.policy)
    run_seeds = study.seeds
    if args.seeds:
        run_seeds = tuple(int(seed) for seed in args.seeds.split(","))
        unknown = sorted(set(run_seeds) - set(study.seeds))
        if unknown:
            parser.error(f"--seeds {args.seeds}: seed(s) {unknown} are not in the study's design {study.seeds}")
    default_out = ("repro-quick" if args.quick else "repro") + (f"-{args.policy}" if args.policy else "")
    out = args.out or REPO / "runs" / default_out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"study {'quick' if args.quick else 'full'}: {asdict(study)} -> {out}")

    train_dir, val_dir = generate_corpus(study, out)
    longest = check_demonstration_budget(study, train_dir, val_dir)
    log(f"longest demonstration reply: {longest} tokens (per-turn budget {study.max_new_tokens})")
    dirs = {"train": train_dir, "val": val_dir, "transcripts": held_out_transcripts(study, val_dir, out)}
    demos = demonstrations(study, train_dir, out)

    explorer_transcripts = demonstrations(study, train_dir, out, "explorer") if study.control else None
    if args.part == "prep":
        log(f"prep done in {(time.monotonic() - started) / 60:.1f} min: now --seeds N --part main per seed")
        return

    results: dict = {
        "study": asdict(study),
        "seeds_run": list(run_seeds),
        "longest_demonstration_tokens": longest,
        "policies": {},
    }
    starts: dict[str, Path] = {}
    # One file per (part, seeds) so processes of one study can share --out (and its corpus and
    # demonstrations): e.g. --seeds 1, --seeds 2 and --part sweeps side by side, then --combine.
    seeds_suffix = f"-s{'-'.join(map(str, run_seeds))}" if args.seeds else ""
    suffix = ("" if args.part == "all" else f"-{args.part}") + seeds_suffix
    results_file = out / f"results{suffix}.json"
    # Time counts the study's processes, summed over interruptions and resumes (a resume days later
    # adds its own run time, not the gap).
    earlier_seconds = json.loads(results_file.read_text()).get("wall_seconds", 0.0) if results_file.is_file() else 0.0

    def save(complete: bool) -> None:
        """results.json after every policy, so an interrupted study still has what it measured."""
        results["complete"] = complete
        results["wall_seconds"] = earlier_seconds + time.monotonic() - started
        results["machine"] = machine()
        results["torch_threads"] = torch_threads()
        results_file.write_text(json.dumps(results, indent=2))

    def ensure_starts(seed: int) -> None:
        """The seed's SFT start and control start, trained and evaluated once."""
        sft_name, control_name = f"sft-s{seed}", f"sft-env-s{seed}"
        if sft_name in starts:
            return
        starts[sft_name] = sft_start(study, train_dir, out / sft_name, seed=seed, demos=demos)
        named = [(sft_name, "SFT start")]
        if study.control:
            starts[control_name] = world_model_start(
                study,
                starts[sft_name],
                train_dir,
                out / control_name,
                seed=seed,
                demos=demos,
                transcripts=explorer_transcripts,
            )
            named.append((control_name, "SFT(+env CE) start"))
        for name, group in named:
            results["policies"][name] = {
                "group": group,
                "seed": seed,
                "start": None,
                "sft_curve": sft_curve(out / name),
            } | evaluate_policy(name, starts[name], study, dirs, out, seed)
            save(complete=False)

    # Seed by seed (its starts, then its runs), in run_plan's order: a stopped study has whole seeds.
    planned = [run for run in run_plan(study) if run["seed"] in run_seeds and args.part in ("all", run["part"])]
    for run in planned:
        ensure_starts(run["seed"])
        run_dir = out / run["name"]
        final = train_mode(
            run["mode"],
            run["seed"],
            starts[run["start"]],
            train_dir,
            run_dir,
            study,
            env_coef=run.get("lambda"),
            lr=run.get("lr"),
        )
        results["policies"][run["name"]] = (
            {k: run[k] for k in ("group", "seed", "start", "mode")}
            | {"lambda": run.get("lambda"), "lr": run.get("lr", study.rl_lr), "curve": curve(run_dir)}
            | evaluate_policy(run["name"], final, study, dirs, out, run["seed"])
        )
        save(complete=False)
    save(complete=True)
    markdown = render_all(results, out)
    print(markdown)

    from taskforge.report import load_run, write_report

    runs = [out / name for name in results["policies"]]
    _, html_path = write_report([load_run(p) for p in runs], out / "report")
    log(f"done in {results['wall_seconds'] / 60:.1f} min; report: {html_path}")


def combine(parts: list[dict], sources: list[Path]) -> dict:
    """One results.json from runs of one study (same design, same corpus), e.g. a process per seed."""
    first = parts[0]
    # The sweeps' values name extra runs and change no other run: a sweeps part that ran with a value
    # more than the main parts is the same study; the merged one lists every value run.
    sweep_fields = ("lambda_sweep", "lr_sweep")
    for part, source in zip(parts[1:], sources[1:], strict=True):
        differs = sorted(
            k for k in first["study"] if k not in sweep_fields and part["study"].get(k) != first["study"][k]
        )
        if differs:
            raise SystemExit(f"{source} is another study than {sources[0]} (differs in {differs})")
    study = first["study"] | {
        field: sorted({value for part in parts for value in part["study"].get(field, ())}) for field in sweep_fields
    }
    policies: dict = {}
    held_out: dict[str, set] = {}
    for part, source in zip(parts, sources, strict=True):
        for name, policy in part["policies"].items():
            # a start both parts evaluated (the sweeps' SFT start) is the same result, kept once
            if name in policies and policies[name] != policy:
                raise SystemExit(f"{source}: policy {name} is in two of the combined runs, with different results")
            policies[name] = policy
            held_out[f"{source}:{name}"] = set(policy["heldout"])
    if len({frozenset(tasks) for tasks in held_out.values()}) > 1:
        raise SystemExit("the combined runs were evaluated on different held-out tasks (another corpus?)")
    return {
        "study": study,
        "seeds_run": sorted({seed for part in parts for seed in part.get("seeds_run", part["study"]["seeds"])}),
        "longest_demonstration_tokens": first["longest_demonstration_tokens"],
        "policies": policies,
        "complete": all(part.get("complete") for part in parts),
        # the parts ran side by side: the longest is the study's wall time, the sum its compute
        "wall_seconds": max(part.get("wall_seconds", 0.0) for part in parts),
        "process_seconds": sum(part.get("wall_seconds", 0.0) for part in parts),
        "machine": first.get("machine"),
        "torch_threads": first.get("torch_threads"),
    }


# ---------------------------------------------------------------------------------------------
# Statistics: hierarchical bootstrap over seeds and tasks


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def hierarchical_ci(per_seed: list[dict[str, float]], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of the mean over tasks, and its 95% interval from resampling seeds, then tasks
    within each resampled seed. per_seed: one {task: value} per seed."""
    per_seed = [list(values.values()) for values in per_seed if values]
    if not per_seed:
        return (math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    estimates = []
    for _ in range(reps):
        seeds = [rng.choice(per_seed) for _ in per_seed]
        estimates.append(_mean(_mean(rng.choice(tasks) for _ in tasks) for tasks in seeds))
    estimates.sort()
    point = _mean(_mean(tasks) for tasks in per_seed)
    return (point, estimates[int(0.025 * reps)], estimates[int(0.975 * reps) - 1])


def paired(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per seed, per task a - b over the tasks both have (a[i] and b[i] are the same seed)."""
    return [{t: x[t] - y[t] for t in x if t in y} for x, y in zip(a, b, strict=True)]


def summarise(results: dict) -> tuple[list[dict], list[dict]]:
    """(table rows per group, paired effects) computed from results.json's per-task numbers."""
    policies = results["policies"]
    groups: dict[str, list[str]] = {}
    for name, policy in policies.items():
        groups.setdefault(policy["group"], []).append(name)
    rows = []
    for group, names in groups.items():
        members = [policies[n] for n in names]
        held = hierarchical_ci([m["heldout"] for m in members])
        train = hierarchical_ci([m["train"] for m in members])
        ces = [m["env_ce"] for m in members]
        curves = [m.get("curve") or [] for m in members]
        steps = [row for c in curves for row in c]
        rows.append(
            {
                "group": group,
                "seeds": len(members),
                "heldout": held,
                "train": train,
                "env_ce": _mean(ces),
                "env_ce_range": [min(ces), max(ces)],
                "timeouts": _mean(m["heldout_eval"]["timeout_rate"] or 0 for m in members),
                "turns": _mean(m["heldout_eval"]["mean_turns"] or 0 for m in members),
                "output_tokens": _mean(m["heldout_eval"]["mean_output_tokens"] or 0 for m in members),
                "errored": _mean(m["heldout_eval"]["error_rate"] or 0 for m in members),
                "signal_share": _mean(r["signal_group_share"] for r in steps) if steps else None,
                "steps_without_obs": (
                    f"{sum(1 for r in steps if r['env_ce'] is None)} of {len(steps)}" if steps else None
                ),
            }
        )
    effects = []

    def by_seed(group: str) -> dict[int, dict]:
        return {policies[n]["seed"]: policies[n] for n in groups.get(group, [])}

    def effect(label: str, group_a: str, group_b: str) -> None:
        a, b = by_seed(group_a), by_seed(group_b)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return
        row = {"effect": label, "seeds": len(seeds)}
        for split in ("heldout", "train"):
            row[split] = hierarchical_ci(paired([a[s][split] for s in seeds], [b[s][split] for s in seeds]))
        ce = [a[s]["env_ce"] - b[s]["env_ce"] for s in seeds]
        row["env_ce"] = (_mean(ce), min(ce), max(ce))
        effects.append(row)

    rl_groups = [g for g in groups if g.startswith("SFT + ")]  # sweeps included: paired at their seed
    for group in rl_groups:
        effect(f"{group} vs SFT start", group, "SFT start")
    for group in rl_groups:
        if group != "SFT + GRPO":
            effect(f"{group} vs SFT + GRPO", group, "SFT + GRPO")
    effect("control: SFT(+env CE) start vs SFT start", "SFT(+env CE) start", "SFT start")
    control_echo, control_grpo = "SFT(+env CE) + ECHO l=0.05", "SFT(+env CE) + GRPO"
    effect(f"control: {control_echo} vs {control_grpo}", control_echo, control_grpo)
    return rows, effects


# ---------------------------------------------------------------------------------------------
# Rendering: everything below reads results.json only


def _pct(ci) -> str:
    point, lo, hi = ci
    if math.isnan(point):
        return "-"
    return f"{100 * point:.1f}% ({100 * lo:.1f} to {100 * hi:.1f})"


def _pp(ci) -> str:
    point, lo, hi = ci
    if math.isnan(point):
        return "-"
    return f"{100 * point:+.1f} pp ({100 * lo:+.1f} to {100 * hi:+.1f})"


def render_all(results: dict, out: Path) -> str:
    rows, effects = summarise(results)
    results_md = render_markdown(results, rows, effects)
    (out / "results.md").write_text(results_md)
    plot(results, rows, out)
    return results_md


def render_markdown(results: dict, rows: list[dict], effects: list[dict]) -> str:
    study = results["study"]
    # the seeds with results, not the ones asked for: a stopped study says how far it got
    seeds = sorted({policy["seed"] for policy in results["policies"].values()})
    seeds_text = f"{len(seeds)} seed(s)" + (
        f" of the {len(study['seeds'])} in the design" if len(seeds) < len(study["seeds"]) else ""
    )
    run_time = f"run time {results.get('wall_seconds', 0) / 60:.1f} min (summed over resumes)"
    if "process_seconds" in results:
        run_time = (
            f"run time {results['wall_seconds'] / 60:.1f} min wall, processes side by side "
            f"({results['process_seconds'] / 60:.1f} min summed over them and their resumes)"
        )
    lines = [
        f"{study['n_train']} training and {study['n_val']} held-out tasks ({', '.join(study['families'])}; "
        f"{', '.join(study['difficulties'])}); {seeds_text}; RL {study['rl_steps']} steps x "
        f"{study['tasks_per_step']} tasks x {study['group_size']} rollouts, lr {study['rl_lr']:g}; eval "
        f"{study['eval_attempts']} attempts per task on all held-out tasks and {study['eval_train_tasks']} "
        f"training tasks; {run_time} on {results.get('machine', '?')}.",
        "",
        "Throughput (tokens/s; policy {policy}, {threads} torch thread(s)): SFT {sft_tokens_per_s}; RL sampling "
        "{rl_sampling_action_tokens_per_s} action tokens/s of rollout time (Docker included); RL update "
        "{rl_training_tokens_per_s}.".format(
            policy=study.get("policy", "small"),
            threads=results.get("torch_threads", "?"),
            **{k: "-" if v is None else v for k, v in throughput(results).items()},
        ),
        "",
        "| policy | seeds | held-out pass@1 (95% CI) | training-task pass@1 (95% CI) | held-out env CE (seed range) "
        "| groups with signal | steps without obs tokens | output tokens/episode | timeouts | errored |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        signal = f"{100 * r['signal_share']:.0f}%" if r["signal_share"] is not None else "-"
        lines.append(
            f"| {r['group']} | {r['seeds']} | {_pct(r['heldout'])} | {_pct(r['train'])} | {r['env_ce']:.3f} "
            f"({r['env_ce_range'][0]:.3f}-{r['env_ce_range'][1]:.3f}) | {signal} | {r['steps_without_obs'] or '-'} "
            f"| {r['output_tokens']:.0f} | {100 * r['timeouts']:.1f}% | {100 * r['errored']:.1f}% |"
        )
    lines += [
        "",
        "Paired effects (same seed, same tasks; 95% hierarchical-bootstrap interval):",
        "",
        "| effect | seeds | held-out pass@1 | training-task pass@1 | held-out env CE (seed range) |",
        "|---|---|---|---|---|",
    ]
    for e in effects:
        ce, lo, hi = e["env_ce"]
        lines.append(
            f"| {e['effect']} | {e['seeds']} | {_pp(e['heldout'])} | {_pp(e['train'])} "
            f"| {ce:+.3f} ({lo:+.3f} to {hi:+.3f}) |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["group"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 2), sharey=True)
    for ax, split, title in ((axes[0], "heldout", "held-out pass@1"), (axes[1], "train", "training-task pass@1")):
        points = [r[split][0] for r in rows]
        below = [max(0.0, r[split][0] - r[split][1]) for r in rows]
        above = [max(0.0, r[split][2] - r[split][0]) for r in rows]
        errors = [below, above]
        ax.barh(range(len(rows)), points, xerr=errors, color="#4c72b0", capsize=3)
        ax.set_xlim(0, 1)
        ax.set_title(f"{title} (95% CI over seeds and tasks)")
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "pass_at_1.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 2))
    for i, group in enumerate(labels):
        values = [p["env_ce"] for p in results["policies"].values() if p["group"] == group]
        ax.scatter(values, [i] * len(values), color="#dd8452", zorder=3)
        ax.plot([min(values), max(values)], [i, i], color="#dd8452")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("held-out env CE, nats/token (one point per seed)")
    fig.tight_layout()
    fig.savefig(out / "env_ce.png", dpi=110)
    plt.close(fig)

    curve_keys = (
        ("reward_mean", "training reward", (0, 1)),
        ("signal_group_share", "share of groups with signal", (0, 1)),
        ("output_tokens_per_episode", "output tokens per episode", None),
        ("env_ce", "env CE of the training batch", None),
    )
    fig, axes = plt.subplots(1, len(curve_keys), figsize=(18, 3.6))
    for ax, (key, title, limits) in zip(axes, curve_keys, strict=True):
        for group in [g for g in labels if not g.endswith("start")]:
            curves = [p["curve"] for p in results["policies"].values() if p["group"] == group and p.get("curve")]
            steps = sorted({row["step"] for c in curves for row in c})
            means = []
            for step in steps:
                values = [row[key] for c in curves for row in c if row["step"] == step and row[key] is not None]
                means.append(_mean(values) if values else math.nan)
            ax.plot(steps, means, marker="o", label=group)
        ax.set_title(title)
        ax.set_xlabel("RL step (mean over seeds)")
        if limits:
            ax.set_ylim(*limits)
        else:
            ax.set_ylim(bottom=0)
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def torch_threads() -> int:
    from trainer.threads import requested_threads

    return requested_threads()


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
