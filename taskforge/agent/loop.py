"""The agent loop: a policy acts in a sandbox for up to N turns; every turn is recorded.

    for each turn (at most config.max_turns):
        stop if the time budget or the context budget is spent
        reply  = policy.next_action(episode_messages(episode))
        action = parse_action(reply)            # a command, done, or nothing usable (+ warnings)
        record the turn; stop on done
        run the command in the persistent shell; record output, exit code and warnings

The policy sees exactly `episode_messages(episode)`: what the trainer reads back from the
transcript is what the policy was shown. Harness warnings never mix into the command output.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2

from taskforge.agent.episode import ActionKind, Episode, EpisodeConfig, StopReason, Turn, harness_warning
from taskforge.agent.policy import ContextLengthExceededError, Policy, PolicyConfigError, PolicyError, PolicyReply
from taskforge.agent.shell import CommandTooLongError, PersistentShell
from taskforge.sandbox.base import Sandbox, SandboxError, SandboxLimitError
from taskforge.tasks import TEMPLATES_DIR, Task

_FENCED_COMMAND = re.compile(r"```(?:bash|sh|shell)[ \t]*\n(.*?)```", re.DOTALL)
_DONE_LINE = re.compile(r"^\W*DONE\W*$", re.MULTILINE)
NO_ACTION_WARNING = (
    "no action found in your reply: call the bash tool (or write a ```bash block) to run a command, "
    "or call done (or reply DONE) when the task is complete"
)


def _now() -> datetime:
    return datetime.now(UTC)


@cache
def _system_template() -> jinja2.Template:
    return jinja2.Template(
        (TEMPLATES_DIR / "prompts" / "agent_system.md").read_text(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


def system_prompt(config: EpisodeConfig) -> str:
    if config.system_prompt is not None:
        return config.system_prompt
    return (
        _system_template()
        .render(
            max_turns=config.max_turns,
            command_timeout=f"{config.command_timeout_sec:g}",
            max_command_timeout=f"{config.max_command_timeout_sec:g}",
        )
        .strip()
    )


# ---------------------------------------------------------------------------------------------
# Reading an action out of a reply


@dataclass
class Action:
    kind: ActionKind
    command: str | None = None
    timeout_sec: float | None = None
    warnings: list[str] = field(default_factory=list)


def parse_action(reply: PolicyReply) -> Action:
    """The reply's one action: its tool call if it made one, else its first ```bash block or DONE."""
    if reply.tool_call is not None:
        return _action_from_tool_call(reply.tool_call.name, reply.tool_call.arguments)
    blocks = _FENCED_COMMAND.findall(reply.text)
    if blocks:
        warnings = []
        if len(blocks) > 1:
            warnings.append(
                harness_warning(
                    f"your reply had {len(blocks)} command blocks; only the first ran: one command per reply"
                )
            )
        if _DONE_LINE.search(reply.text):
            warnings.append(
                harness_warning(
                    "DONE was ignored because the reply also had a command; "
                    "reply DONE on its own when the task is complete"
                )
            )
        command = blocks[0].strip("\n")
        if not command.strip():
            return Action("none", warnings=[*warnings, harness_warning("the ```bash block is empty")])
        return Action("command", command, warnings=warnings)
    if _DONE_LINE.search(reply.text):
        return Action("done")
    return Action("none", warnings=[harness_warning(NO_ACTION_WARNING)])


def _action_from_tool_call(name: str, arguments: str) -> Action:
    if name == "done":
        return Action("done")
    if name != "bash":
        return Action(
            "none",
            warnings=[
                harness_warning(
                    f"there is no tool {name!r}: call bash to run a command or done when the task is complete"
                )
            ],
        )
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        return Action(
            "none",
            warnings=[
                harness_warning(
                    f"the bash call's arguments are not valid JSON ({exc.msg} at character {exc.pos}); "
                    'send {"command": "..."}'
                )
            ],
        )
    command = args.get("command") if isinstance(args, dict) else None
    if not isinstance(command, str) or not command.strip():
        return Action("none", warnings=[harness_warning('the bash call needs a non-empty "command" string')])
    timeout = args.get("timeout_sec")
    valid_timeout = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
    return Action("command", command, timeout_sec=float(timeout) if valid_timeout else None)


# ---------------------------------------------------------------------------------------------
# The loop


class _OutOfTime(Exception):
    """The episode's time budget ran out while the policy was thinking."""


def run_episode(
    task: Task,
    sandbox: Sandbox,
    policy: Policy,
    config: EpisodeConfig | None = None,
    *,
    timeout_sec: float | None = None,
) -> Episode:
    """Runs `policy` on `task` in a started `sandbox`; returns the finished Episode (reward unset).

    `timeout_sec` is the agent's time budget (default: the task's [agent] timeout_sec); the turn cap is
    the task's [metadata] max_turns when it sets one, else config.max_turns (`config_for_task`). Raises
    PolicyConfigError (bad key, unknown model): every episode would fail the same way.
    """
    config = config_for_task(config or EpisodeConfig(), task)
    budget = timeout_sec or task.agent_timeout_sec
    started = time.monotonic()
    deadline = started + budget
    episode = Episode(
        task_name=task.name,
        task_path=str(task.path),
        policy=policy.name,
        model=getattr(policy, "model_name", None),
        system_prompt=system_prompt(config),
        instruction=task.instruction,
        config=config,
        started_at=_now(),
    )
    setup = getattr(policy, "setup", None)
    if setup is not None:
        setup(task, sandbox)
    try:
        episode.stop_reason = _play(episode, policy, PersistentShell(sandbox), config, deadline)
    finally:
        episode.finished_at = _now()
        episode.seconds = time.monotonic() - started
    return episode


def config_for_task(config: EpisodeConfig, task: Task) -> EpisodeConfig:
    """The episode's settings on `task`: the task's own turn cap ([metadata] max_turns), when it sets one
    and config.task_max_turns allows it, replaces config.max_turns; the episode (and its system prompt)
    records the cap that applied."""
    wanted = task.max_turns if config.task_max_turns else None
    if wanted is None or wanted == config.max_turns:
        return config
    return config.model_copy(update={"max_turns": wanted})


def _play(
    episode: Episode, policy: Policy, shell: PersistentShell, config: EpisodeConfig, deadline: float
) -> StopReason:
    for index in range(config.max_turns):
        if _context_full(episode, config):
            return "context_exceeded"
        if time.monotonic() >= deadline:
            return "agent_timeout"

        turn_started, asked = _now(), time.monotonic()
        try:
            reply = _ask_before(deadline, policy, episode.messages())
        except _OutOfTime:
            return "agent_timeout"
        except ContextLengthExceededError as exc:
            _record_error(episode, exc)
            return "context_exceeded"
        except PolicyConfigError:
            raise
        except PolicyError as exc:
            _record_error(episode, exc)
            return "policy_error"

        action = parse_action(reply)
        turn = Turn(
            index=index,
            text=reply.text,
            tool_call=reply.tool_call,
            action=action.kind,
            command=action.command,
            warnings=[*reply.warnings, *action.warnings],
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            api_retries=reply.api_retries,
            started_at=turn_started,
            policy_seconds=time.monotonic() - asked,
        )
        episode.turns.append(turn)
        if action.kind == "done":
            return "done"
        if action.kind == "command":
            try:
                _run_command(turn, action, shell, config, deadline)
            except SandboxLimitError as exc:
                # The agent's own command broke its sandbox (kill -9 -1, a fork bomb): the episode
                # ends and is graded as it stands, not retried as an infrastructure failure.
                _record_error(episode, exc)
                return "sandbox_limit"
            except SandboxError as exc:
                _record_error(episode, exc)
                return "sandbox_error"
    return "max_turns"


def _context_full(episode: Episode, config: EpisodeConfig) -> bool:
    if config.max_context_tokens is None or not episode.turns:
        return False
    last = episode.turns[-1].usage
    return last.input_tokens + last.output_tokens >= config.max_context_tokens


def _ask_before(deadline: float, policy: Policy, messages: list[dict[str, Any]]) -> PolicyReply:
    """policy.next_action(messages), given up on at the deadline: left to finish in the background,
    after policy.cancel() when the policy has one."""
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box["reply"] = policy.next_action(messages)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=ask, name="taskforge-policy", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        cancel = getattr(policy, "cancel", None)  # optional: frees what the abandoned reply holds (a batch slot)
        if cancel is not None:
            cancel()
        raise _OutOfTime
    if "error" in box:
        raise box["error"]
    return box["reply"]


def _run_command(turn: Turn, action: Action, shell: PersistentShell, config: EpisodeConfig, deadline: float) -> None:
    wanted = min(action.timeout_sec or config.command_timeout_sec, config.max_command_timeout_sec)
    timeout = min(wanted, max(deadline - time.monotonic(), 1.0))
    ran = time.monotonic()
    try:
        result = shell.run(action.command or "", timeout)
    except CommandTooLongError as exc:
        turn.warnings.append(harness_warning(f"not run: {exc}"))
        return
    turn.exec_seconds = time.monotonic() - ran
    text = result.output
    turn.output, clipped = clip_middle(text, config.max_output_chars)
    turn.output_truncated = clipped or result.truncated
    turn.output_chars = result.original_size if result.truncated else len(text)
    turn.exit_code = result.exit_code
    turn.timed_out = result.timed_out
    if turn.output_truncated:
        if clipped:
            (head, tail), unit = _head_tail(config.max_output_chars), "characters"
        else:  # only the sandbox's byte cap applied
            (head, tail), unit = (shell.sandbox.head_bytes, shell.sandbox.tail_bytes), "bytes"
        total = f"{result.original_size} bytes" if result.truncated else f"{len(text)} characters"
        turn.warnings.append(
            harness_warning(f"output truncated: showing the first {head} and last {tail} {unit} of {total}")
        )
    if result.timed_out:
        why = " (the episode's time budget ran out)" if timeout < wanted else ""
        turn.warnings.append(harness_warning(f"the command timed out after {timeout:.4g} s and was killed{why}"))
    if result.exit_code == -1 and result.notices:
        turn.warnings.extend(harness_warning(notice) for notice in result.notices)


def _head_tail(limit: int) -> tuple[int, int]:
    head = limit // 2
    return head, limit - head


def clip_middle(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to its first and last characters (limit in all); True when something was cut."""
    if len(text) <= limit:
        return text, False
    head, tail = _head_tail(limit)
    return text[:head] + text[len(text) - tail :], True


def _record_error(episode: Episode, exc: BaseException) -> None:
    episode.error_type = type(exc).__name__
    episode.error_message = str(exc)
