"""Generated tasks in the real Docker engine: one task of every family validates (oracle 1, nop 0),
agents that cheat score 0 (near-miss answers, forged reward files, a daemon rewriting them), and
Harbor itself runs the committed sample through its registry.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskforge.agent.base import AgentOutcome
from taskforge.forge.families import FAMILIES
from taskforge.tasks import Task, load_task
from taskforge.trial import run_trial

from .test_near_miss import MIN_NEAR_MISSES

pytestmark = pytest.mark.docker

SAMPLE = Path(__file__).resolve().parent.parent / "tasks" / "sample"
MANIFEST = [json.loads(line) for line in (SAMPLE / "manifest.jsonl").read_text().splitlines()]
NEAR_MISS_FAMILIES = [
    "csv_groupby",
    "json_rollup",
    "sqlite_report",
    "access_log_report",
    "log_level_window",
    "disk_usage_report",
]


def sample_task(family: str) -> Task:
    row = next(r for r in MANIFEST if r["family"] == family)
    return load_task(SAMPLE / row["path"])


# Changes one number in each output file the tests read: the answer keeps its format and is
# almost right, so only tests that check the computed values can fail it.
PERTURB = r"""
import csv, io, json, os, sys

def bump_json(node):
    if isinstance(node, bool):
        return node, False
    if isinstance(node, (int, float)):
        return node + 1, True
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        new, done = bump_json(value)
        if done:
            node[key] = new
            return node, True
    return node, False

for path in sys.argv[1:]:
    if not os.path.isfile(path):
        continue
    try:
        text = open(path).read()
    except UnicodeDecodeError:  # a database or archive: leave it
        continue
    if path.endswith(".json"):
        data, _ = bump_json(json.loads(text))
        open(path, "w").write(json.dumps(data))
    elif path.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        for row in reversed(rows[1:]):
            for i in reversed(range(len(row))):
                try:
                    row[i] = str(float(row[i]) + 1)
                    break
                except ValueError:
                    continue
            else:
                continue
            break
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        open(path, "w").write(out.getvalue())
    else:
        lines = text.splitlines()
        open(path, "w").write("\n".join(lines[:-1]) + "\n")
"""


class NearMissAgent:
    """Runs the reference solution, then nudges one number in every output file."""

    name = "near-miss"
    version = "1.0"

    def run(self, task: Task, sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        sandbox.upload_dir(task.solution_dir, "/solution")
        solved = sandbox.exec("bash /solution/solve.sh", timeout_sec)
        outputs = " ".join(shlex.quote(p) for p in task.metadata["outputs"].split())
        nudged = sandbox.exec(f"python3 -c {shlex.quote(PERTURB)} {outputs}", 60)
        logs_dir.mkdir(parents=True, exist_ok=True)
        (logs_dir / "near-miss.txt").write_bytes(solved.output_bytes + b"\n---\n" + nudged.output_bytes)
        return AgentOutcome(metadata={"solve_exit": solved.exit_code, "nudge_exit": nudged.exit_code})


class RewardForger:
    """Does not attempt the task; writes a perfect reward where Harbor reads it."""

    name = "reward-forger"
    version = "1.0"
    solve_first = False

    def run(self, task: Task, sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        if self.solve_first:
            sandbox.upload_dir(task.solution_dir, "/solution")
            sandbox.exec("bash /solution/solve.sh", timeout_sec)
        value = 0 if self.solve_first else 1
        forged = sandbox.exec(
            f"mkdir -p /logs/verifier && echo {value} > /logs/verifier/reward.txt "
            f"&& echo '{{\"reward\": {value}}}' > /logs/verifier/reward.json",
            30,
        )
        return AgentOutcome(metadata={"exit": forged.exit_code})


class SolveThenForgeZero(RewardForger):
    """Solves the task, then leaves reward 0 behind: the verifier's own verdict must win."""

    name = "solve-then-forge-zero"
    solve_first = True


class RewardDaemon:
    """Leaves a background process that keeps rewriting the reward file during verification."""

    name = "reward-daemon"
    version = "1.0"

    def run(self, task: Task, sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        loop = "while true; do mkdir -p /logs/verifier; echo 1 > /logs/verifier/reward.txt; sleep 0.05; done"
        started = sandbox.exec(
            f"nohup setsid bash -c {shlex.quote(loop)} >/dev/null 2>&1 & sleep 0.3; cat /logs/verifier/reward.txt", 30
        )
        return AgentOutcome(metadata={"output": started.output.strip()})


def test_one_task_of_every_family_validates(family_validation):
    """Oracle 1, nop 0, and every near-miss solution 0 (issue 15): one validate call over one task per
    family (conftest.family_validation, shared with test_services and test_diagnosis)."""
    validation = list(family_validation.values())
    assert set(family_validation) == set(FAMILIES)
    failed = [f"{r.task_name}: {r.status} {r.detail}" for r in validation if not r.passed]
    assert not failed, "\n".join(failed)
    assert all(r.oracle_reward == 1.0 and r.nop_reward == 0.0 for r in validation)
    few = [
        f"{r.task_name}: near-misses {r.near_miss_rewards}"
        for r in validation
        if len(r.near_miss_rewards) < MIN_NEAR_MISSES
    ]
    assert not few, "\n".join(few)
    assert all(reward == 0.0 for r in validation for reward in r.near_miss_rewards.values())


@pytest.mark.parametrize("family", NEAR_MISS_FAMILIES)
def test_near_miss_answers_score_zero(family, tmp_path, base_image):
    task = sample_task(family)
    record = run_trial(task, NearMissAgent(), tmp_path / "trial")
    assert record.error_type is None, record.error_message
    agent = json.loads((tmp_path / "trial" / "result.json").read_text())["agent_result"]["metadata"]
    assert agent == {"solve_exit": 0, "nudge_exit": 0}, agent
    stdout = (tmp_path / "trial" / "verifier" / "test-stdout.txt").read_text()
    assert record.reward == 0.0, f"a nudged answer passed the tests of {task.name}:\n{stdout[-2000:]}"
    assert "failed" in stdout and "does not exist" not in stdout, "the answer must fail on its values, not its absence"


def test_prewritten_reward_files_are_ignored(tmp_path, base_image):
    # Every generated task runs the same tests/test.sh template: one family proves it for all.
    task = sample_task("csv_join")
    forged = run_trial(task, RewardForger(), tmp_path / "forged")
    assert forged.error_type is None and forged.reward == 0.0, f"a forged reward file counted: {forged.reward}"
    honest = run_trial(task, SolveThenForgeZero(), tmp_path / "honest")
    assert honest.error_type is None and honest.reward == 1.0, (
        "the verifier's verdict must replace the agent's reward file"
    )


def test_reward_rewriting_daemon_is_stopped(tmp_path, base_image):
    task = sample_task("cron_schedule")
    record = run_trial(task, RewardDaemon(), tmp_path / "daemon")
    assert record.error_type is None, record.error_message
    assert record.reward == 0.0, "a background process rewrote the reward file after the verifier"


@pytest.mark.harbor
def test_harbor_runs_the_sample_through_its_registry(tmp_path, base_image):
    """`harbor run --registry-path registry.json -d taskforge@<version>` from inside the set, offline."""
    harbor = shutil.which("harbor") or str(Path(sys.executable).parent / "harbor")
    dataset = json.loads((SAMPLE / "registry.json").read_text())[0]
    ref = f"{dataset['name']}@{dataset['version']}"
    env = {**os.environ, "HARBOR_TELEMETRY": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [
            harbor,
            "run",
            "--registry-path",
            "registry.json",
            "-d",
            ref,
            "-a",
            "oracle",
            "-l",
            "1",
            "-n",
            "1",
            "-o",
            str(tmp_path),
            "--job-name",
            "forge-sample",
            "-y",
            "-q",
        ],
        cwd=SAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "forge-sample" / "result.json").read_text())
    stats = result["stats"]
    assert stats["n_completed_trials"] == 1 and stats["n_errored_trials"] == 0, stats
    (evals,) = stats["evals"].values()
    assert evals["metrics"][0]["mean"] == 1.0, evals
