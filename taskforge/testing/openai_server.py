"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks (real HTTP).

    def script(request: ChatRequest) -> ServerReply:
        if request.turn == 0:
            return bash("echo hello > /app/out.txt")
        return done()

    with ScriptedOpenAIServer(script, models=["test-model"]) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions (non-streaming).
A script is a function of the request (its messages, tools, turn number) returning one of:
- `Reply`: a completion (text and/or tool calls; usage estimated from lengths unless given),
- `ErrorReply(status, ...)`: an HTTP error with OpenAI's error body (429/500 to test retries,
  400 context_length_exceeded, ...), optionally with a Retry-After,
- `Malformed(body)`: a 200 whose body is not a chat completion,
- `Stall(seconds, then)`: sleep (longer than the client's timeout) before answering.
Unknown models get a 404 and, when `api_key` is set, a wrong key gets a 401, as real servers do.
`fail_first(script, n, reply)` wraps a script to answer the first n requests with `reply`.
Every request is kept in `server.requests`; `server.busy_seconds` is the time spent inside
scripts and stalls (the "model's own time" for overhead measurements).
The HTTP side (routes, key check, error bodies) is taskforge.openai_http, shared with `taskforge serve`.
Standalone, with the scripts of taskforge.testing.scripts: `python -m taskforge.testing --help`.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskforge.openai_http import (
    OpenAIError,
    OpenAIHTTPServer,
    Request,
    Response,
    check_model,
    content_text,
    json_response,
)


@dataclass
class ChatRequest:
    body: dict[str, Any]
    index: int  # 0-based number of this request on the server

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def model(self) -> str:
        return self.body.get("model", "")

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools")

    @property
    def turn(self) -> int:
        """How many assistant replies the conversation already holds."""
        return sum(message.get("role") == "assistant" for message in self.messages)

    def text_of(self, role: str) -> str:
        return "\n".join(content_text(m.get("content")) for m in self.messages if m.get("role") == role)


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON text)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None  # None: estimated, 4 characters a token


@dataclass
class ErrorReply:
    status: int
    message: str = "scripted error"
    code: str | None = None
    retry_after_sec: float | None = None


@dataclass
class Malformed:
    body: bytes = b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": {"role": "assi'
    content_type: str = "application/json"


@dataclass
class Stall:
    seconds: float
    then: ServerReply | None = None


ServerReply = Reply | ErrorReply | Malformed | Stall
Script = Callable[[ChatRequest], ServerReply]


def text(content: str) -> Reply:
    return Reply(content=content)


def tool_call(name: str, arguments: dict[str, Any] | str, content: str | None = None) -> Reply:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return Reply(content=content, tool_calls=[(name, args)])


def bash(command: str, timeout_sec: float | None = None) -> Reply:
    arguments: dict[str, Any] = {"command": command}
    if timeout_sec is not None:
        arguments["timeout_sec"] = timeout_sec
    return tool_call("bash", arguments)


def done() -> Reply:
    return tool_call("done", {})


def fail_first(script: Script, n: int, reply: ServerReply) -> Script:
    """`script`, except that the server's first n requests get `reply` (an error, a stall...)."""
    counter = itertools.count()
    lock = threading.Lock()

    def wrapped(request: ChatRequest) -> ServerReply:
        with lock:
            k = next(counter)
        return reply if k < n else script(request)

    return wrapped


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class ScriptedOpenAIServer(OpenAIHTTPServer):
    """A threaded HTTP server answering chat completions from `script`. Use as a context manager."""

    def __init__(
        self, script: Script, *, models: list[str] | None = None, api_key: str | None = None, host: str = "127.0.0.1"
    ):
        super().__init__(
            models=models or ["test-model"],
            owned_by="taskforge-tests",
            api_key=api_key,
            host=host,
            thread_name="scripted-openai",
        )
        self.script = script
        self.requests: list[ChatRequest] = []
        self.busy_seconds = 0.0
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.routes[("POST", "/v1/chat/completions")] = self._chat_completion

    def _chat_completion(self, http_request: Request) -> Response:
        body = http_request.json()
        check_model(body.get("model"), self.models)
        if body.get("stream"):
            raise OpenAIError(400, "streaming is not supported by the scripted server")
        request = ChatRequest(body=body, index=next(self._counter))
        with self._lock:
            self.requests.append(request)
        started = time.monotonic()
        reply = self.script(request)
        while isinstance(reply, Stall):
            time.sleep(reply.seconds)
            reply = reply.then if reply.then is not None else Reply(content="(stalled)")
        with self._lock:
            self.busy_seconds += time.monotonic() - started
        if isinstance(reply, ErrorReply):
            raise OpenAIError(reply.status, reply.message, reply.code, retry_after_sec=reply.retry_after_sec)
        if isinstance(reply, Malformed):
            return Response(200, reply.body, {"Content-Type": reply.content_type})
        return json_response(_completion(request, reply))


def _completion(request: ChatRequest, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{request.index}_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(reply.tool_calls)
        ]
    completion_text = (reply.content or "") + "".join(name + arguments for name, arguments in reply.tool_calls)
    usage = reply.usage or {
        "prompt_tokens": _tokens(json.dumps(request.messages)),
        "completion_tokens": _tokens(completion_text),
    }
    usage = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
    finish_reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    return {
        "id": f"chatcmpl-{request.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }
