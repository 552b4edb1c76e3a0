"""`taskforge eval` and `taskforge env-ce` end to end: real HTTP, real Docker, the real tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from taskforge.testing.openai_server import ScriptedOpenAIServer
from taskforge.testing.scripts import competent

from .conftest import FIXTURES, REPO_ROOT

AGENT_TASKS = FIXTURES / "agent-tasks"
ENV = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "unused"}


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskforge.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
        env=ENV,
    )


def test_eval_of_an_api_model_reports_pass_at_k_and_stores_episodes(tmp_path, base_image):
    task_dirs = sorted(p for p in AGENT_TASKS.iterdir() if (p / "task.toml").is_file())
    with ScriptedOpenAIServer(competent(task_dirs), models=["solver"]) as server:
        completed = _cli(
            "eval",
            str(AGENT_TASKS),
            "--model",
            "solver",
            "--base-url",
            server.base_url,
            "-k",
            "2",
            "--run",
            "ev",
            "--runs-dir",
            str(tmp_path),
        )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((tmp_path / "ev" / "eval.json").read_text())
    overall = summary["overall"]
    assert (overall["n_tasks"], overall["n_trials"]) == (len(task_dirs), 2 * len(task_dirs))
    assert overall["pass_at_1"] == 1.0 and overall["pass_at_k"]["2"] == 1.0
    assert overall["mean_turns"] == 2.0  # the solution, then done
    assert overall["mean_input_tokens"] > 0 and overall["mean_output_tokens"] > 0
    assert set(summary["by_domain"]) == {"data_processing", "system_operations"}
    assert len(list((tmp_path / "ev" / "trials").glob("*/transcript.json"))) == 2 * len(task_dirs)
    assert "pass@1" in completed.stdout and "100.0%" in completed.stdout

    # the same command again resumes: no attempt is repeated, no request is sent
    with ScriptedOpenAIServer(competent(task_dirs), models=["solver"]) as server:
        again = _cli(
            "eval",
            str(AGENT_TASKS),
            "--model",
            "solver",
            "--base-url",
            server.base_url,
            "-k",
            "2",
            "--run",
            "ev",
            "--runs-dir",
            str(tmp_path),
        )
        assert server.requests == []
    assert again.returncode == 0
    assert len((tmp_path / "ev" / "ledger.jsonl").read_text().splitlines()) == 2 * len(task_dirs)


def test_eval_of_a_checkpoint_with_held_out_env_ce(tmp_path, base_image):
    from trainer.sft import SFTConfig, collect_demonstrations

    task_dirs = sorted(p for p in AGENT_TASKS.iterdir() if (p / "task.toml").is_file())
    held_out = tmp_path / "held-out"
    assert collect_demonstrations(task_dirs, held_out, SFTConfig())  # another policy's episodes

    completed = _cli(
        "eval",
        str(AGENT_TASKS),
        "--policy",
        "tiny",
        "-k",
        "1",
        "--max-turns",
        "2",
        "--max-tokens",
        "16",
        "--env-ce-on",
        str(held_out),
        "--run",
        "tiny",
        "--runs-dir",
        str(tmp_path),
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    env_ce = json.loads((tmp_path / "tiny" / "env_ce.json").read_text())
    assert 5.0 < env_ce["after"] < 12.0  # an untrained 8k-vocab model: about ln(8192) = 9 nats/token
    assert env_ce["n_sequences"] == len(task_dirs)
    summary = json.loads((tmp_path / "tiny" / "eval.json").read_text())
    assert summary["overall"]["n_trials"] == len(task_dirs)
    assert summary["overall"]["pass_at_1"] == 0.0

    scored = _cli("env-ce", "tiny", str(held_out), "--before", "tiny")
    assert scored.returncode == 0, scored.stderr
    assert f"env CE {env_ce['after']:.4f}" in scored.stdout and f"before: {env_ce['after']:.4f}" in scored.stdout


def test_eval_rejects_ambiguous_or_missing_policy(tmp_path):
    both = _cli("eval", str(AGENT_TASKS), "--policy", "tiny", "--model", "m")
    assert both.returncode == 2 and "exactly one of --policy" in both.stderr
    missing = _cli("eval", str(tmp_path / "nope"), "--policy", "tiny")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_tool_call_transcripts_become_plain_text_actions(tmp_path, base_image):
    """Episodes of an API model in tool mode are scored with their commands as actions."""
    from taskforge.agent.episode import Episode
    from trainer.model import load_policy
    from trainer.transcripts import rollout_from_episode

    task_dirs = sorted(p for p in AGENT_TASKS.iterdir() if (p / "task.toml").is_file())
    with ScriptedOpenAIServer(competent(task_dirs), models=["solver"]) as server:
        completed = _cli(
            "eval",
            str(task_dirs[0]),
            "--model",
            "solver",
            "--base-url",
            server.base_url,
            "--run",
            "tools",
            "--runs-dir",
            str(tmp_path),
        )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (transcript,) = (tmp_path / "tools" / "trials").glob("*/transcript.json")
    episode = Episode.model_validate_json(transcript.read_text())
    assert episode.turns[0].tool_call is not None and episode.turns[0].command
    _, tokenizer = load_policy("tiny")
    rollout = rollout_from_episode(tokenizer, episode)
    actions = tokenizer.decode([t for t, a in zip(rollout.token_ids, rollout.action_mask, strict=True) if a])
    assert episode.turns[0].command in actions and "DONE" in actions
    assert any(rollout.observation_mask)
