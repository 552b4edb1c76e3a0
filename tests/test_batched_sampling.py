"""Batched in-process sampling (trainer.sampler.BatchWorker): concurrent requests share decode
steps, yet each row's output is the one the one-at-a-time sampler (sample_tokens) gives; a
cancelled request leaves the batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from trainer.sampler import (
    BatchWorker,
    InProcessSampler,
    LocalModelPolicy,
    SampleCancelledError,
    SampleRequest,
    sample_tokens,
)

STOP = [3]


@pytest.fixture(scope="module")
def model():
    config = Qwen3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).eval()


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    rng = torch.Generator().manual_seed(seed)
    lengths = [3, 17, 1, 40, 9, 25, 6, 12][:n]
    return [torch.randint(4, 96, (length,), generator=rng).tolist() for length in lengths]


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Waits for a worker state (not a speed assertion: the limit only keeps a hang from hanging)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.01)


def request(prompt, budget, *, temperature=0.0, seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return SampleRequest(prompt, budget, temperature=temperature, stop_ids=STOP, generator=generator)


def test_greedy_batched_outputs_are_token_identical_to_one_at_a_time(model):
    batch = prompts(8)
    expected = [sample_tokens(model, p, 30, temperature=0.0, stop_ids=STOP) for p in batch]
    worker = BatchWorker(model, max_batch=8, gather_window_sec=0.5)
    requests = [worker.submit(request(p, 30)) for p in batch]
    results = [r.result(timeout=120) for r in requests]
    assert worker.max_rows_seen == 8  # one batch of eight rows, not eight one-row batches
    for (ids, logprobs, stopped), (want_ids, want_logprobs, want_stopped) in zip(results, expected, strict=True):
        assert ids == want_ids
        assert stopped == want_stopped
        assert logprobs == pytest.approx(want_logprobs, abs=1e-4)


def test_requests_joining_a_running_batch_and_leaving_it_early_keep_their_outputs(model):
    """Staggered arrivals (merged into the running batch's KV cache with different left padding),
    different budgets (rows leaving mid-batch, the cache trimmed): still sample_tokens' ids."""
    batch, budgets = prompts(6, seed=2), [40, 5, 25, 60, 1, 12]
    expected = [
        sample_tokens(model, p, b, temperature=0.0, stop_ids=STOP)[0] for p, b in zip(batch, budgets, strict=True)
    ]
    worker = BatchWorker(model, max_batch=4, gather_window_sec=0.0)
    first = worker.submit(request(batch[0], budgets[0]))
    wait_for(lambda: worker.steps >= 3, "the first request is decoding")
    rest = [worker.submit(request(p, b)) for p, b in zip(batch[1:], budgets[1:], strict=True)]
    results = [r.result(timeout=120)[0] for r in [first, *rest]]
    assert worker.max_rows_seen > 1  # later requests did share steps with the first
    assert worker.max_rows_seen <= 4  # and max_batch held
    assert results == expected


def test_seeded_sampling_matches_the_unbatched_sampler_row_by_row(model):
    """Temperature 1 with a per-request generator: each row draws from its own distribution with its
    own generator, so a seed gives the ids and log-probs sample_tokens gives with that seed."""
    batch = prompts(5, seed=3)
    expected = [
        sample_tokens(model, p, 25, temperature=1.0, stop_ids=STOP, generator=torch.Generator().manual_seed(i))
        for i, p in enumerate(batch)
    ]
    worker = BatchWorker(model, max_batch=8, gather_window_sec=0.5)
    requests = [worker.submit(request(p, 25, temperature=1.0, seed=i)) for i, p in enumerate(batch)]
    for r, (want_ids, want_logprobs, _) in zip(requests, expected, strict=True):
        ids, logprobs, _ = r.result(timeout=120)
        assert ids == want_ids
        assert logprobs == pytest.approx(want_logprobs, abs=1e-4)


def test_a_cancelled_request_leaves_the_batch_and_the_others_finish(model):
    worker = BatchWorker(model, max_batch=8, gather_window_sec=0.5)
    long_a, long_b = request(prompts(1)[0], 3000), request(prompts(2)[1], 3000)
    short_prompt = prompts(3, seed=4)[2]
    short = request(short_prompt, 20)
    for r in (long_a, long_b, short):
        worker.submit(r)
    wait_for(lambda: worker.active_rows == 2 and short.done, "the short request finished beside two long ones")
    assert short.result(0)[0] == sample_tokens(model, short_prompt, 20, temperature=0.0, stop_ids=STOP)[0]

    long_a.cancel()
    with pytest.raises(SampleCancelledError):
        long_a.result(timeout=60)
    wait_for(lambda: worker.active_rows == 1, "the cancelled row left the batch")
    assert not long_b.done  # the other long request is still decoding
    with pytest.raises(TimeoutError):
        long_b.result(timeout=0.2)  # a caller that times out cancels its own request
    wait_for(lambda: worker.active_rows == 0, "the timed-out row left the batch")
    with pytest.raises(SampleCancelledError):
        long_b.result(timeout=60)
    assert len(long_b.ids) < 3000

    # A request cancelled while still queued is never sampled; the worker serves the next one.
    queued = request(short_prompt, 20)
    queued.cancel()
    worker.submit(queued)
    assert worker.submit(request(short_prompt, 5)).result(timeout=60)[0] == short.ids[:5]
    with pytest.raises(SampleCancelledError):
        queued.result(timeout=0)
    assert queued.ids == []


def test_an_episode_timeout_in_the_agent_loop_cancels_the_reply_and_frees_its_slot():
    """The loop gives up on a reply at the deadline and calls policy.cancel(): the row leaves the
    batch (the old global lock kept the abandoned thread generating and every other episode waiting)."""
    from taskforge.agent.loop import _ask_before, _OutOfTime
    from trainer.model import load_policy

    model, tokenizer = load_policy("tiny")
    policy = LocalModelPolicy(model, tokenizer, temperature=0.0, max_new_tokens=20_000, max_batch=8)
    messages = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "list files"}]
    worker = policy.sampler.worker
    with pytest.raises(_OutOfTime):
        _ask_before(time.monotonic() + 1.0, policy, messages)
    wait_for(lambda: worker.active_rows == 0 and policy.sampler._request is None, "the abandoned reply was dropped")
    # The worker is free: another episode's reply on the same model is sampled to its end.
    other = LocalModelPolicy(model, tokenizer, temperature=0.0, max_new_tokens=8, max_batch=8)
    assert other.sampler.worker is worker
    reply = other.next_action(messages)
    assert reply.usage.output_tokens <= 8


def test_max_batch_1_is_the_one_at_a_time_path_and_concurrent_callers_agree():
    from trainer.model import load_policy

    tiny, tokenizer = load_policy("tiny")
    serial = InProcessSampler(tiny, tokenizer, temperature=0.0, max_batch=1)
    assert serial.worker is None
    batched = [InProcessSampler(tiny, tokenizer, temperature=0.0, max_batch=8) for _ in range(4)]
    assert len({id(s.worker) for s in batched}) == 1  # one shared worker per model
    texts = ["ls -la /tmp", "cat notes.txt | wc -l", "echo", "grep -r TODO src/ --include=*.py"]
    ids = [tokenizer.encode(t) for t in texts]
    expected = [serial(p, 16) for p in ids]
    results: list = [None] * 4

    def call(i):
        results[i] = batched[i](ids[i], 16)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [e[0] for e in expected]
