"""In-process generation: the trainer's model as a policy of the agent loop, token-in/token-out.

`LocalModelPolicy` implements taskforge's Policy protocol (`next_action(messages)`), but it keeps
its own `RolloutBuilder`: each observation the loop reports is appended as a chat-template delta,
the model samples from exactly `builder.token_ids`, and the sampled ids go into the builder
verbatim. So the rollout the trainer learns from is the token sequence the sampler saw, never a
re-tokenisation of the transcript. One instance serves one episode.

Actions use the loop's plain-text format (a ```bash block, or DONE): a tiny model has no tools.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from taskforge.agent.episode import TokenUsage
from taskforge.agent.policy import ContextLengthExceededError, PolicyReply
from trainer.rollout import Rollout, RolloutBuilder

# Generation on a shared model from several threads would interleave on 2 cores for no gain;
# one lock keeps sampling serial while sandboxes run in parallel.
_GENERATE_LOCK = threading.Lock()


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids a sampler stops at (ChatML's <|im_end|>, the eos and pad tokens)."""
    candidates = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in candidates if isinstance(i, int) and i >= 0)


@torch.no_grad()
def sample_tokens(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float,
    stop_ids: list[int],
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[float], bool]:
    """Samples from softmax(logits / temperature) with a KV cache until a stop id or the budget.
    Returns (ids, their log-probs under the sampling distribution, stopped at a stop id).

    Inputs go to the model's device; each step's distribution is drawn on the CPU (in float32,
    whatever the model's dtype), so `generator` is a CPU generator and a seed samples the same ids
    on any device given the same logits."""
    device = model.device
    with _GENERATE_LOCK:
        was_training = model.training
        model.eval()
        try:
            output = model(input_ids=torch.tensor([prompt_ids], dtype=torch.long, device=device), use_cache=True)
            cache, logits = output.cache, output.logits[0, -1]
            ids: list[int] = []
            logprobs: list[float] = []
            for _ in range(max_new_tokens):
                log_probs = torch.log_softmax(logits.float().cpu() / max(temperature, 1e-5), dim=-1)
                token = (
                    int(torch.argmax(log_probs))
                    if temperature <= 0
                    else int(torch.multinomial(log_probs.exp(), 1, generator=generator))
                )
                ids.append(token)
                logprobs.append(float(log_probs[token]))
                if token in stop_ids:
                    return ids, logprobs, True
                output = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True)
                cache, logits = output.cache, output.logits[0, -1]
            return ids, logprobs, False
        finally:
            model.train(was_training)


class InProcessSampler:
    """Samples with the trainer's own model (CPU default)."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, seed: int | None = None):
        self.model, self.temperature = model, temperature
        self.stop_ids = stop_token_ids(tokenizer)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.max_context_tokens = getattr(model.config, "max_position_embeddings", 32768)

    def __call__(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        ids, logprobs, _ = sample_tokens(
            self.model,
            prompt_ids,
            max_new_tokens,
            temperature=self.temperature,
            stop_ids=self.stop_ids,
            generator=self.generator,
        )
        return ids, logprobs


class RemoteSampler:
    """Samples from an OpenAI-compatible server that speaks vLLM's token-id extension (vLLM,
    `taskforge serve`): POST /v1/completions with the prompt as token ids and
    `return_token_ids: true`; the reply's choices[0].token_ids and logprobs are taken verbatim.
    The GPU route: vLLM generates, the trainer keeps the exact ids.

    `include_stop_str_in_output: true` (a vLLM sampling parameter) keeps the stop token in the
    reply's text as well as its ids, so the end of turn the model sampled is the one the rollout
    holds (and trains on), not one the rollout builder adds as template."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        api_key: str = "local",
        timeout_sec: float = 600.0,
        max_context_tokens: int = 32768,
    ):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_sec, max_retries=6)
        self.model, self.temperature, self.seed = model, temperature, seed
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_context_tokens = max_context_tokens

    def __call__(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        response = self.client.completions.create(
            model=self.model,
            prompt=prompt_ids,
            max_tokens=max_new_tokens,
            temperature=self.temperature,
            logprobs=0,
            seed=self.seed,
            extra_body={
                "return_token_ids": True,
                "stop_token_ids": self.stop_ids,
                "skip_special_tokens": False,
                "include_stop_str_in_output": True,
            },
        )
        choice = response.choices[0]
        ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids")
        if ids is None:
            raise RuntimeError(
                f"{self.client.base_url} returned no token ids: the server must support vLLM's return_token_ids"
            )
        logprobs = list(choice.logprobs.token_logprobs) if choice.logprobs is not None else [0.0] * len(ids)
        return list(ids), logprobs


class LocalModelPolicy:
    """One episode's policy: token-in/token-out sampling through `sampler` (in-process by
    default, or a RemoteSampler), recording every id into a RolloutBuilder.

    Context cap (`max_context_tokens`, default the sampler's: the model's max_position_embeddings
    in-process; a given value is capped by that). A turn is sampled only if its prompt plus the
    whole per-turn budget (`max_new_tokens`) fits in the cap: vLLM's max_model_len rule, which
    refuses a request whose prompt + max_tokens passes it. Otherwise next_action raises
    ContextLengthExceededError before any generation, and the loop ends the episode with
    stop reason context_exceeded. So every reply gets the same budget and no sampler, in-process or
    remote, is asked past the cap. If the observation that did not fit takes the prompt itself past
    the cap, the rollout drops it (it ends on the last action, at most cap + 2 template tokens);
    one that fits stays, so the env term still trains on it. Either way the ids are the sampler's.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float = 1.0,
        max_new_tokens: int = 256,
        max_context_tokens: int | None = None,
        task_name: str = "",
        group_id: str = "",
        seed: int | None = None,
        name: str = "local",
        sampler=None,
    ):
        self.tokenizer = tokenizer
        self.sampler = sampler or InProcessSampler(model, tokenizer, temperature=temperature, seed=seed)
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = min(
            max_context_tokens or self.sampler.max_context_tokens, self.sampler.max_context_tokens
        )
        self.task_name = task_name
        self.group_id = group_id
        self.name = name
        self.model_name = name
        self.builder: RolloutBuilder | None = None
        self._n_seen_messages = 0
        self._stop_ids = stop_token_ids(tokenizer)

    # -- the loop's Policy protocol --------------------------------------------------------

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        self._sync(messages)
        prompt_ids = self.builder.token_ids
        if len(prompt_ids) + self.max_new_tokens > self.max_context_tokens:
            if len(prompt_ids) > self.max_context_tokens:
                self.builder.drop_pending_observation()
            raise ContextLengthExceededError(
                f"{len(prompt_ids)} prompt tokens + {self.max_new_tokens} new tokens per turn would pass "
                f"max_context_tokens={self.max_context_tokens}"
            )
        new_ids, logprobs = self.sampler(prompt_ids, self.max_new_tokens)
        self.builder.add_action(new_ids, logprobs)
        finished = bool(new_ids) and new_ids[-1] in self._stop_ids
        text = self.tokenizer.decode(new_ids[:-1] if finished else new_ids, skip_special_tokens=False)
        return PolicyReply(
            text=text,
            usage=TokenUsage(input_tokens=len(prompt_ids), output_tokens=len(new_ids)),
            finish_reason="stop" if finished else "length",
        )

    def _sync(self, messages: list[dict[str, Any]]) -> None:
        """Feeds the builder what happened since the last call: the prompt at first, then the
        observation of the previous action (the loop's message carries body and warning apart)."""
        if self.builder is None:
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:2]]
            self.builder = RolloutBuilder(self.tokenizer, prompt, task_name=self.task_name, group_id=self.group_id)
            self._n_seen_messages = 2
        for message in messages[self._n_seen_messages :]:
            if message["role"] == "assistant":
                continue  # our own reply: already in the builder as sampled ids
            self.builder.add_observation(
                message.get("observation", message.get("content") or ""), message.get("warning")
            )
        self._n_seen_messages = len(messages)

    # -- after the episode ------------------------------------------------------------------

    def rollout(self, reward: float, stop_reason: str) -> Rollout | None:
        """The episode as a Rollout (None when the policy never acted)."""
        if self.builder is None:
            return None
        return self.builder.build(reward=reward, stop_reason=stop_reason)
