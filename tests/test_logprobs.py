"""Chunked per-token log-probs against the naive full-logits computation, on a real tiny model."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from trainer.logprobs import sequence_logprobs, token_logprobs


def naive_token_logprobs(hidden, weight, targets, temperature=1.0):
    logits = (hidden @ weight.T).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size,temperature", [(7, 1.0), (64, 0.8), (1, 1.3)])
def test_token_logprobs_values_and_gradients_match_full_logits(chunk_size, temperature):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=generator, requires_grad=True)
    weight = torch.randn(97, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 97, (3, 11), generator=generator)
    upstream = torch.randn(3, 11, generator=generator)

    chunked = token_logprobs(hidden, weight, targets, chunk_size=chunk_size, temperature=temperature)
    chunked_grads = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    naive = naive_token_logprobs(hidden, weight, targets, temperature)
    naive_grads = torch.autograd.grad((naive * upstream).sum(), (hidden, weight))

    assert chunked.shape == (3, 11) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=0)
    for got, want in zip(chunked_grads, naive_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_logprobs_in_bfloat16_returns_fp32_close_to_fp32_reference():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 32, generator=generator)
    weight = torch.randn(50, 32, generator=generator) * 0.1
    targets = torch.randint(0, 50, (2, 9), generator=generator)
    hidden_bf16 = hidden.to(torch.bfloat16).requires_grad_()
    weight_bf16 = weight.to(torch.bfloat16).requires_grad_()
    result = token_logprobs(hidden_bf16, weight_bf16, targets, chunk_size=4)
    result.sum().backward()
    assert result.dtype == torch.float32
    assert hidden_bf16.grad.dtype == torch.bfloat16 and weight_bf16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(result, naive_token_logprobs(hidden, weight, targets), atol=0.05, rtol=0.02)


def tiny_model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return Qwen3ForCausalLM(config)


def test_sequence_logprobs_align_with_model_logits_and_gradients():
    model = tiny_model()
    input_ids = torch.randint(1, 101, (2, 10), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # right padding on the second sequence
    input_ids[1, 7:] = 0

    ours = sequence_logprobs(model, input_ids, attention_mask, chunk_size=3)
    ours_grads = torch.autograd.grad(ours.sum(), list(model.parameters()))

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    reference = torch.zeros(2, 10)
    reference[:, 1:] = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    reference = reference * attention_mask
    reference_grads = torch.autograd.grad(reference.sum(), list(model.parameters()))

    # logprobs[:, t] = log p(token t | tokens < t): position 0 and padding are exactly 0.
    assert torch.equal(ours[:, 0], torch.zeros(2))
    assert torch.equal(ours[1, 7:], torch.zeros(3))
    assert bool((ours[0, 1:] < 0).all())
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    for got, want in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_rejects_lm_heads_it_cannot_reproduce():
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="soft-capping"):
        sequence_logprobs(model, torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(torch.zeros(1, 2, 4), torch.zeros(5, 4), torch.zeros(1, 2, dtype=torch.long), chunk_size=0)
