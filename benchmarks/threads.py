"""Generation and training tokens/s of a policy at 1 and 2 torch threads, side by side.

    .venv/bin/python benchmarks/threads.py                          # tiny model, about 1 minute
    .venv/bin/python benchmarks/threads.py --policy smollm2-135m    # after `taskforge model get smollm2-135m`
    .venv/bin/python benchmarks/threads.py --threads 1 2 --passive  # also 2 threads with OMP_WAIT_POLICY=passive

Each measurement runs in its own subprocess, which sets its thread count through
`trainer.threads.configure_threads` (via `load_policy(threads=N)`) before any work, so no setting
leaks from one measurement into the next. The thread counts take turns over `--rounds` rounds
(1, 2, 1, 2, ...) and each figure is the median over rounds, so a slow phase of a shared machine
hits every setting; ratios are against 1 thread measured in the same run. The load average is
printed before and after: with other processes on the cores, more threads can be slower.

Generation is `trainer.sampler.sample_tokens` (the sampler the trainer and `taskforge serve` use,
KV cache, batch 1) with no stop token, so every run samples exactly `--new-tokens` tokens.
Training is one forward + backward of the chunked per-token log-probs (`trainer.logprobs.sequence_logprobs`,
what `trainer.train.update` runs) on a batch of `--batch` x `--length` tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Per-policy sizes that keep one measurement to a few seconds on 2 CPU cores.
DEFAULT_SIZES = {
    "tiny": {"new_tokens": 256, "prompt_tokens": 128, "batch": 4, "length": 1024, "train_steps": 4},
    "smollm2-135m": {"new_tokens": 48, "prompt_tokens": 128, "batch": 1, "length": 256, "train_steps": 2},
}


def run_worker(args: argparse.Namespace) -> None:
    import torch

    from trainer.logprobs import sequence_logprobs
    from trainer.model import load_policy
    from trainer.sampler import sample_tokens

    model, _ = load_policy(args.policy, threads=args.threads[0])
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (args.prompt_tokens,), generator=generator).tolist()

    sample_tokens(model, prompt, 8, temperature=1.0, stop_ids=[], generator=generator)  # warm-up
    started = time.perf_counter()
    ids, _, _ = sample_tokens(model, prompt, args.new_tokens, temperature=1.0, stop_ids=[], generator=generator)
    generation_seconds = time.perf_counter() - started

    model.train()
    batch = torch.randint(0, vocab, (args.batch, args.length), generator=generator)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        (-sequence_logprobs(model, batch).mean()).backward()

    train_step()  # warm-up
    started = time.perf_counter()
    for _ in range(args.train_steps):
        train_step()
    training_seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "threads": threads,
                "generation_tok_s": len(ids) / generation_seconds,
                "training_tok_s": args.batch * args.length * args.train_steps / training_seconds,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def measure(args: argparse.Namespace, threads: int, passive: bool) -> dict:
    command = [sys.executable, __file__, "--worker", "--policy", args.policy, "--threads", str(threads)]
    for option in ("new_tokens", "prompt_tokens", "batch", "length", "train_steps"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"} if passive else dict(os.environ)
    env.pop("TASKFORGE_TORCH_THREADS", None)  # the worker's --threads is the setting under test
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"worker with {threads} threads failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def ensure_policy(policy: str) -> None:
    """Build or check the policy once in this process, so workers only load it."""
    from trainer.model import TINY_NAMES, ensure_tiny_policy
    from trainer.pretrained import PRETRAINED_MODELS, fetched_model_dir

    if policy in TINY_NAMES:
        ensure_tiny_policy()
    elif policy in PRETRAINED_MODELS and fetched_model_dir(policy) is None:
        raise SystemExit(f"{policy} is not fetched yet: run `taskforge model get {policy}` first")


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    ensure_policy(args.policy)
    settings = [(threads, False) for threads in args.threads]
    if args.passive:
        settings += [(threads, True) for threads in args.threads if threads > 1]
    load_before = os.getloadavg()
    samples: dict[tuple[int, bool], list[dict]] = {setting: [] for setting in settings}
    for _ in range(args.rounds):
        for setting in settings:
            samples[setting].append(measure(args, *setting))
    load_after = os.getloadavg()

    first = samples[settings[0]][0]
    print(
        f"policy {args.policy} ({first['parameters'] / 1e6:.1f} M parameters), median of {args.rounds} rounds, "
        f"each setting in its own process"
    )
    print(
        f"  generation: batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens (KV cache); "
        f"training: forward + backward of {args.batch} x {args.length} tokens, {args.train_steps} steps"
    )
    baseline = {
        key: statistics.median(s[key] for s in samples[(1, False)]) if (1, False) in samples else None
        for key in ("generation_tok_s", "training_tok_s")
    }
    print(f"  {'threads':<28} {'generation tok/s':>16} {'vs 1':>6} {'training tok/s':>15} {'vs 1':>6}")
    for threads, passive in settings:
        label = f"{threads}" + (" (OMP_WAIT_POLICY=passive)" if passive else "")
        cells = []
        for key in ("generation_tok_s", "training_tok_s"):
            value = statistics.median(s[key] for s in samples[(threads, passive)])
            ratio = f"{value / baseline[key]:.2f}" if baseline[key] else "-"
            cells.append((value, ratio))
        print(f"  {label:<28} {cells[0][0]:>16.1f} {cells[0][1]:>6} {cells[1][0]:>15.1f} {cells[1][1]:>6}")
    print(
        f"  load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} cores"
        f"{' (busy machine: more threads can be slower)' if max(load_before[0], load_after[0]) > 1 else ''}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="tiny", help="tiny, smollm2-135m, or a checkpoint directory")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare")
    parser.add_argument("--passive", action="store_true", help="also run >1 threads with OMP_WAIT_POLICY=passive")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the settings (medians are reported)")
    for option in ("new_tokens", "prompt_tokens", "batch", "length", "train_steps"):
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = DEFAULT_SIZES.get(args.policy, DEFAULT_SIZES["smollm2-135m"])
    for option, value in sizes.items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    return args


if __name__ == "__main__":
    main()
