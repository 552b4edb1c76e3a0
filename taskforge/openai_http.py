"""The HTTP layer shared by taskforge's OpenAI-compatible servers (the scripted test server and
`taskforge serve`), so both speak the same wire format and only supply their own answers.

    class EchoServer(OpenAIHTTPServer):
        def __init__(self):
            super().__init__(models=["echo"], owned_by="me")
            self.routes[("POST", "/v1/chat/completions")] = self.chat

        def chat(self, request: Request) -> Response:
            body = request.json()
            check_model(body.get("model"), self.models)
            return json_response({...})

The server answers GET /v1/models and /v1/models/{id} from `models` itself, checks the API key
when it has one (401), and turns an `OpenAIError` raised by a handler into OpenAI's error body.
Any other exception from a handler drops the connection, which clients treat as a network error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

# OpenAI's `error.type` by HTTP status; anything else is a server_error.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(Exception):
    """An error a handler raises to answer with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, code: str | None = None, *, retry_after_sec: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after_sec = retry_after_sec

    def response(self) -> Response:
        headers = {}
        if self.retry_after_sec is not None:  # the header the openai client honours first
            headers["retry-after-ms"] = str(int(self.retry_after_sec * 1000))
        return json_response(error_body(self.status, self.message, self.code), self.status, headers)


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class Request:
    method: str
    path: str  # without query string or trailing slash
    headers: Message
    raw: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; a 400 otherwise."""
        try:
            body = json.loads(self.raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OpenAIError(400, f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise OpenAIError(400, "request body is not a JSON object")
        return body


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def model_object(name: str, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owned_by}


def check_model(requested: Any, models: Sequence[str], *, allow_provider_prefix: bool = False) -> None:
    """404 model_not_found unless `requested` is one of `models` (or, with allow_provider_prefix,
    ends in one after a slash, as LiteLLM-style names like `openai/<model>` do)."""
    if requested in models:
        return
    if allow_provider_prefix and isinstance(requested, str) and requested.split("/")[-1] in models:
        return
    served = ", ".join(f"`{name}`" for name in models)
    raise OpenAIError(404, f"The model `{requested}` does not exist; this server serves {served}.", "model_not_found")


def content_text(content: Any) -> str:
    """A message's content as text: a string as is, content parts joined, None as ''."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


class OpenAIHTTPServer:
    """A threaded HTTP server for OpenAI-style JSON routes; use as a context manager (or `start()`/`stop()`).

    Subclasses add their handlers to `routes`, keyed by (method, path)."""

    def __init__(
        self,
        *,
        models: Sequence[str],
        owned_by: str,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        thread_name: str = "openai-http",
    ):
        self.models = list(models)
        self.owned_by = owned_by
        self.api_key = api_key
        self.routes: dict[tuple[str, str], Handler] = {("GET", "/v1/models"): self._list_models}
        self._thread_name = thread_name
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    def start(self) -> Self:
        """Serves from a daemon thread; returns the server."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def answer(self, request: Request) -> Response:
        """The response to one request: key check, then its route's handler."""
        try:
            self._authorise(request)
            handler = self.routes.get((request.method, request.path))
            if handler is None and request.method == "GET" and request.path.startswith("/v1/models/"):
                return self._get_model(request.path.removeprefix("/v1/models/"))
            if handler is None:
                raise OpenAIError(404, f"no route {request.method} {request.path}")
            return handler(request)
        except OpenAIError as exc:
            return exc.response()

    def _authorise(self, request: Request) -> None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise OpenAIError(401, "Incorrect API key provided.", "invalid_api_key")

    def _list_models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [model_object(name, self.owned_by) for name in self.models]})

    def _get_model(self, name: str) -> Response:
        check_model(name, self.models)
        return json_response(model_object(name, self.owned_by))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class HTTPHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path.rstrip("/")
                response = server.answer(Request(method, path, self.headers, raw))
                try:
                    self.send_response(response.status)
                    for key, value in response.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (e.g. a stalled reply past its timeout)

        return HTTPHandler
