"""The OpenAI-compatible policy over real HTTP against the scripted server: tool calls and the
plain-text fallback, token usage, retries on 429/500/malformed/stalled replies, clear errors for
a bad key or an unknown model, and what the loop makes of each."""

from __future__ import annotations

import time

import pytest

from taskforge.agent.episode import EpisodeConfig
from taskforge.agent.loop import run_episode
from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
from taskforge.agent.policy import ModelNotFoundError, PolicyAuthError, PolicyUnavailableError
from taskforge.sandbox.docker import DockerSandbox
from taskforge.tasks import load_task
from taskforge.testing.openai_server import (
    ErrorReply,
    Malformed,
    Reply,
    ScriptedOpenAIServer,
    Stall,
    bash,
    done,
    fail_first,
    text,
    tool_call,
)
from taskforge.testing.scripts import competent
from taskforge.trial import run_episode_trial

from .conftest import FIXTURES

COUNT_LINES = FIXTURES / "agent-tasks" / "count-lines"


@pytest.fixture(scope="module")
def task():
    return load_task(COUNT_LINES)


@pytest.fixture(scope="module")
def server(task):
    with ScriptedOpenAIServer(competent([task.path]), models=["test-model", "other-model"]) as running:
        yield running


@pytest.fixture(autouse=True)
def reset_script(server, task):
    server.script = competent([task.path])
    yield


def policy_for(server, **overrides) -> OpenAIChatPolicy:
    return OpenAIChatPolicy(ChatConfig(**{"model": "test-model", "base_url": server.base_url, **overrides}))


@pytest.mark.parametrize("use_tools", [True, False])
def test_competent_model_solves_the_task_with_tools_and_with_text(server, task, tmp_path, base_image, use_tools):
    record, episode = run_episode_trial(task, policy_for(server, use_tools=use_tools), tmp_path / "trial")
    assert (record.reward, record.stop_reason, record.n_turns) == (1.0, "done", 2)
    request = server.requests[-1]
    assert bool(request.tools) == use_tools and request.body["max_tokens"] == 4096
    if use_tools:
        assert episode.turns[0].tool_call.name == "bash" and episode.turns[1].tool_call.name == "done"
    else:
        assert (
            episode.turns[0].tool_call is None
            and "```bash" in episode.turns[0].text
            and episode.turns[1].text == "DONE"
        )
    # Token usage is the server's `usage`, per turn, summed into the Harbor-shaped result.
    assert all(turn.usage.input_tokens > 0 and turn.usage.output_tokens > 0 for turn in episode.turns)
    assert record.n_input_tokens == sum(t.usage.input_tokens for t in episode.turns) > 0
    assert record.n_output_tokens == sum(t.usage.output_tokens for t in episode.turns) > 0
    # The second request carried the whole conversation, observation included.
    assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "tool" if use_tools else "user"]
    assert request.messages[-1]["content"] == "[exit code: 0]"


def test_rate_limits_server_errors_malformed_and_stalled_replies_are_retried(server, task, base_image):
    policy = policy_for(server, request_timeout_sec=0.5)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": task.instruction}]
    for trouble, retries in [
        (ErrorReply(429, "slow down", retry_after_sec=0.05), 2),
        (ErrorReply(500, "boom"), 1),
        (Malformed(), 2),
        (Malformed(b"<html>bad gateway</html>", "text/html"), 1),
        (Reply(content=None), 0),  # a valid but empty reply is the model's problem, not a retry
        (Stall(2.0), 1),  # longer than the 0.5 s client timeout
    ]:
        server.script = fail_first(competent([task.path]), retries or 1, trouble)
        started = time.monotonic()
        reply = policy.next_action(messages)
        if retries:
            assert reply.api_retries == retries, trouble
            assert reply.tool_call is not None and reply.tool_call.name == "bash", trouble
        else:
            assert reply.text == "" and reply.tool_call is None
        assert time.monotonic() - started < 10


def test_unavailable_server_ends_the_episode_with_policy_error(server, task, base_image):
    server.script = lambda request: ErrorReply(503, "overloaded")
    with DockerSandbox(base_image) as sandbox:
        episode = run_episode(task, sandbox, policy_for(server, max_retries=1), EpisodeConfig(), timeout_sec=60)
    assert (episode.stop_reason, episode.error_type, episode.turns) == ("policy_error", "PolicyUnavailableError", [])
    assert "503" in episode.error_message


def test_context_overflow_ends_the_episode(server, task, base_image):
    def script(request):
        if request.turn == 0:
            return bash("echo hi")
        return ErrorReply(400, "This model's maximum context length is 16384 tokens.", code="context_length_exceeded")

    server.script = script
    with DockerSandbox(base_image) as sandbox:
        episode = run_episode(task, sandbox, policy_for(server), EpisodeConfig(), timeout_sec=60)
    assert episode.stop_reason == "context_exceeded" and len(episode.turns) == 1
    assert "maximum context length" in episode.error_message


def test_model_mistakes_become_warnings_and_the_episode_goes_on(server, task, base_image):
    def script(request):
        return [
            text("I will now think about the problem."),
            tool_call("bash", '{"command": "ls"'),  # unparseable arguments
            Reply(
                content="checking",
                tool_calls=[("bash", '{"command": "echo one"}'), ("bash", '{"command": "echo two"}')],
            ),
            Reply(content="```bash\necho cut\n```", finish_reason="length"),
            done(),
        ][request.turn]

    server.script = script
    with DockerSandbox(base_image) as sandbox:
        episode = run_episode(task, sandbox, policy_for(server), EpisodeConfig(), timeout_sec=60)
    chatter, broken, double, cut, finish = episode.turns
    assert episode.stop_reason == "done"
    assert chatter.action == "none" and "no action found" in chatter.warning
    assert broken.action == "none" and "not valid JSON" in broken.warning
    assert double.output == "one\n" and "2 tool calls; only the first (bash) was used" in double.warning
    assert cut.output == "cut\n" and "cut off at the output token limit" in cut.warning
    # Only the first of the two calls goes back to the API, answered by its observation.
    replayed = server.requests[-1].messages
    assert len(replayed[6]["tool_calls"]) == 1 and replayed[7]["tool_call_id"] == replayed[6]["tool_calls"][0]["id"]
    assert replayed[7]["content"] == double.warning + "\none\n[exit code: 0]"


def test_bad_key_and_unknown_model_fail_with_what_to_do(task, monkeypatch):
    messages = [{"role": "user", "content": "hi"}]
    with ScriptedOpenAIServer(
        competent([task.path]), models=["test-model", "other-model"], api_key="right-key"
    ) as guarded:
        monkeypatch.setenv("TF_TEST_KEY", "wrong-key")
        with pytest.raises(PolicyAuthError, match="HTTP 401.*TF_TEST_KEY"):
            OpenAIChatPolicy(
                ChatConfig(model="test-model", base_url=guarded.base_url, api_key_env="TF_TEST_KEY")
            ).next_action(messages)
        monkeypatch.setenv("TF_TEST_KEY", "right-key")
        with pytest.raises(ModelNotFoundError, match="no model 'gpt-missing'.*serves: test-model, other-model"):
            OpenAIChatPolicy(
                ChatConfig(model="gpt-missing", base_url=guarded.base_url, api_key_env="TF_TEST_KEY")
            ).next_action(messages)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(PolicyAuthError, match="set the NO_SUCH_KEY_VAR environment variable"):
        OpenAIChatPolicy(ChatConfig(model="m", base_url="https://api.example.com/v1", api_key_env="NO_SUCH_KEY_VAR"))
    with pytest.raises(PolicyUnavailableError, match="cannot reach"):
        OpenAIChatPolicy(
            ChatConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, request_timeout_sec=2)
        ).next_action(messages)
