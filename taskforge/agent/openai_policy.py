"""A policy backed by any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang, ...).

Retries: the openai client's own machinery retries 408/409/429/5xx, connection errors and
timeouts with exponential backoff (0.5 s doubling to 8 s, jittered; a Retry-After header up to
60 s wins) up to `max_retries` times. A 200 whose body is not a chat completion (malformed JSON,
no choices) is retried here with the same backoff. When retries run out the call raises
PolicyUnavailableError; a bad key (401/403), an unknown model (404) or another rejected request
(400) raise PolicyConfigError subclasses with what to do about it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential

from taskforge.agent.episode import TokenUsage, ToolCall, api_messages, harness_warning
from taskforge.agent.policy import (
    TOOLS,
    ContextLengthExceededError,
    ModelNotFoundError,
    PolicyAuthError,
    PolicyConfigError,
    PolicyReply,
    PolicyUnavailableError,
)

# How servers word a prompt that does not fit: OpenAI's error code, vLLM's and others' messages.
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)

# The openai client's own backoff, which malformed replies get too: 0.5 s doubling to 8 s.
_CLIENT_BACKOFF = wait_exponential(multiplier=0.5, max=8.0)


def _malformed_backoff(retry_state: RetryCallState) -> float:
    """The client's backoff with its jitter (up to 25% shorter), so retries from parallel trials spread out."""
    return _CLIENT_BACKOFF(retry_state) * (1 - 0.25 * random.random())


@dataclass
class ChatConfig:
    """Where the model is and how to sample it."""

    model: str
    base_url: str | None = None  # None: the openai client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float | None = None  # None: the server's default
    max_tokens: int | None = 4096  # per reply
    request_timeout_sec: float = 600.0
    max_retries: int = 6
    use_tools: bool = True  # False: plain-text actions only (```bash blocks and DONE)

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url and _is_local(self.base_url):
            return "local"  # local servers rarely check the key; the client insists on one
        raise PolicyAuthError(
            f"no API key: set the {self.api_key_env} environment variable "
            "(or pass --api-key-env NAME to read another one)"
        )


def _is_local(url: str) -> bool:
    return any(host in url for host in ("://127.0.0.1", "://localhost", "://0.0.0.0", "://[::1]"))


class OpenAIChatPolicy:
    """`next_action` = one chat-completions call over the messages so far."""

    def __init__(self, config: ChatConfig, client: openai.OpenAI | None = None):
        self.config = config
        self.name = f"openai:{config.model}"
        self.model_name = config.model
        self.client = client or openai.OpenAI(
            api_key=config.api_key(),
            base_url=config.base_url,
            timeout=config.request_timeout_sec,
            max_retries=config.max_retries,
        )

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        request: dict[str, Any] = {"model": self.config.model, "messages": api_messages(messages)}
        if self.config.use_tools:
            request.update(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False)
        if self.config.temperature is not None:
            request["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            request["max_tokens"] = self.config.max_tokens

        client_retries = attempts = 0

        def ask() -> tuple[ChatCompletion | None, str | None]:
            """One request: the completion and, when it is unusable, why."""
            nonlocal client_retries, attempts
            attempts += 1
            raw = self._post(request)
            client_retries += raw.retries_taken
            try:
                completion = raw.parse()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return None, f"body is not JSON: {exc}"
            return completion, _malformed(completion)

        # Only malformed 200s are retried here; _post's errors propagate (the client has retried them).
        completion, problem = Retrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=_malformed_backoff,
            retry=retry_if_result(lambda answer: answer[1] is not None),
            retry_error_callback=lambda state: state.outcome.result(),  # the last, still malformed, answer
        )(ask)
        retries = client_retries + attempts - 1
        if problem is not None:
            raise PolicyUnavailableError(
                f"{self._where()} kept returning malformed replies ({problem}) after {retries} retries"
            )
        return _reply_from(completion, retries)

    def _post(self, request: dict[str, Any]):
        try:
            return self.client.chat.completions.with_raw_response.create(**request)
        except openai.AuthenticationError as exc:
            raise PolicyAuthError(
                f"{self._where()} rejected the API key (HTTP 401): set {self.config.api_key_env} to a valid key, "
                "or pass --api-key-env NAME"
            ) from exc
        except openai.PermissionDeniedError as exc:
            raise PolicyAuthError(
                f"{self._where()} refused access (HTTP 403): the key in {self.config.api_key_env} "
                f"may not be allowed to use {self.config.model!r}"
            ) from exc
        except openai.NotFoundError as exc:
            raise ModelNotFoundError(
                f"{self._where()} has no model {self.config.model!r} (HTTP 404).{self._available_models()}"
            ) from exc
        except openai.BadRequestError as exc:
            text = f"{exc.code or ''} {exc.message}".lower()
            if any(marker in text for marker in _CONTEXT_MARKERS):
                raise ContextLengthExceededError(
                    f"the conversation no longer fits {self.config.model!r}: {exc.message}"
                ) from exc
            raise PolicyConfigError(f"{self._where()} rejected the request (HTTP 400): {exc.message}") from exc
        except openai.APITimeoutError as exc:
            raise PolicyUnavailableError(
                f"{self._where()} did not answer within {self.config.request_timeout_sec:g} s, "
                f"{self.config.max_retries} retries included"
            ) from exc
        except openai.APIConnectionError as exc:
            raise PolicyUnavailableError(
                f"cannot reach {self._where()} after {self.config.max_retries} retries: {exc}"
            ) from exc
        except openai.APIStatusError as exc:
            raise PolicyUnavailableError(
                f"{self._where()} kept failing with HTTP {exc.status_code} "
                f"after {self.config.max_retries} retries: {exc.message}"
            ) from exc

    def _where(self) -> str:
        return f"the model server at {self.client.base_url}"

    def _available_models(self) -> str:
        try:
            names = [model.id for model in self.client.models.list()]
        except openai.OpenAIError:
            return f" Check the name against `curl {self.client.base_url}models`."
        return f" It serves: {', '.join(names[:20]) or '(none)'}."


def _malformed(completion: Any) -> str | None:
    """Why a 200 response is not a usable chat completion, or None when it is."""
    if not isinstance(completion, ChatCompletion):
        return f"body is not a JSON object: {str(completion)[:80]!r}"
    choices = getattr(completion, "choices", None)
    if not choices:
        return "no choices"
    message = getattr(choices[0], "message", None)
    if message is None or not hasattr(message, "content"):
        return "choice without a message"
    return None


def _reply_from(completion: ChatCompletion, retries: int) -> PolicyReply:
    choice = completion.choices[0]
    message = choice.message
    warnings: list[str] = []
    calls = list(getattr(message, "tool_calls", None) or [])
    tool_call = None
    if calls:
        first = calls[0]
        function = getattr(first, "function", None)
        tool_call = ToolCall(
            id=getattr(first, "id", None) or "call_0",
            name=getattr(function, "name", None) or "",
            arguments=getattr(function, "arguments", None) or "{}",
        )
        if len(calls) > 1:
            warnings.append(
                harness_warning(
                    f"your reply had {len(calls)} tool calls; only the first ({tool_call.name}) was used: "
                    "one action per reply"
                )
            )
    if choice.finish_reason == "length":
        warnings.append(harness_warning("your reply was cut off at the output token limit; keep replies shorter"))
    return PolicyReply(
        text=message.content or "",
        tool_call=tool_call,
        usage=_usage_of(completion),
        finish_reason=choice.finish_reason,
        api_retries=retries,
        warnings=warnings,
    )


def _usage_of(completion: ChatCompletion) -> TokenUsage:
    usage = getattr(completion, "usage", None)
    if usage is None:
        return TokenUsage()
    details = getattr(usage, "prompt_tokens_details", None)
    return TokenUsage(
        input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cached_tokens=(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0,
    )
