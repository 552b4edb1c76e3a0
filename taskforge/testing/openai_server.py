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
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
        return "\n".join(_content_text(m.get("content")) for m in self.messages if m.get("role") == role)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


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


class ScriptedOpenAIServer:
    """A threaded HTTP server answering chat completions from `script`. Use as a context manager."""

    def __init__(self, script: Script, *, models: list[str] | None = None, api_key: str | None = None, host: str = "127.0.0.1"):
        self.script = script
        self.models = list(models or ["test-model"])
        self.api_key = api_key
        self.requests: list[ChatRequest] = []
        self.busy_seconds = 0.0
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- request handling -------------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
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
            return _error(reply.status, reply.message, reply.code, reply.retry_after_sec)
        if isinstance(reply, Malformed):
            return 200, {"Content-Type": reply.content_type}, reply.body
        return 200, {"Content-Type": "application/json"}, json.dumps(_completion(request, reply)).encode()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                path = self.path.rstrip("/")
                if path.endswith("/models"):
                    data = {"object": "list", "data": [_model(m) for m in server.models]}
                    return self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode())
                if "/models/" in path:
                    name = path.split("/models/", 1)[1]
                    if name in server.models:
                        return self._send(200, {"Content-Type": "application/json"}, json.dumps(_model(name)).encode())
                    return self._send(*_error(404, f"The model `{name}` does not exist.", "model_not_found"))
                self._send(*_error(404, f"no route {self.path}"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self._authorised():
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(*_error(404, f"no route {self.path}"))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(*_error(400, "request body is not JSON"))
                if body.get("model") not in server.models:
                    return self._send(*_error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found"))
                if body.get("stream"):
                    return self._send(*_error(400, "streaming is not supported by the scripted server"))
                self._send(*server._answer(body))

            def _authorised(self) -> bool:
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(*_error(401, "Incorrect API key provided.", "invalid_api_key"))
                return False

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a stalled reply past its timeout)

        return Handler


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "taskforge-tests"}


def _error(status: int, message: str, code: str | None = None, retry_after_sec: float | None = None) -> tuple[int, dict[str, str], bytes]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    headers = {"Content-Type": "application/json"}
    if retry_after_sec is not None:
        headers["retry-after-ms"] = str(int(retry_after_sec * 1000))
    return status, headers, json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


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
    return {
        "id": f"chatcmpl-{request.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")}],
        "usage": usage,
    }


def main() -> None:
    """`python -m taskforge.testing.openai_server --script competent TASKS...`: serve until Ctrl-C."""
    import argparse
    from pathlib import Path

    from taskforge.tasks import discover_task_dirs
    from taskforge.testing import scripts

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("tasks", nargs="*", type=Path, help="task dirs the competent script can solve")
    parser.add_argument("--script", choices=["competent", "hopeless"], default="competent")
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each reply takes")
    args = parser.parse_args()
    script = scripts.competent(discover_task_dirs(args.tasks)) if args.script == "competent" else scripts.hopeless()
    if args.delay:
        inner = script
        script = lambda request: Stall(args.delay, inner(request))  # noqa: E731
    with ScriptedOpenAIServer(script, models=[args.model]) as server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
