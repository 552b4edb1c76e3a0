"""No exec and no run can outlive its bounds (issue 13): a command that stops its own exec wrapper
is killed by the host at its timeout plus a grace and recorded as a timeout, by the agent and by
the verifier; SIGTERM removes a run's containers as Ctrl-C does; the next run reaps what a killed
one left, even a run that starts no container. Real Docker, real `taskforge` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from taskforge.agent.scripted import NopAgent, OraclePolicy
from taskforge.runner import Ledger
from taskforge.sandbox.base import Resources
from taskforge.sandbox.docker import EXEC_GRACE_SEC, LABEL, LABEL_OWNER_HOST, LABEL_OWNER_PID, DockerSandbox
from taskforge.tasks import load_task, task_checksum
from taskforge.trial import TrialRecord, run_episode_trial, run_trial

from .conftest import REPO_ROOT, container_exists

ENV = {**os.environ, "COLUMNS": "250", "OPENAI_API_KEY": "unused"}
TIMEOUT_SEC = 1.0
# What the host needs past the deadline: one more exec to kill the stuck one, on a busy machine.
SLACK_SEC = 8.0
# A whole trial besides its stuck command: the container, uploads and the verifier.
TRIAL_SEC = 30.0

# `kill -STOP $PPID` stops GNU timeout (the command's parent), which the wrapper waits for; the
# loop stops every ancestor up to the wrapper shell (its parent is outside the container), however
# deep the command runs (under the agent's persistent shell, or bash running a script).
STOP_THE_TIMEOUT = "kill -STOP $PPID"
STOP_EVERY_ANCESTOR = "p=$PPID; while [ $p -gt 1 ]; do next=$(ps -o ppid= -p $p); kill -STOP $p; p=$next; done"


@pytest.fixture
def sandbox(base_image):
    with DockerSandbox(base_image, Resources(cpus=1, memory_mb=512, pids_limit=64)) as sb:
        yield sb


# ---------------------------------------------------------------------------------------------
# A command that stops its wrapper: the host kills it at timeout + grace


@pytest.mark.timeout(60)  # the unbounded exec hung here forever
@pytest.mark.parametrize("stop", [STOP_THE_TIMEOUT, STOP_EVERY_ANCESTOR], ids=["timeout", "every-ancestor"])
def test_an_exec_whose_command_stops_its_wrapper_is_killed_by_the_host(sandbox, stop):
    started = time.monotonic()
    result = sandbox.exec(f"echo before the stop; {stop}", TIMEOUT_SEC)
    elapsed = time.monotonic() - started
    assert TIMEOUT_SEC + EXEC_GRACE_SEC <= elapsed < TIMEOUT_SEC + EXEC_GRACE_SEC + SLACK_SEC, result
    assert result.timed_out and result.exit_code == 137
    assert result.output == "before the stop\n"  # recovered from the killed command
    (notice,) = result.notices
    assert "stopped answering" in notice and "killed by the host after" in notice, notice
    # Nothing of the killed exec is left (only this check's own GNU timeout), and the sandbox goes on working.
    left = sandbox.exec("echo $(ps -eo stat= | grep -c '^T') $(pgrep -c -x timeout)", 10)
    assert left.output.split() == ["0", "1"], sandbox.exec("ps -eo pid,ppid,stat,args", 10).output
    assert sandbox.exec("echo still usable", 10).output == "still usable\n"


@pytest.mark.timeout(60)
def test_an_agent_that_stops_its_wrapper_is_recorded_as_an_agent_timeout(write_hello, base_image, tmp_path):
    task_dir = write_hello(
        "stops-agent", solution=f"echo forged > /app/out.txt\n{STOP_EVERY_ANCESTOR}", agent_timeout_sec=TIMEOUT_SEC
    )
    record, episode = run_episode_trial(load_task(task_dir), OraclePolicy(), tmp_path / "trial")
    assert record.error_kind == "agent_timeout" and record.agent_timed_out, record
    assert episode.stop_reason == "agent_timeout" and episode.turns[0].timed_out
    assert record.reward == 1.0  # a timed-out agent is graded all the same: it had written the file
    assert record.seconds < TIMEOUT_SEC + EXEC_GRACE_SEC + TRIAL_SEC


@pytest.mark.timeout(60)
def test_a_verifier_that_stops_its_wrapper_is_recorded_as_a_verifier_timeout(write_hello, base_image, tmp_path):
    task_dir = write_hello("stops-verifier", verifier_timeout_sec=TIMEOUT_SEC)
    (task_dir / "tests" / "test.sh").write_text(
        f"#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n{STOP_EVERY_ANCESTOR}\n"
    )
    record = run_trial(load_task(task_dir), NopAgent(), tmp_path / "trial")
    assert record.error_kind == "verifier_timeout" and record.reward is None, record
    assert record.seconds < TIMEOUT_SEC + EXEC_GRACE_SEC + TRIAL_SEC


# ---------------------------------------------------------------------------------------------
# A killed run leaves no containers behind


def containers_of(pid: int) -> list[str]:
    listed = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            f"label={LABEL}",
            "--filter",
            f"label={LABEL_OWNER_PID}={pid}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_sigterm_removes_the_containers_of_a_running_validate(write_hello, base_image, tmp_path):
    task_dir = write_hello("slow", solution="sleep 120; echo forged > /app/out.txt")
    command = [sys.executable, "-m", "taskforge.cli", "validate", str(task_dir), "--runs-dir", str(tmp_path)]
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        run = subprocess.Popen(
            [*command, "--run", "v", "-j", "1"], stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO_ROOT, env=ENV
        )
    try:
        deadline = time.monotonic() + 45
        while not containers_of(run.pid):  # the oracle is sleeping in its container
            assert run.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # past the moment the container is created but not yet recorded as the run's
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        # It exited through SystemExit (so its finally blocks and atexit ran), not killed by the signal.
        assert run.returncode == 128 + signal.SIGTERM, stderr_path.read_text()
        deadline = time.monotonic() + 5
        while containers_of(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert containers_of(run.pid) == []
        # The interrupted trial is not a verdict: nothing (or only the untouched nop) is in the
        # ledger, so the next run runs the oracle again instead of calling the task broken.
        ledger = tmp_path / "v" / "ledger.jsonl"
        recorded = ledger.read_text().splitlines() if ledger.is_file() else []
        assert all('"agent":"oracle"' not in line.replace(" ", "") for line in recorded), recorded
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for container_id in containers_of(run.pid):
            subprocess.run(["docker", "rm", "-f", container_id], capture_output=True)


def test_the_next_run_reaps_a_dead_process_container_even_when_it_starts_none(
    write_hello, docker_engine, base_image, tmp_path
):
    task_dir = write_hello("judged")
    task = load_task(task_dir)
    # Both verdicts are in the run's ledger already: validating again starts no container.
    ledger = Ledger(tmp_path / "v" / "ledger.jsonl", TrialRecord)
    for agent, reward in (("oracle", 1.0), ("nop", 0.0)):
        ledger.append(
            TrialRecord(
                task_name=task.name,
                task_path=str(task.path),
                trial_name=f"judged__{agent}",
                agent=agent,
                task_checksum=task_checksum(task.path),
                reward=reward,
                rewards={"reward": reward},
                trial_dir=str(tmp_path / "v" / "trials" / f"judged__{agent}"),
                finished_at=datetime.now(UTC).isoformat(),
            )
        )
    gone = subprocess.Popen(["true"])
    gone.wait()
    labels = {LABEL: "1", LABEL_OWNER_PID: str(gone.pid), LABEL_OWNER_HOST: socket.gethostname()}
    orphan = docker_engine.api.create_container(base_image, ["sleep", "infinity"], labels=labels)["Id"]
    try:
        validated = subprocess.run(
            [
                sys.executable,
                "-m",
                "taskforge.cli",
                "validate",
                str(task_dir),
                "--run",
                "v",
                "--runs-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=ENV,
            timeout=60,
        )
        assert validated.returncode == 0, validated.stdout + validated.stderr
        assert "1/1 tasks passed validation" in validated.stdout.replace("\n", " ")
        assert len(ledger.load()) == 2  # served from the ledger: no trial ran
        assert not container_exists(orphan)
    finally:
        subprocess.run(["docker", "rm", "-f", orphan], capture_output=True)
