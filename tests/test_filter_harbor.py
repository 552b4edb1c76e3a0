"""`taskforge filter --backend harbor`: Harbor's Job API runs terminus-2 against the scripted server
(speaking terminus-2's JSON), and the results come back into our ledger and outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from taskforge.runner import Ledger
from taskforge.tasks import task_checksum
from taskforge.testing.openai_server import ScriptedOpenAIServer
from taskforge.testing.scripts import competent
from taskforge.trial import TrialRecord

from .conftest import FIXTURES, REPO_ROOT


@pytest.mark.harbor
def test_harbor_backend_filters_with_terminus_2(tmp_path, base_image):
    task_set = tmp_path / "set"
    shutil.copytree(FIXTURES / "agent-tasks", task_set)
    # count-lines asks for its own turn cap: Harbor gives one agent config to a job, so it runs in a job of its own
    toml = task_set / "count-lines" / "task.toml"
    toml.write_text(
        toml.read_text().replace('generator_version = "fixture"', 'generator_version = "fixture"\nmax_turns = 6')
    )
    runs = tmp_path / "runs"
    # terminus-2 gets count-lines' solution; service-config gets a command that fails.
    with ScriptedOpenAIServer(competent([task_set / "count-lines"])) as server:
        command = [
            sys.executable,
            "-m",
            "taskforge.cli",
            "filter",
            str(task_set),
            "--backend",
            "harbor",
            "--model",
            "test-model",
            "--base-url",
            server.base_url,
            "--attempts",
            "2",
            "-n",
            "2",
            "--runs-dir",
            str(runs),
            "--run",
            "hb",
        ]
        env = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "anything"}
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        requests = list(server.requests)
        # Running the same command again resumes the finished Harbor job: no new model calls.
        again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert len(server.requests) == len(requests)

    # terminus-2 spoke its own protocol (no tools; JSON replies) to the same endpoint.
    assert requests and all(not r.tools and r.model == "test-model" for r in requests)
    assert "kept 1 of 2 tasks" in completed.stdout

    run_dir = runs / "hb"
    records = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
    assert sorted((r.task_name, r.attempt) for r in records) == [
        (f"taskforge-fixtures/{name}", i) for name in ("count-lines", "service-config") for i in range(2)
    ]
    rewards = {r.task_name: [] for r in records}
    for r in records:
        rewards[r.task_name].append(r.reward)
        assert r.agent == "terminus-2" and r.n_input_tokens > 0 and r.n_output_tokens > 0 and r.n_turns >= 2
        trial_dir = Path(r.trial_dir)
        own_cap = r.task_name == "taskforge-fixtures/count-lines"
        assert trial_dir.parent == run_dir / ("trials-turns6" if own_cap else "trials")
        result = json.loads((trial_dir / "result.json").read_text())
        assert result["agent_result"]["n_input_tokens"] == r.n_input_tokens
        assert result["config"]["agent"]["kwargs"]["max_turns"] == (6 if own_cap else 16)
        assert (trial_dir / "agent" / "trajectory.json").is_file()
    assert rewards == {"taskforge-fixtures/count-lines": [1.0, 1.0], "taskforge-fixtures/service-config": [0.0, 0.0]}

    kept = json.loads((task_set / "kept.json").read_text())
    assert [t["task_name"] for t in kept["kept"]] == ["taskforge-fixtures/count-lines"] and kept["backend"] == "harbor"
    assert kept["harbor_env"] == "docker"
    # The same feedback as the docker backend: the measured block, which the rerun above did not trip over.
    measured = tomllib.loads((task_set / "count-lines" / "task.toml").read_text())["metadata"]["measured"]
    assert (measured["difficulty"], measured["n_passed"], measured["n_attempts"]) == ("easy", 2, 2)
    assert {r.task_checksum for r in records} == {
        task_checksum(task_set / n) for n in ("count-lines", "service-config")
    }
