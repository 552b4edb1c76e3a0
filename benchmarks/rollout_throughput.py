"""Rollout episodes/min with batched in-process sampling vs one-at-a-time, in one run.

    .venv/bin/python benchmarks/rollout_throughput.py                      # tiny policy, 8 episodes, 3 rounds
    .venv/bin/python benchmarks/rollout_throughput.py --policy small --rounds 5 --out runs/bench/rollout.json

The defaults are the RL trainer's rollout settings (trainer.train.TrainConfig: the short system
prompt, 2,000 output characters, 10 s commands, 4 turns) with 128 new tokens per turn. Each round
plays the same `--episodes` tasks of `--tasks` (the first N in name order), all at once (one thread
and one real Docker sandbox per episode, verifier included: `taskforge.trial.run_episode_trial`,
what `trainer.train.collect_rollouts` runs), once per sampling mode. With `--per-round M` (M >
`--episodes`) a round plays the first M tasks on `--episodes` threads, a new episode starting when
one ends, as a training step plays its group x tasks rollouts over `concurrency` threads:

- one-at-a-time: `LocalModelPolicy(max_batch=1)`, i.e. `sample_tokens` under the global lock, each
  reply generated alone while the other episodes wait (the sampler before batching);
- batched: `LocalModelPolicy(max_batch=8)`, every episode's sampler submits to the model's shared
  `BatchWorker`, which decodes all waiting replies in one forward pass per token.

Episode k is seeded the same in both modes and the turn cap is fixed (`--max-turns`, the task's own
cap ignored), so both modes play the same episodes: the batched sampler draws the same ids as the
unbatched one given a seed (tests/test_batched_sampling.py). Modes alternate within a round and
their order flips each round, so a slow phase of the shared machine hits both; the ratio is per
round (batched / one-at-a-time episodes/min), reported as min and median. Torch threads are set
explicitly (`--threads`, default 1) and the load average is printed before and after.

After each round the same sampling runs without sandboxes (`--episodes` threads, `--max-turns`
replies of `--max-new-tokens` each, prompts as long as the round's mean prompt): the sampler's
own batched / one-at-a-time ratio, apart from the Docker time (sandbox start, commands, verifier)
that both modes pay alike and that caps the episodes/min ratio. Each round also prints its slowest
sandbox start and slowest verifier (from the trials' result.json timings): the part of the round
in which no episode samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {"one-at-a-time": 1, "batched": 8}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def phase_seconds(out_dir: Path) -> dict[str, float]:
    """The round's sandbox phases from each trial's Harbor result.json: per phase, the mean over
    episodes and the longest (the round waits for its slowest episode). Shows what part of a
    round is Docker time that both sampling modes pay."""
    from harbor.models.trial.result import TrialResult

    spans: dict[str, list[float]] = {"environment_setup": [], "verifier": []}
    for result_file in sorted(out_dir.rglob("result.json")):
        result = TrialResult.model_validate_json(result_file.read_text())
        for phase, seconds in spans.items():
            timing = getattr(result, phase)
            if timing is not None and timing.started_at and timing.finished_at:
                seconds.append((timing.finished_at - timing.started_at).total_seconds())
    shown = {}
    for phase, seconds in spans.items():
        shown[f"{phase}_mean"] = statistics.mean(seconds) if seconds else 0.0
        shown[f"{phase}_max"] = max(seconds, default=0.0)
    return shown


def play_round(model, tokenizer, tasks, *, max_batch: int, args, out_dir: Path) -> dict:
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.runner import run_concurrently
    from taskforge.trial import run_episode_trial
    from trainer.sampler import LocalModelPolicy

    config = EpisodeConfig(
        max_turns=args.max_turns,
        task_max_turns=False,
        command_timeout_sec=args.command_timeout,
        max_output_chars=args.max_output_chars,
        system_prompt=args.system_prompt_text,
    )
    policies: list = []

    def play(job):
        index, task = job
        policy = LocalModelPolicy(
            model,
            tokenizer,
            temperature=1.0,
            max_new_tokens=args.max_new_tokens,
            task_name=task.name,
            seed=1000 + index,
            max_batch=max_batch,
        )
        policies.append(policy)
        record, episode = run_episode_trial(task, policy, out_dir / f"{index:02d}-{task.name}", config)
        return episode

    # A round plays `per_round` episodes on `episodes` threads: with more episodes than threads, a
    # finished episode's slot goes to the next one at once (as the trainer's step does with its
    # group x tasks rollouts over `concurrency` threads), so one episode's sandbox start and
    # verifier overlap the others' sampling instead of ending the round.
    per_round = args.per_round or args.episodes
    jobs = list(enumerate(tasks[:per_round]))
    started = time.perf_counter()
    episodes = run_concurrently(jobs, play, jobs=args.episodes, description=f"max_batch={max_batch}")
    seconds = time.perf_counter() - started
    worker = policies[0].sampler.worker if policies else None
    return phase_seconds(out_dir) | {
        "seconds": seconds,
        "episodes_per_min": per_round / seconds * 60,
        "turns": sum(len(e.turns) for e in episodes if e is not None),
        "output_tokens": sum(t.usage.output_tokens for e in episodes if e is not None for t in e.turns),
        "stop_reasons": sorted((e.stop_reason or "none") for e in episodes if e is not None),
        "largest_batch": worker.max_rows_seen if worker else 1,
        # Per episode, seconds waiting for replies and seconds in commands (means over episodes).
        "policy_seconds_mean": statistics.mean(
            [sum(t.policy_seconds or 0.0 for t in e.turns) for e in episodes if e is not None] or [0.0]
        ),
        "exec_seconds_mean": statistics.mean(
            [sum(t.exec_seconds or 0.0 for t in e.turns) for e in episodes if e is not None] or [0.0]
        ),
        "mean_prompt_tokens": statistics.mean(
            [t.usage.input_tokens for e in episodes if e is not None for t in e.turns] or [1]
        ),
        # The first prompt, and what each later prompt adds beyond the previous prompt and reply
        # (the observation and template): what sampling_only replays.
        "first_prompt_tokens": statistics.mean(
            [e.turns[0].usage.input_tokens for e in episodes if e and e.turns] or [1]
        ),
        "observation_tokens": statistics.mean(
            [
                later.usage.input_tokens - earlier.usage.input_tokens - earlier.usage.output_tokens
                for e in episodes
                if e is not None
                for earlier, later in zip(e.turns, e.turns[1:], strict=False)
            ]
            or [0]
        ),
    }


def sampling_only(
    model, tokenizer, *, max_batch: int, args, prompt_tokens: int, observation_tokens: int, prefix_cache: bool = True
) -> dict:
    """The rounds' sampling without sandboxes: `--episodes` threads each sample `--max-turns` replies
    of `--max-new-tokens` (no stop id), the first from a `prompt_tokens`-long prompt, each later one
    from the previous prompt + reply + `observation_tokens` new ids (as an episode's prompts grow).
    Separates the sampler's own speed-up from the Docker time both modes share."""
    import threading

    import torch

    from trainer.sampler import InProcessSampler

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_tokens,), generator=generator).tolist()

    observation = torch.randint(0, model.config.vocab_size, (observation_tokens,), generator=generator).tolist()

    def play(index: int) -> None:
        sampler = InProcessSampler(
            model, tokenizer, temperature=1.0, seed=index, max_batch=max_batch, prefix_cache=prefix_cache
        )
        sampler.stop_ids = []  # every reply runs to its budget, so both modes sample the same count
        conversation = list(prompt)
        for _ in range(args.max_turns):
            reply, _ = sampler(conversation, args.max_new_tokens)
            conversation += reply + observation

    threads = [threading.Thread(target=play, args=(i,)) for i in range(args.episodes)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_s": args.episodes * args.max_turns * args.max_new_tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="tiny", help="tiny, small, or a checkpoint directory")
    parser.add_argument("--tasks", default="tasks/sample")
    parser.add_argument("--episodes", type=int, default=8, help="episodes running at once")
    parser.add_argument(
        "--per-round",
        type=int,
        default=None,
        help="episodes per round (default: --episodes, all starting together); more than --episodes keeps "
        "--episodes running at once, a new one starting when one ends, as the trainer's rollouts do",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--command-timeout", type=float, default=10.0)
    parser.add_argument("--max-output-chars", type=int, default=2000)
    parser.add_argument(
        "--system-prompt",
        choices=["trainer", "full"],
        default="trainer",
        help="trainer: the RL trainer's short prompt (TINY_SYSTEM_PROMPT); full: the agent loop's own",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly, not inherited)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16: the policy's dtype (load_policy)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    import torch

    from taskforge.tasks import discover_task_dirs, load_task
    from taskforge.trial import image_for
    from trainer.model import load_policy

    if args.system_prompt == "trainer":
        from trainer.train import TINY_SYSTEM_PROMPT

        args.system_prompt_text = TINY_SYSTEM_PROMPT
    else:
        args.system_prompt_text = None
    model, tokenizer = load_policy(args.policy, threads=args.threads, dtype=args.dtype)
    task_dirs = sorted(discover_task_dirs([Path(args.tasks)]))[: max(args.episodes, args.per_round or 0)]
    tasks = [load_task(d) for d in task_dirs]
    for task in tasks:  # build images up front: not part of any measurement
        image_for(task)
    print(
        f"policy {args.policy} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {model.dtype}), "
        f"torch threads {torch.get_num_threads()}, {args.episodes} concurrent episodes of {args.tasks} "
        f"({args.per_round or args.episodes} per round), "
        f"max_turns {args.max_turns}, max_new_tokens {args.max_new_tokens}, {args.system_prompt} system prompt"
    )
    print(f"before: {load_average()}")

    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    ratios: list[float] = []
    sampling: dict[str, list[dict]] = {mode: [] for mode in MODES}
    sampling_ratios: list[float] = []
    prefix_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rollout-throughput-") as scratch:
        for round_index in range(args.rounds):
            order = list(MODES) if round_index % 2 == 0 else list(reversed(MODES))
            for mode in order:
                out_dir = Path(scratch) / f"r{round_index}-{mode}"
                result = play_round(model, tokenizer, tasks, max_batch=MODES[mode], args=args, out_dir=out_dir)
                result["load_1min"] = os.getloadavg()[0]
                results[mode].append(result)
                print(
                    f"round {round_index + 1} {mode:>13}: {result['episodes_per_min']:6.1f} episodes/min "
                    f"({result['seconds']:.1f} s, {result['turns']} turns, {result['output_tokens']} tokens, "
                    f"largest batch {result['largest_batch']}, load {result['load_1min']:.2f}; "
                    f"sandbox start {result['environment_setup_mean']:.1f} s mean / "
                    f"{result['environment_setup_max']:.1f} s max, verifier {result['verifier_mean']:.1f} / "
                    f"{result['verifier_max']:.1f} s; per episode {result['policy_seconds_mean']:.1f} s "
                    f"sampling, {result['exec_seconds_mean']:.1f} s in commands)"
                )
            ratios.append(results["batched"][-1]["episodes_per_min"] / results["one-at-a-time"][-1]["episodes_per_min"])
            prompt_tokens = max(1, round(statistics.mean(r["first_prompt_tokens"] for r in results["batched"])))
            observation_tokens = max(1, round(statistics.mean(r["observation_tokens"] for r in results["batched"])))
            for mode in order:
                result = sampling_only(
                    model,
                    tokenizer,
                    max_batch=MODES[mode],
                    args=args,
                    prompt_tokens=prompt_tokens,
                    observation_tokens=observation_tokens,
                )
                sampling[mode].append(result)
                print(
                    f"round {round_index + 1} {mode:>13}: sampling only {result['tokens_per_s']:6.0f} tokens/s "
                    f"({result['seconds']:.1f} s, {prompt_tokens}-token first prompts, "
                    f"{observation_tokens} tokens added per turn)"
                )
            sampling_ratios.append(
                sampling["batched"][-1]["tokens_per_s"] / sampling["one-at-a-time"][-1]["tokens_per_s"]
            )
            # The same batched sampling with every prompt prefilled in full: what the kept cache saves.
            uncached = sampling_only(
                model,
                tokenizer,
                max_batch=MODES["batched"],
                args=args,
                prompt_tokens=prompt_tokens,
                observation_tokens=observation_tokens,
                prefix_cache=False,
            )
            sampling["batched, no prefix cache"] = sampling.get("batched, no prefix cache", []) + [uncached]
            prefix_ratios.append(sampling["batched"][-1]["tokens_per_s"] / uncached["tokens_per_s"])
            print(
                f"round {round_index + 1} batched, every prompt prefilled in full: "
                f"{uncached['tokens_per_s']:6.0f} tokens/s ({uncached['seconds']:.1f} s)"
            )
    print(f"after: {load_average()}")
    summary = {}
    for mode in MODES:
        rates = [r["episodes_per_min"] for r in results[mode]]
        starts = statistics.median(r["environment_setup_max"] for r in results[mode])
        verifiers = statistics.median(r["verifier_max"] for r in results[mode])
        summary[mode] = {
            "min": min(rates),
            "median": statistics.median(rates),
            "round_seconds_median": statistics.median(r["seconds"] for r in results[mode]),
            "sandbox_start_max_median": starts,
            "verifier_max_median": verifiers,
        }
        print(
            f"{mode:>13}: episodes/min min {min(rates):.1f}, median {statistics.median(rates):.1f}; "
            f"per round (median) {summary[mode]['round_seconds_median']:.1f} s, of which the slowest "
            f"sandbox start {starts:.1f} s and the slowest verifier {verifiers:.1f} s"
        )
    summary["ratio"] = {"min": min(ratios), "median": statistics.median(ratios)}
    print(
        f"batched / one-at-a-time at {args.episodes} concurrent episodes: "
        f"min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x (target >= 3x)"
    )
    summary["sampling_only_ratio"] = {"min": min(sampling_ratios), "median": statistics.median(sampling_ratios)}
    print(
        f"sampling only (no sandboxes), batched / one-at-a-time tokens/s: "
        f"min {min(sampling_ratios):.2f}x, median {statistics.median(sampling_ratios):.2f}x"
    )
    summary["prefix_cache_ratio"] = {"min": min(prefix_ratios), "median": statistics.median(prefix_ratios)}
    print(
        f"sampling only, batched, kept cache / every prompt prefilled in full: "
        f"min {min(prefix_ratios):.2f}x, median {statistics.median(prefix_ratios):.2f}x"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"out": str(args.out)},
                    "rounds": results,
                    "sampling_only": sampling,
                    "ratios": ratios,
                    "sampling_only_ratios": sampling_ratios,
                    "prefix_cache_ratios": prefix_ratios,
                    "summary": summary,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
