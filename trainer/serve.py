"""An OpenAI-compatible HTTP endpoint for a checkpoint (`taskforge serve CHECKPOINT`).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions
(the HTTP side is taskforge.openai_http, shared with the scripted test server).
- Token usage in every response.
- `logprobs: true` returns choices[0].logprobs.content[{token, logprob, bytes, top_logprobs}].
- vLLM's token-id extension: `return_token_ids: true` adds `prompt_token_ids` (top level) and
  choices[0].token_ids, which is where Harbor's LiteLLM client (collect_rollout_details) and
  taskforge's remote sampler read them; /v1/completions accepts `prompt` as a list of token ids,
  so a trainer can sample token-in/token-out from the ids it already holds.
- vLLM's `include_stop_str_in_output: true` keeps the stop token's text in the reply's text (the
  ids always hold it, as vLLM's do).
- The model runs on whatever device and dtype it was loaded with (`taskforge serve --device --dtype`).
Harbor's own agents (terminus-2) can thus evaluate our policies on any Harbor dataset.
Generation is serial (one model, one lock); the HTTP server is threaded.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import torch

from taskforge.openai_http import (
    OpenAIError,
    OpenAIHTTPServer,
    Request,
    Response,
    check_model,
    content_text,
    json_response,
)
from trainer.sampler import sample_tokens, stop_token_ids


class CheckpointServer(OpenAIHTTPServer):
    """Serves `model` as the one model `model_name`; use as a context manager or `serve_forever()`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        default_max_tokens: int = 256,
    ):
        super().__init__(models=[model_name], owned_by="taskforge", host=host, port=port, thread_name="taskforge-serve")
        self.model = model
        self.tokenizer = tokenizer
        self.default_max_tokens = default_max_tokens
        self.request_log: list[dict[str, Any]] = []  # the last 100 request bodies (for tests, debugging)
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_context = getattr(model.config, "max_position_embeddings", 32768)
        self.routes[("POST", "/v1/chat/completions")] = self._answer_chat_completion
        self.routes[("POST", "/v1/completions")] = self._answer_completion

    @property
    def model_name(self) -> str:
        return self.models[0]

    def _body(self, request: Request) -> dict[str, Any]:
        """The request's JSON, logged; the model may be left out or carry a provider prefix (`openai/<name>`)."""
        body = request.json()
        self.request_log.append(body)
        del self.request_log[:-100]
        if body.get("model") is not None:
            check_model(body["model"], self.models, allow_provider_prefix=True)
        return body

    def _answer_chat_completion(self, request: Request) -> Response:
        return json_response(self.chat_completion(self._body(request)))

    def _answer_completion(self, request: Request) -> Response:
        return json_response(self.completion(self._body(request)))

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], *, max_tokens: int, temperature: float, seed: int | None, stop_ids: list[int]
    ) -> tuple[list[int], list[float], str]:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        ids, logprobs, stopped = sample_tokens(
            self.model, prompt_ids, max_tokens, temperature=temperature, stop_ids=stop_ids, generator=generator
        )
        return ids, logprobs, "stop" if stopped else "length"

    def _complete(self, body: dict[str, Any], prompt_ids: list[int], chat: bool) -> dict[str, Any]:
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.default_max_tokens)
        budget = self.max_context - len(prompt_ids)
        if budget <= 0:
            limit = f"This model's maximum context length is {self.max_context} tokens"
            raise OpenAIError(400, f"{limit}; the prompt has {len(prompt_ids)}.", "context_length_exceeded")
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        stop_ids = list(self.stop_ids) + [int(i) for i in body.get("stop_token_ids") or []]
        ids, logprobs, finish = self.generate(
            prompt_ids,
            max_tokens=min(max_tokens, budget),
            temperature=temperature,
            seed=body.get("seed"),
            stop_ids=stop_ids,
        )
        # As vLLM: choices[0].token_ids always end with the stop token that ended the reply; the text
        # leaves it out unless the request asks for it with include_stop_str_in_output.
        keep_stop = bool(body.get("include_stop_str_in_output"))
        text_ids = ids[:-1] if finish == "stop" and ids and ids[-1] in stop_ids and not keep_stop else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        # Completions take an int (0: the sampled token's log-prob, no alternatives: RemoteSampler's), chat a bool.
        if body.get("logprobs") is not None and body.get("logprobs") is not False:
            tokens = [self.tokenizer.decode([i]) for i in ids]
            entries = [
                {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                for t, lp in zip(tokens, logprobs, strict=True)
            ]
            choice["logprobs"] = {"content": entries} if chat else {"tokens": tokens, "token_logprobs": logprobs}
        response: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt_ids) + len(ids),
            },
        }
        if body.get("return_token_ids"):
            response["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = ids
        return response

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(400, "messages must be a non-empty list")
        clean = [{"role": m.get("role", "user"), "content": content_text(m.get("content"))} for m in messages]
        prompt = self.tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=True, return_dict=False)
        prompt_ids = list(prompt)
        return self._complete(body, prompt_ids, chat=True)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
            prompt_ids = prompt
        elif isinstance(prompt, str):
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            raise OpenAIError(400, "prompt must be a string or a list of token ids")
        return self._complete(body, prompt_ids, chat=False)
