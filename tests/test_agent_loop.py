"""The agent loop on the real Docker engine: persistent shell, action parsing, warnings kept apart
from output, stop reasons, the message layout and the transcript written with a trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taskforge.agent.episode import (
    EpisodeConfig,
    TokenUsage,
    ToolCall,
    api_messages,
    observation_layout,
    render_observation,
)
from taskforge.agent.loop import parse_action, run_episode
from taskforge.agent.policy import PolicyError, PolicyReply
from taskforge.agent.scripted import NopPolicy, OraclePolicy, bash_reply, done_reply
from taskforge.agent.shell import PersistentShell
from taskforge.sandbox.docker import DockerSandbox
from taskforge.tasks import load_task
from taskforge.trial import TRANSCRIPT_FILE, read_transcript, run_episode_trial

from .conftest import FIXTURES

HELLO = FIXTURES / "harbor-hello"


class ScriptedPolicy:
    """Replies from a list (PolicyReply, or a str command); done when the list runs out."""

    name = "scripted"

    def __init__(self, replies: list[PolicyReply | str]):
        self.replies = replies
        self.seen: list[list[dict[str, Any]]] = []

    def next_action(self, messages):
        self.seen.append(messages)
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn >= len(self.replies):
            return done_reply(turn)
        reply = self.replies[turn]
        return bash_reply(reply, turn) if isinstance(reply, str) else reply


@pytest.fixture(scope="module")
def sandbox(base_image):
    with DockerSandbox(base_image) as box:
        yield box


@pytest.fixture(scope="module")
def hello_task():
    return load_task(HELLO)


def test_shell_keeps_directory_and_exported_variables_but_not_plain_ones(sandbox):
    shell = PersistentShell(sandbox)
    shell.reset()
    assert (
        shell.run("mkdir -p /tmp/work/sub && cd /tmp/work/sub && export GREETING='hi there' && PLAIN=1", 10).exit_code
        == 0
    )
    result = shell.run('pwd; echo "$GREETING"; echo "[${PLAIN:-}]"', 10)
    assert result.output == "/tmp/work/sub\nhi there\n[]\n"
    # `exit N` ends the command but the state is still saved; the exit code comes back.
    assert shell.run("cd /tmp && export AFTER=exit && exit 7", 10).exit_code == 7
    assert shell.run('pwd; echo "$AFTER"', 10).output == "/tmp\nexit\n"
    # A syntax error is the command's own failure, reported like bash reports it.
    broken = shell.run("if then", 10)
    assert broken.exit_code == 2 and "syntax error" in broken.output
    # Internals of the harness do not leak into the agent's environment.
    assert "TF_" not in shell.run("env", 10).output


def test_loop_runs_commands_and_keeps_warnings_out_of_the_output(sandbox, hello_task):
    config = EpisodeConfig(max_turns=8, command_timeout_sec=1.0, max_output_chars=200)
    policy = ScriptedPolicy(
        [
            "cd /tmp && export N=5",
            'seq 1 "$((N * 1000))"',  # long output: head and tail only
            "sleep 30",  # killed at the 1 s command timeout
            PolicyReply(text="I am not sure what to do."),  # no action at all
            PolicyReply(tool_call=ToolCall(id="c1", name="bash", arguments='{"command": "ls", ')),  # broken JSON
            "echo oops >&2; false",
        ]
    )
    PersistentShell(sandbox).reset()
    episode = run_episode(hello_task, sandbox, policy, config, timeout_sec=60)
    assert episode.stop_reason == "done"
    cd, seq, sleep, chatter, broken, fail, finish = episode.turns
    assert (cd.action, cd.exit_code, cd.output, cd.warnings) == ("command", 0, "", [])

    assert seq.output_truncated and seq.output.startswith("1\n2\n3\n") and seq.output.endswith("4999\n5000\n")
    assert len(seq.output) == 200 and "truncated" not in seq.output  # the cut is reported, not spliced in
    assert seq.output_chars == len("".join(f"{i}\n" for i in range(1, 5001)))
    assert seq.warnings == [
        f"[harness] output truncated: showing the first 100 and last 100 characters of {seq.output_chars} characters"
    ]

    assert sleep.timed_out and sleep.exit_code == 124
    assert sleep.warnings == ["[harness] the command timed out after 1 s and was killed"]

    assert chatter.action == "none" and chatter.exit_code is None and chatter.output == ""
    assert "no action found" in chatter.warnings[0]
    assert broken.action == "none" and "not valid JSON" in broken.warnings[0]

    assert (fail.exit_code, fail.output, fail.warnings) == (1, "oops\n", [])
    assert finish.action == "done"

    # The policy saw the observations it is recorded with: body and warning apart, content = both.
    messages = episode.messages()
    assert policy.seen[-1] == messages[: len(policy.seen[-1])]
    seq_observation = messages[5]
    assert seq_observation["role"] == "tool" and seq_observation["tool_call_id"] == "call_bash_1"
    assert seq_observation["observation"] == seq.output + "[exit code: 0]"
    assert seq_observation["warning"] == seq.warnings[0]
    assert seq_observation["content"] == seq.warnings[0] + "\n" + seq_observation["observation"]
    chatter_observation = messages[9]
    assert chatter_observation["role"] == "user" and chatter_observation["observation"] == ""  # no tool call to answer
    assert chatter_observation["content"] == chatter.warnings[0] + "\n"


def test_observation_content_is_its_layout_joined():
    assert observation_layout("out\n[exit code: 0]", None) == [("out\n[exit code: 0]", "body")]
    assert observation_layout("", "[harness] w") == [("[harness] w", "warning"), ("\n", "separator"), ("", "body")]
    for body, warning in [("out\n[exit code: 0]", None), ("", "[harness] w"), ("x", "[harness] a\n[harness] b")]:
        assert render_observation(body, warning) == "".join(text for text, _ in observation_layout(body, warning))
    assert render_observation("x", "[harness] a") == "[harness] a\nx"


def test_message_layout_roles_and_api_view(sandbox, hello_task):
    policy = ScriptedPolicy(
        ["echo hi", PolicyReply(text="Checking.\n```bash\ncat /etc/hostname >/dev/null; echo ok\n```")]
    )
    episode = run_episode(hello_task, sandbox, policy, EpisodeConfig(max_turns=5), timeout_sec=60)
    messages = episode.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert messages[0]["content"] == episode.system_prompt and "at most 5 replies" in episode.system_prompt
    assert messages[1]["content"] == hello_task.instruction
    assert messages[2]["tool_calls"][0]["function"]["name"] == "bash" and messages[2]["content"] is None
    assert messages[4] == {
        "role": "assistant",
        "content": "Checking.\n```bash\ncat /etc/hostname >/dev/null; echo ok\n```",
        "turn": 1,
    }
    assert messages[5]["observation"] == "ok\n[exit code: 0]" and messages[5]["warning"] is None
    assert messages[6]["tool_calls"][0]["function"]["name"] == "done"
    # What goes over the wire carries only the API's own keys.
    assert {key for m in api_messages(messages) for key in m} == {"role", "content", "tool_calls", "tool_call_id"}


@pytest.mark.parametrize(
    ("reply", "kind", "command", "warning"),
    [
        (
            PolicyReply(tool_call=ToolCall(id="a", name="bash", arguments='{"command": "ls -la", "timeout_sec": 5}')),
            "command",
            "ls -la",
            None,
        ),
        (PolicyReply(tool_call=ToolCall(id="a", name="done")), "done", None, None),
        (
            PolicyReply(tool_call=ToolCall(id="a", name="python", arguments="{}")),
            "none",
            None,
            "there is no tool 'python'",
        ),
        (
            PolicyReply(tool_call=ToolCall(id="a", name="bash", arguments='{"cmd": "ls"}')),
            "none",
            None,
            'needs a non-empty "command"',
        ),
        (PolicyReply(text="Let me look.\n```bash\nls /app\n```\n"), "command", "ls /app", None),
        (
            PolicyReply(text="```sh\necho a\n```\nthen\n```bash\necho b\n```"),
            "command",
            "echo a",
            "2 command blocks; only the first ran",
        ),
        (PolicyReply(text="All set.\n\nDONE"), "done", None, None),
        (PolicyReply(text="```bash\necho final\n```\nDONE"), "command", "echo final", "DONE was ignored"),
        (PolicyReply(text="```python\nprint(1)\n```"), "none", None, "no action found"),
    ],
)
def test_parse_action(reply, kind, command, warning):
    action = parse_action(reply)
    assert (action.kind, action.command) == (kind, command)
    if warning is None:
        assert action.warnings == []
    else:
        assert any(warning in w and w.startswith("[harness] ") for w in action.warnings), action.warnings


class RaisingPolicy:
    name = "raising"

    def next_action(self, messages):
        raise PolicyError("the model server is on fire")


class CountingUsagePolicy:
    """Runs `true` forever; each call's prompt is 400 tokens longer than the last (as a chat grows)."""

    name = "counting"

    def next_action(self, messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        reply = bash_reply("true", turn)
        reply.usage = TokenUsage(input_tokens=400 * (turn + 1), output_tokens=10)
        return reply


def test_stop_reasons(sandbox, hello_task):
    endless = ScriptedPolicy(["true"] * 10)
    assert (
        run_episode(hello_task, sandbox, endless, EpisodeConfig(max_turns=3), timeout_sec=60).stop_reason == "max_turns"
    )

    slow = ScriptedPolicy(["sleep 20", "true"])
    timed = run_episode(hello_task, sandbox, slow, EpisodeConfig(max_turns=5), timeout_sec=2)
    assert timed.stop_reason == "agent_timeout" and timed.turns[0].timed_out
    assert "time budget ran out" in timed.turns[0].warnings[0] and timed.seconds < 10

    failing = run_episode(hello_task, sandbox, RaisingPolicy(), EpisodeConfig(), timeout_sec=60)
    assert (failing.stop_reason, failing.error_type, failing.turns) == ("policy_error", "PolicyError", [])
    assert failing.error_message == "the model server is on fire"

    full = run_episode(
        hello_task, sandbox, CountingUsagePolicy(), EpisodeConfig(max_turns=10, max_context_tokens=1000), timeout_sec=60
    )
    assert full.stop_reason == "context_exceeded" and len(full.turns) == 3  # 410, 810, 1210 >= 1000


def test_oracle_and_nop_episodes_as_trials(hello_task, tmp_path, base_image):
    record, episode = run_episode_trial(hello_task, OraclePolicy(), tmp_path / "oracle")
    assert (record.reward, record.stop_reason, record.n_turns) == (1.0, "done", 2)
    assert episode.turns[0].command == "bash /solution/solve.sh" and episode.turns[0].exit_code == 0
    saved = read_transcript(tmp_path / "oracle" / TRANSCRIPT_FILE)
    assert saved.reward == 1.0 and saved.turns == episode.turns and saved.stop_reason == "done"
    harbor_result = json.loads((tmp_path / "oracle" / "result.json").read_text())
    assert harbor_result["agent_info"]["name"] == "oracle"
    assert harbor_result["agent_result"]["metadata"]["stop_reason"] == "done"
    assert harbor_result["verifier_result"]["rewards"] == {"reward": 1.0}

    record, episode = run_episode_trial(hello_task, NopPolicy(), tmp_path / "nop")
    assert (record.reward, record.stop_reason, record.n_turns, record.error_type) == (0.0, "done", 1, None)
    assert Path(record.trial_dir, TRANSCRIPT_FILE).is_file()
