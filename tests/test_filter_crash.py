"""kill -9 in the middle of `taskforge filter`, then the same command again: finished attempts are
not repeated, none is lost or counted twice, and the killed run's containers are removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskforge.runner import Ledger
from taskforge.testing.openai_server import ScriptedOpenAIServer, Stall
from taskforge.testing.scripts import competent
from taskforge.trial import TrialRecord

from .conftest import FIXTURES, REPO_ROOT

ATTEMPTS = 5


def containers_of(pid: int) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=taskforge.owner_pid={pid}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def ledger_lines(run_dir: Path) -> list[str]:
    path = run_dir / "ledger.jsonl"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_kill_9_mid_run_then_rerun_records_each_attempt_exactly_once(tmp_path, base_image):
    task_set = tmp_path / "set"
    shutil.copytree(FIXTURES / "agent-tasks", task_set)
    runs = tmp_path / "runs"
    task_dirs = sorted(p for p in task_set.iterdir() if (p / "task.toml").is_file())

    slow_competent = competent(task_dirs)  # each reply takes 0.5 s, so the kill lands mid-run

    with ScriptedOpenAIServer(lambda request: Stall(0.5, slow_competent(request))) as server:
        command = [
            sys.executable,
            "-m",
            "taskforge.cli",
            "filter",
            str(task_set),
            "--model",
            "test-model",
            "--base-url",
            server.base_url,
            "--attempts",
            str(ATTEMPTS),
            "-n",
            "2",
            "--runs-dir",
            str(runs),
            "--run",
            "crash",
        ]
        first = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        run_dir = runs / "crash"
        deadline = time.monotonic() + 120
        while len(ledger_lines(run_dir)) < 3 and time.monotonic() < deadline:
            assert first.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        in_flight = containers_of(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = ledger_lines(run_dir)
        assert 3 <= len(before) < 2 * ATTEMPTS, "the kill did not land in the middle of the run"
        assert in_flight, "no attempt was in flight at the kill"
        assert containers_of(first.pid), (
            "kill -9 leaves the in-flight containers behind (until the next run reaps them)"
        )

        second = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = second.communicate(timeout=300)
        assert second.returncode == 0, stderr[-3000:]

    after = ledger_lines(run_dir)
    assert after[: len(before)] == before, "finished attempts were rewritten"
    records = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
    keys = [(r.task_path, r.attempt) for r in records]
    assert len(keys) == len(set(keys)), "an attempt was recorded twice"
    assert set(keys) == {(str(d.resolve()), i) for d in task_dirs for i in range(ATTEMPTS)}, "an attempt is missing"
    assert all(r.reward == 1.0 for r in records)
    assert all(
        Path(r.trial_dir, "transcript.json").is_file() and Path(r.trial_dir, "result.json").is_file() for r in records
    )
    # The rerun reaped the killed run's containers, and removed its own on exit.
    assert containers_of(first.pid) == [] and containers_of(second.pid) == []
    assert "resuming: " in stderr and f"{2 * ATTEMPTS}/{2 * ATTEMPTS} attempts passed" in stderr
