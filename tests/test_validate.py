"""`taskforge validate` end to end against the real Docker engine, bad input included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskforge.trial import run_trial
from taskforge.validate import validate_tasks

from .conftest import FIXTURES, REPO_ROOT


@pytest.fixture
def bad_and_good_tasks(write_hello, base_image):
    """One task per failure reason validate must name, plus a good one (whose near-miss is caught)."""
    good = write_hello("set/good", near_misses={"wrong_word": "echo forget > /app/out.txt"})
    malformed = write_hello("set/malformed_toml")
    (malformed / "task.toml").write_text("[agent\ntimeout_sec = 1\n")
    no_build = write_hello("set/build_fails", dockerfile_steps=["RUN exit 7"])
    no_reward = write_hello("set/no_reward")
    (no_reward / "tests" / "test.sh").write_text("#!/bin/bash\npython3 -m pytest -q /tests\n")
    wrong_oracle = write_hello("set/oracle_wrong", solution="echo wrong > /app/out.txt")
    trivial_tests = write_hello("set/nop_passes", tests={"test_outputs.py": "def test_nothing():\n    assert True\n"})
    slow_oracle = write_hello("set/oracle_slow", solution="sleep 30; echo forged > /app/out.txt", agent_timeout_sec=2.0)
    # The tests strip the line, so a solution that skips the stated newline passes them.
    lax_tests = write_hello(
        "set/near_miss_passes",
        near_misses={"wrong_word": "echo forget > /app/out.txt", "no_newline": "printf forged > /app/out.txt"},
    )
    return {
        "passed": good,
        "invalid_task": malformed,
        "build_failed": no_build,
        "verifier_error": no_reward,
        "oracle_failed": wrong_oracle,
        "nop_passed": trivial_tests,
        "timeout": slow_oracle,
        "near_miss_passed": lax_tests,
    }


def test_validate_names_the_reason_for_each_failure_and_resumes(tmp_path, bad_and_good_tasks):
    run_dir = tmp_path / "runs" / "v1"
    results = validate_tasks(list(bad_and_good_tasks.values()), run_dir, jobs=2)
    by_dir = {r.task_path: r for r in results}
    for expected, task_dir in bad_and_good_tasks.items():
        assert by_dir[str(task_dir.resolve())].status == expected, (expected, by_dir[str(task_dir.resolve())])
    good = by_dir[str(bad_and_good_tasks["passed"].resolve())]
    assert (good.oracle_reward, good.nop_reward, good.near_miss_rewards) == (1.0, 0.0, {"wrong_word": 0.0})
    lax = by_dir[str(bad_and_good_tasks["near_miss_passed"].resolve())]
    assert lax.near_miss_rewards == {"no_newline": 1.0, "wrong_word": 0.0}
    # Near-misses run only for a task whose oracle and nop are right.
    assert all(not r.near_miss_rewards for r in results if r.status not in ("passed", "near_miss_passed"))
    detail = {status: by_dir[str(path.resolve())].detail for status, path in bad_and_good_tasks.items()}
    assert (
        "Dockerfile failed to build: The command '/bin/sh -c exit 7' returned a non-zero code: 7"
        in detail["build_failed"]
    )
    assert "test.sh wrote neither /logs/verifier/reward.txt nor /logs/verifier/reward.json" in detail["verifier_error"]
    assert "oracle scored 0 (needs 1.0)" in detail["oracle_failed"]
    assert "nop scored 1 (needs 0.0)" in detail["nop_passed"]
    assert "agent ran past 2 s" in detail["timeout"]
    assert "not valid TOML" in detail["invalid_task"]
    assert "near-miss solution no_newline scored 1 (needs 0.0)" in detail["near_miss_passed"]

    # Harbor's trial layout and the ledger: one directory per (task, agent), even for same-named tasks
    result_files = list((run_dir / "trials").glob("*/result.json"))
    # 6 runnable tasks x (oracle, nop), the unbuildable task's oracle trial (its nop is not run), and
    # the 3 near-miss trials of the two tasks whose oracle and nop are right
    assert len(result_files) == 16
    from harbor.models.trial.result import TrialResult

    parsed = [TrialResult.model_validate_json(p.read_text()) for p in result_files]
    assert any(r.verifier_result and r.verifier_result.rewards == {"reward": 1.0} for r in parsed)
    ledger_lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    assert len(ledger_lines) == 2 * (len(bad_and_good_tasks) - 1) + 3  # the malformed task never ran
    agents = [json.loads(line)["agent"] for line in ledger_lines]
    near_miss_agents = sorted(a for a in agents if a.startswith("near_miss-"))
    assert near_miss_agents == ["near_miss-no_newline", "near_miss-wrong_word", "near_miss-wrong_word"]

    # Re-running resumes: nothing is redone, the outcome is the same.
    again = validate_tasks(list(bad_and_good_tasks.values()), run_dir, jobs=2)
    assert (run_dir / "ledger.jsonl").read_text().splitlines() == ledger_lines
    assert sorted((r.task_path, r.status) for r in again) == sorted((r.task_path, r.status) for r in results)


def test_tests_are_uploaded_only_after_the_agent(write_hello, base_image, tmp_path):
    from taskforge.agent.base import AgentOutcome
    from taskforge.tasks import load_task

    class Snoop:
        name, version = "snoop", "1"

        def run(self, task, sandbox, logs_dir, timeout_sec):
            seen = sandbox.exec("ls /tests /solution 2>&1; cat /logs/verifier/reward.txt 2>&1", 10).output
            sandbox.exec("mkdir -p /logs/verifier && echo 1 > /logs/verifier/reward.txt && echo forged > /tmp/x", 10)
            return AgentOutcome(metadata={"seen": seen})

    task = load_task(write_hello())
    record = run_trial(task, Snoop(), tmp_path / "trial")
    result = json.loads((tmp_path / "trial" / "result.json").read_text())
    seen = result["agent_result"]["metadata"]["seen"]
    assert "No such file or directory" in seen and "test_outputs.py" not in seen
    assert record.reward == 0.0  # the reward file the agent wrote was ignored


def test_validate_cli_exits_nonzero_with_a_summary(tmp_path, bad_and_good_tasks):
    command = [
        sys.executable,
        "-m",
        "taskforge.cli",
        "validate",
        str(bad_and_good_tasks["passed"]),
        str(bad_and_good_tasks["oracle_failed"]),
        "--runs-dir",
        str(tmp_path / "runs"),
        "-j",
        "2",
    ]
    env = {**os.environ, "COLUMNS": "250"}
    failed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env=env)
    assert failed.returncode == 1
    assert "oracle_failed" in failed.stdout and "1/2 tasks passed validation" in failed.stdout
    ok = subprocess.run(
        [*command[:5], *command[6:], "--no-near-misses"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env=env,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ledger = Path(re.search(r"Ledger: (\S+)", ok.stdout).group(1))
    assert sorted(json.loads(line)["agent"] for line in ledger.read_text().splitlines()) == ["nop", "oracle"]
    missing = subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "validate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_validate_accepts_a_hand_written_harbor_task(tmp_path, base_image):
    (result,) = validate_tasks([FIXTURES / "harbor-hello"], tmp_path / "run", jobs=1)
    assert result.status == "passed", result.detail
    assert (result.oracle_reward, result.nop_reward) == (1.0, 0.0)
