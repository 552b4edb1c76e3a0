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
- vLLM's `prompt_logprobs: k` on /v1/completions: choices[0].prompt_logprobs, None for the first
  prompt token, then {"<id>": {logprob, rank, decoded_token}} for each later one (its own id and
  the k most likely), from the raw logits as vLLM's default logprobs mode gives them.
- vLLM's weight-transfer routes (at the root, beside /v1), with its shared-disk backend, so a
  trainer pushes fresh weights after each step (trainer/weight_sync.py): POST
  /init_weight_transfer_engine {"init_info": {}}, /start_weight_update, /update_weights
  {"update_info": {"path": "/abs/dir/of/safetensors"}}, /finish_weight_update {"weight_version"},
  /pause, /resume; GET /is_paused, /weight_info. vLLM needs VLLM_SERVER_DEV_MODE=1 and
  --weight-transfer-config '{"backend": "disk"}' for them
  (https://docs.vllm.ai/en/latest/training/weight_transfer/ , "API Endpoints"; the disk backend:
  https://github.com/vllm-project/vllm/blob/main/docs/training/weight_transfer/disk.md).
  Unlike vLLM's disk backend the update is all or nothing: /update_weights reads and checks every
  tensor (names, shapes) and /finish_weight_update copies them in at once, between replies.
- The model runs on whatever device and dtype it was loaded with (`taskforge serve --device --dtype`).
Harbor's own agents (terminus-2) can thus evaluate our policies on any Harbor dataset.
Generation is serial (one model, one lock); the HTTP server is threaded.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
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
        weight_updates: bool = True,
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
        # Replies and weight swaps exclude each other: a reply is sampled from one version of the weights.
        self._state = threading.Condition()
        self._active_replies = 0
        self._paused = False
        self._update: dict[str, Any] | None = None  # the open update session: {"staged": tensors or None}
        self.weight_version: str | None = None
        if weight_updates:
            self.routes.update(
                {
                    ("POST", "/init_weight_transfer_engine"): self._init_weight_transfer_engine,
                    ("POST", "/start_weight_update"): self._start_weight_update,
                    ("POST", "/update_weights"): self._update_weights,
                    ("POST", "/finish_weight_update"): self._finish_weight_update,
                    ("POST", "/pause"): self._pause,
                    ("POST", "/resume"): self._resume,
                    ("GET", "/is_paused"): lambda request: json_response({"is_paused": self._paused}),
                    ("GET", "/weight_info"): lambda request: json_response({"weight_version": self.weight_version}),
                }
            )

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

    # -- weight transfer (vLLM's routes, disk backend) ------------------------------------------

    def _init_weight_transfer_engine(self, request: Request) -> Response:
        init_info = _optional_json(request).get("init_info")
        if init_info is None:
            raise OpenAIError(400, "Missing 'init_info' in request body")
        if init_info != {}:
            raise OpenAIError(
                400, "taskforge serve implements vLLM's disk weight-transfer backend only: init_info must be {}"
            )
        return json_response({"message": "Weight transfer initialized"})

    def _start_weight_update(self, request: Request) -> Response:
        with self._state:
            if self._update is not None:
                raise OpenAIError(409, "A shared-disk weight update is already active")
            self._update = {"staged": None}
        return json_response({"message": "Weight update started"})

    def _update_weights(self, request: Request) -> Response:
        update_info = _optional_json(request).get("update_info")
        if update_info is None:
            raise OpenAIError(400, "Missing 'update_info' in request body")
        with self._state:
            if self._update is None:
                raise OpenAIError(409, "start_weight_update must be called before loading a checkpoint")
            if self._update["staged"] is not None:
                self._update = None
                raise OpenAIError(409, "The disk backend accepts exactly one checkpoint per update session")
        try:
            staged = self._read_checkpoint(update_info)
        except OpenAIError:
            with self._state:
                self._update = None  # as vLLM: a failed update ends the session
            raise
        with self._state:
            if self._update is not None:
                self._update["staged"] = staged
        return json_response({"message": "Weights updated"})

    def _finish_weight_update(self, request: Request) -> Response:
        version = _optional_json(request).get("weight_version")
        with self._state:
            update, self._update = self._update, None
            if update is None:
                raise OpenAIError(409, "No shared-disk weight update is active")
            if update["staged"] is None:
                raise OpenAIError(409, "No checkpoint was loaded during the shared-disk update session")
            while self._active_replies:  # holding the lock keeps new replies out until the copy is done
                self._state.wait()
            with torch.no_grad():
                self.model.load_state_dict(update["staged"], strict=False)  # tied weights follow their source
            if version is not None:
                self.weight_version = str(version)
        return json_response({"message": "Weight update finished"})

    def _pause(self, request: Request) -> Response:
        """As vLLM's mode=wait: replies in progress finish, new ones wait for /resume."""
        with self._state:
            self._paused = True
            while self._active_replies:
                self._state.wait()
        return json_response({"status": "paused"})

    def _resume(self, request: Request) -> Response:
        with self._state:
            self._paused = False
            self._state.notify_all()
        return json_response({"status": "resumed"})

    def _read_checkpoint(self, update_info: Any) -> dict[str, torch.Tensor]:
        """The tensors of a safetensors directory, checked against the served model (vLLM's
        DiskWeightTransferUpdateInfo rules for the path; every name and shape must match)."""
        from safetensors.torch import load_file

        path = update_info.get("path") if isinstance(update_info, dict) else None
        if not isinstance(path, str) or not path or not os.path.isabs(path):
            raise OpenAIError(400, "update_info.path must be a non-empty absolute local directory")
        if not os.path.isdir(path):
            raise OpenAIError(400, f"Shared-disk checkpoint path must be a local directory: {path}")
        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise OpenAIError(400, f"Shared-disk checkpoint directory contains no safetensors files: {path}")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        expected = self.model.state_dict()
        unknown = sorted(set(state) - set(expected))
        if unknown:
            raise OpenAIError(400, f"{path} holds tensors the served model does not have: {unknown[:5]}")
        shapes = [
            f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
            for k, v in state.items()
            if v.shape != expected[k].shape
        ]
        if shapes:
            raise OpenAIError(400, f"{path} does not fit the served model: {shapes[:5]}")
        # A tensor may be left out only if it shares storage with one that is present (tied embeddings).
        present = {expected[k].data_ptr() for k in state}
        missing = sorted(k for k, v in expected.items() if k not in state and v.data_ptr() not in present)
        if missing:
            raise OpenAIError(400, f"{path} lacks tensors of the served model: {missing[:5]}")
        return state

    # -- generation -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reply(self):
        """One reply in progress: waits while paused or while new weights are copied in."""
        with self._state:
            while self._paused:
                self._state.wait()
            self._active_replies += 1
        try:
            yield
        finally:
            with self._state:
                self._active_replies -= 1
                self._state.notify_all()

    @torch.no_grad()
    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[dict[str, dict[str, Any]] | None]:
        """vLLM's prompt_logprobs: for each prompt token after the first, its log-prob given the
        ones before (and the `top` most likely tokens'), from one forward pass over the raw logits."""
        if top < 0:
            raise OpenAIError(400, "prompt_logprobs must be a non-negative integer")
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(input_ids=ids).logits[0, :-1].float().cpu()
        finally:
            self.model.train(was_training)
        log_probs = torch.log_softmax(logits, dim=-1)
        result: list[dict[str, dict[str, Any]] | None] = [None]
        for row, token in zip(log_probs, prompt_ids[1:], strict=True):
            chosen = [token] + [int(i) for i in torch.topk(row, top).indices if int(i) != token][: max(top, 0)]
            result.append(
                {
                    str(i): {
                        "logprob": float(row[i]),
                        "rank": int((row > row[i]).sum()) + 1,
                        "decoded_token": self.tokenizer.decode([i]),
                    }
                    for i in chosen
                }
            )
        return result

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
        with self._reply():
            ids, logprobs, finish = self.generate(
                prompt_ids,
                max_tokens=min(max_tokens, budget),
                temperature=temperature,
                seed=body.get("seed"),
                stop_ids=stop_ids,
            )
            prompt_logprobs = None
            if not chat and body.get("prompt_logprobs") is not None:
                prompt_logprobs = self.prompt_logprobs(prompt_ids, int(body["prompt_logprobs"]))
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
        if prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs
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


def _optional_json(request: Request) -> dict[str, Any]:
    """The body as JSON; an empty body is {} (vLLM's start/finish/pause routes take none)."""
    return request.json() if request.raw.strip() else {}
