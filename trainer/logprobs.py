"""Per-token log-probs of target tokens without materialising [T, V] logits.

At 16k tokens and Qwen's 152k vocabulary, full logits are about 10 GB in fp32, and autograd
through `log_softmax` keeps several such tensors. ECHO needs the log-prob of every target token
(actions for GRPO, observations for the env term) from one forward pass, so this module computes
them chunk by chunk from the final hidden states and the LM-head weight with a custom autograd
Function: the forward keeps only the per-token log-sum-exp, and the backward recomputes each
chunk's logits to form the gradient. Peak extra memory is about one [chunk_size, V] fp32 buffer
in either direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


class _ChunkedTargetLogprobs(torch.autograd.Function):
    """logprob[n] = (h[n] . W[target[n]]) / temp - logsumexp_v((h[n] . W[v]) / temp)."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, temperature: float
    ) -> torch.Tensor:
        n_tokens = hidden.shape[0]
        logprobs = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
        logsumexp = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
        for start in range(0, n_tokens, chunk_size):
            end = min(start + chunk_size, n_tokens)
            logits = _chunk_logits(hidden[start:end], weight, temperature)
            target_logits = logits.gather(1, targets[start:end, None]).squeeze(1)
            chunk_lse = _logsumexp_inplace(logits)
            logprobs[start:end] = target_logits - chunk_lse
            logsumexp[start:end] = chunk_lse
            del logits  # free this chunk's [C, V] before the next one is allocated
        ctx.save_for_backward(hidden, weight, targets, logsumexp)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return logprobs

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor):
        hidden, weight, targets, logsumexp = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_logprobs = grad_logprobs.float()
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            grad_logits = _chunk_grad_logits(
                hidden[start:end],
                weight,
                targets[start:end],
                logsumexp[start:end],
                grad_logprobs[start:end],
                ctx.temperature,
            ).to(hidden.dtype)
            if need_hidden:
                grad_hidden[start:end] = grad_logits @ weight
            if need_weight:
                grad_weight += (grad_logits.T @ hidden[start:end]).float()
            del grad_logits  # as in forward: never two [C, V] buffers at once
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """[C, V] fp32 logits for one chunk (matmul in the model dtype, softmax maths in fp32)."""
    logits = (hidden @ weight.T).float()
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def _logsumexp_inplace(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, overwriting `logits` instead of allocating another [C, V]."""
    row_max = logits.amax(dim=1, keepdim=True)
    return logits.sub_(row_max).exp_().sum(dim=1).log_() + row_max.squeeze(1)


def _chunk_grad_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    logsumexp: torch.Tensor,
    grad_out: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """d(sum_n g_n logprob_n)/d(raw logits) = g_n (onehot(target_n) - softmax_n) / temperature."""
    probs = _chunk_logits(hidden, weight, temperature).sub_(logsumexp[:, None]).exp_()
    grad = probs.mul_(-grad_out[:, None])
    grad.scatter_add_(1, targets[:, None], grad_out[:, None])
    if temperature != 1.0:
        grad.div_(temperature)
    return grad


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-prob of `targets` under softmax(hidden @ W.T / temperature), computed in chunks.

    hidden [B, T, H] (or [N, H]), lm_head_weight [V, H], targets [B, T] (or [N]) -> fp32 [B, T].
    Forward and backward both hold at most one [chunk_size, V] fp32 buffer (plus the matmul
    output), never [B*T, V]. `temperature` should match the sampler's so importance ratios
    compare like with like. The LM head must be bias-free (Qwen, Llama, Mistral are).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    batch_shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1).long()
    if flat_hidden.shape[0] != flat_targets.shape[0]:
        raise ValueError(f"hidden has {flat_hidden.shape[0]} positions but targets {flat_targets.shape[0]}")
    flat = _ChunkedTargetLogprobs.apply(flat_hidden, lm_head_weight, flat_targets, chunk_size, float(temperature))
    return flat.reshape(batch_shape)


def sequence_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs [B, T] with logprobs[:, t] = log p(input_ids[:, t] | input_ids[:, :t]).

    Runs the model body once (hidden states, no logits) and the chunked LM head on the shifted
    targets. Position 0 has no context and is 0, as are padding positions (attention_mask 0),
    so masks indexed by token position line up with these log-probs directly.
    """
    _check_plain_lm_head(model)
    body = model.get_decoder()
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    weight = model.get_output_embeddings().weight
    shifted = token_logprobs(hidden[:, :-1], weight, input_ids[:, 1:], chunk_size, temperature)
    logprobs = F.pad(shifted, (1, 0))
    if attention_mask is not None:
        logprobs = logprobs * attention_mask.to(logprobs.dtype)
    return logprobs


def _check_plain_lm_head(model: PreTrainedModel) -> None:
    """The chunked path assumes logits = hidden @ W.T; refuse models that post-process logits."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("sequence_logprobs does not support an LM head with a bias")
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise NotImplementedError("sequence_logprobs does not support logit soft-capping or scaling")
