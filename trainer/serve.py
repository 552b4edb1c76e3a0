"""An OpenAI-compatible HTTP endpoint for a checkpoint (`taskforge serve CHECKPOINT`).

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.
- Token usage in every response.
- `logprobs: true` returns choices[0].logprobs.content[{token, logprob, bytes, top_logprobs}].
- vLLM's token-id extension: `return_token_ids: true` adds `prompt_token_ids` (top level) and
  choices[0].token_ids, which is where Harbor's LiteLLM client (collect_rollout_details) and
  taskforge's remote sampler read them; /v1/completions accepts `prompt` as a list of token ids,
  so a trainer can sample token-in/token-out from the ids it already holds.
Harbor's own agents (terminus-2) can thus evaluate our policies on any Harbor dataset.
Generation is serial (one model, one lock); the HTTP server is threaded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from trainer.sampler import sample_tokens, stop_token_ids


class CheckpointServer:
    def __init__(self, model, tokenizer, *, model_name: str, host: str = "127.0.0.1", port: int = 0, default_max_tokens: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.request_log: list[dict[str, Any]] = []  # the last 100 request bodies (for tests, debugging)
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_context = getattr(model.config, "max_position_embeddings", 32768)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> CheckpointServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="taskforge-serve")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> CheckpointServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- generation -------------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float, seed: int | None, stop_ids: list[int]) -> tuple[list[int], list[float], str]:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        ids, logprobs, stopped = sample_tokens(self.model, prompt_ids, max_tokens, temperature=temperature, stop_ids=stop_ids, generator=generator)
        return ids, logprobs, "stop" if stopped else "length"

    def _complete(self, body: dict[str, Any], prompt_ids: list[int], chat: bool) -> dict[str, Any]:
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.default_max_tokens)
        budget = self.max_context - len(prompt_ids)
        if budget <= 0:
            raise _HTTPError(400, f"This model's maximum context length is {self.max_context} tokens; the prompt has {len(prompt_ids)}.", "context_length_exceeded")
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        stop_ids = list(self.stop_ids) + [int(i) for i in body.get("stop_token_ids") or []]
        ids, logprobs, finish = self.generate(prompt_ids, max_tokens=min(max_tokens, budget), temperature=temperature, seed=body.get("seed"), stop_ids=stop_ids)
        text_ids = ids[:-1] if finish == "stop" and ids and ids[-1] in self.stop_ids else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if body.get("logprobs"):
            tokens = [self.tokenizer.decode([i]) for i in ids]
            entries = [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in zip(tokens, logprobs)]
            choice["logprobs"] = {"content": entries} if chat else {"tokens": tokens, "token_logprobs": logprobs}
        response: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids), "total_tokens": len(prompt_ids) + len(ids)},
        }
        if body.get("return_token_ids"):
            response["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = ids
        return response

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "messages must be a non-empty list")
        clean = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages]
        prompt_ids = list(self.tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=True, return_dict=False))
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
            raise _HTTPError(400, "prompt must be a string or a list of token ids")
        return self._complete(body, prompt_ids, chat=False)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model", "owned_by": "taskforge"}]})
                elif self.path.rstrip("/") == f"/v1/models/{server.model_name}":
                    self._send(200, {"id": server.model_name, "object": "model", "owned_by": "taskforge"})
                else:
                    self._send(404, _error_body(f"no route {self.path}", "not_found"))

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    body = json.loads(self.rfile.read(length) or b"{}")
                    server.request_log.append(body)
                    del server.request_log[:-100]
                    model = body.get("model")
                    if model not in (None, server.model_name) and model.split("/")[-1] != server.model_name:
                        raise _HTTPError(404, f"The model `{model}` does not exist; this server serves `{server.model_name}`.", "model_not_found")
                    if self.path.rstrip("/") == "/v1/chat/completions":
                        self._send(200, server.chat_completion(body))
                    elif self.path.rstrip("/") == "/v1/completions":
                        self._send(200, server.completion(body))
                    else:
                        raise _HTTPError(404, f"no route {self.path}", "not_found")
                except _HTTPError as exc:
                    self._send(exc.status, _error_body(exc.message, exc.code))
                except json.JSONDecodeError as exc:
                    self._send(400, _error_body(f"body is not JSON: {exc}", "invalid_request"))

        return Handler


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
