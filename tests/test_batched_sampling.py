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


# -- the KV cache kept between an episode's turns ----------------------------------------------


def play_turns(sampler, seed: int, turns: int = 3, observation: int = 7) -> list[tuple[list[int], list[float]]]:
    """An episode's prompts: each is the previous prompt + the reply + a few new ids."""
    rng = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, 96, (11 + seed,), generator=rng).tolist()
    replies = []
    for _ in range(turns):
        ids, logprobs = sampler(prompt, 9 + seed)
        replies.append((ids, logprobs))
        prompt = prompt + ids + torch.randint(4, 96, (observation,), generator=rng).tolist()
    return replies


def tokenizer_stub():
    class Stub:  # the sampler only asks a tokenizer for its stop ids
        eos_token_id, pad_token_id = 3, 0

        def convert_tokens_to_ids(self, token):
            return None

    return Stub()


@pytest.mark.parametrize("max_batch", [1, 8])
def test_later_turns_prefill_only_what_the_episode_added_and_sample_the_same(model, max_batch):
    def run(prefix_cache: bool):
        samplers = [
            InProcessSampler(
                model, tokenizer_stub(), temperature=1.0, seed=k, max_batch=max_batch, prefix_cache=prefix_cache
            )
            for k in range(4)
        ]
        replies: list = [None] * 4

        def episode(k):
            replies[k] = play_turns(samplers[k], seed=k)

        threads = [threading.Thread(target=episode, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return samplers, replies

    plain_samplers, plain = run(prefix_cache=False)
    cached_samplers, cached = run(prefix_cache=True)
    assert all(s.reused_tokens == 0 for s in plain_samplers)
    for k in range(4):
        assert [ids for ids, _ in cached[k]] == [ids for ids, _ in plain[k]]
        for (_, with_prefix), (_, without) in zip(cached[k], plain[k], strict=True):
            assert with_prefix == pytest.approx(without, abs=1e-4)
        # Turns 2 and 3 reuse everything of the turn before but its reply's last id (never fed back).
        first_prompt, first_reply = 11 + k, len(cached[k][0][0])
        second_prompt = first_prompt + first_reply + 7
        expected_reuse = (first_prompt + first_reply - 1) + (second_prompt + len(cached[k][1][0]) - 1)
        assert cached_samplers[k].reused_tokens == expected_reuse
        assert cached_samplers[k].prompt_tokens == plain_samplers[k].prompt_tokens


@pytest.mark.parametrize("max_batch", [1, 8])
def test_changed_weights_or_a_prompt_that_does_not_extend_the_last_one_prefill_everything(max_batch):
    torch.manual_seed(1)
    config = Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, pad_token_id=0, eos_token_id=3,
    )  # fmt: skip
    local = Qwen3ForCausalLM(config).eval()
    sampler = InProcessSampler(local, tokenizer_stub(), temperature=0.0, max_batch=max_batch)
    sampler.stop_ids = []
    prompt = list(range(10, 30))
    reply, _ = sampler(prompt, 5)
    # A prompt that is not the last prompt + reply (the agent loop rewrote the history): no reuse.
    sampler([*prompt[:-1], 50, *reply, 60], 5)
    assert sampler.reused_tokens == 0
    # The same weights, a prompt that extends the last: reused.
    again, _ = sampler(prompt, 5)
    sampler([*prompt, *again, 60], 5)
    assert sampler.reused_tokens == len(prompt) + len(again) - 1
    # An optimizer-like in-place step on one weight: the kept cache is stale and not used.
    reused_before = sampler.reused_tokens
    third, _ = sampler(prompt, 5)
    with torch.no_grad():
        local.model.layers[0].self_attn.q_proj.weight.mul_(3.0)
    after_step, _ = sampler([*prompt, *third, 60], 5)
    assert sampler.reused_tokens == reused_before
    fresh = InProcessSampler(local, tokenizer_stub(), temperature=0.0, max_batch=1, prefix_cache=False)
    fresh.stop_ids = []
    assert after_step == fresh([*prompt, *third, 60], 5)[0]


def test_a_preallocated_layer_holds_what_concatenation_would_through_growth_and_row_selection():
    from trainer.sampler import PreallocatedLayer

    rng = torch.Generator().manual_seed(0)
    keys, values = torch.randn(3, 2, 4, 8, generator=rng), torch.randn(3, 2, 4, 8, generator=rng)
    layer = PreallocatedLayer(keys, values, room=2)
    for step in range(9):  # outgrows its room several times
        new_keys, new_values = torch.randn(3, 2, 1, 8, generator=rng), torch.randn(3, 2, 1, 8, generator=rng)
        returned = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], 2), torch.cat([values, new_values], 2)
        assert torch.equal(returned[0], keys) and torch.equal(returned[1], values)
        assert layer.get_seq_length() == 5 + step
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, keys[[2, 0]]) and torch.equal(layer.values, values[[2, 0]])
    layer.update(keys[:2, :, :1], values[:2, :, :1])
    assert torch.equal(layer.keys[:, :, -1:], keys[:2, :, :1])
