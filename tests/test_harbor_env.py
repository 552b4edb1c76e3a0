"""`--harbor-env` with `--backend harbor`: Harbor's environment type reaches the JobConfig, a cloud
sandbox without its credentials is refused before any trial, and the docker environment runs for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskforge.agent.openai_policy import ChatConfig
from taskforge.harbor_backend import (
    AttemptPlan,
    HarborEnvError,
    check_harbor_env,
    harbor_env_names,
    job_config,
    validate_job_config,
)
from taskforge.runner import Ledger
from taskforge.tasks import load_task
from taskforge.testing.openai_server import ScriptedOpenAIServer
from taskforge.testing.scripts import competent
from taskforge.trial import TrialRecord

from .conftest import FIXTURES, REPO_ROOT

# Harbor's own credential variables (read from each environment's preflight), cleared for these tests.
CLOUD_CREDENTIALS = (
    "DAYTONA_API_KEY",
    "DAYTONA_JWT_TOKEN",
    "DAYTONA_ORGANIZATION_ID",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "E2B_API_KEY",
    "RUNLOOP_API_KEY",
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_CREDENTIALS}
    return {**env, "COLUMNS": "200", "OPENAI_API_KEY": "anything", **extra}


def _filter(task_path: Path, runs: Path, *args: str, base_url: str = "http://127.0.0.1:9/v1", env=None):
    command = [
        sys.executable,
        "-m",
        "taskforge.cli",
        "filter",
        str(task_path),
        "--backend",
        "harbor",
        "--model",
        "test-model",
        "--base-url",
        base_url,
        "--attempts",
        "1",
        "-n",
        "1",
        "--runs-dir",
        str(runs),
        "--no-write-measured",
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env or _env())


def _eval(task_path: Path, runs: Path, *args: str, base_url: str = "http://127.0.0.1:9/v1", env=None):
    command = [sys.executable, "-m", "taskforge.cli", "eval", str(task_path), "--backend", "harbor"]
    command += ["--model", "test-model", "--base-url", base_url, "-k", "1", "-n", "1", "--runs-dir", str(runs), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env or _env())


def test_job_config_carries_the_harbor_env(tmp_path):
    task = load_task(FIXTURES / "agent-tasks" / "count-lines")
    chat = ChatConfig(model="m", base_url="http://127.0.0.1:9/v1")
    config = AttemptPlan(attempts=1, concurrency=1, max_turns=2)
    overlay = tmp_path / "harbor-compose.yaml"
    for name in ("daytona", "modal", "e2b", "runloop"):
        job = job_config([task], tmp_path, chat, config, None, name)
        assert job.environment.type.value == name and job.environment.extra_docker_compose == []
        assert job.n_attempts == 1 and job.agents[0].kwargs["max_turns"] == 2
    docker = job_config([task], tmp_path, chat, config, overlay, "docker")
    assert docker.environment.type.value == "docker" and docker.environment.extra_docker_compose == [overlay]
    # The names offered are Harbor's EnvironmentType values.
    assert {"docker", "daytona", "modal", "e2b", "runloop"} <= set(harbor_env_names())


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("daytona", "DAYTONA_API_KEY"),
        ("modal", "MODAL_TOKEN_ID"),
        ("e2b", "E2B_API_KEY"),
        ("runloop", "RUNLOOP_API_KEY"),
    ],
)
def test_missing_cloud_credentials_are_a_named_error(monkeypatch, tmp_path, name, variable):
    for key in CLOUD_CREDENTIALS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.modal.toml
    with pytest.raises(HarborEnvError) as caught:
        check_harbor_env(name)
    assert str(caught.value).startswith(f"harbor_env_credentials_missing: --harbor-env {name}: ")
    assert variable in str(caught.value)


def test_cloud_env_without_credentials_fails_before_any_trial(tmp_path):
    runs = tmp_path / "runs"
    completed = _filter(FIXTURES / "agent-tasks" / "count-lines", runs, "--harbor-env", "daytona")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "harbor_env_credentials_missing: --harbor-env daytona" in completed.stderr
    assert "DAYTONA_API_KEY" in completed.stderr
    assert not runs.exists()  # no run dir, so no trial and no container

    unknown = _filter(FIXTURES / "agent-tasks" / "count-lines", runs, "--harbor-env", "nowhere")
    assert unknown.returncode == 2 and "--harbor-env must be one of" in unknown.stderr and "daytona" in unknown.stderr
    assert not runs.exists()


@pytest.mark.harbor
def test_eval_through_harbor_docker_for_real_and_another_env_does_not_resume_it(tmp_path, base_image):
    """`eval --backend harbor --harbor-env docker`: terminus-2 against the endpoint, in Harbor's docker
    environment, scored into eval.json. (filter's Harbor path runs for real in test_filter_harbor.py.)"""
    task = tmp_path / "count-lines"
    shutil.copytree(FIXTURES / "agent-tasks" / "count-lines", task)
    runs = tmp_path / "runs"
    with ScriptedOpenAIServer(competent([task])) as server:
        completed = _eval(task, runs, "--harbor-env", "docker", "--run", "he", base_url=server.base_url)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        assert server.requests and all(not r.tools for r in server.requests)  # terminus-2's own protocol

    run_dir = runs / "he"
    records = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
    assert [(r.agent, r.reward) for r in records] == [("terminus-2", 1.0)]
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["overall"]["pass_at_1"] == 1.0 and summary["overall"]["n_tasks"] == 1
    # Harbor ran the job in its docker environment, as the job's own config.json says.
    assert json.loads((run_dir / "trials" / "config.json").read_text())["environment"]["type"] == "docker"

    # The same run in another sandbox is refused (credentials present, so the refusal is the run's settings).
    other = _eval(task, runs, "--harbor-env", "e2b", "--run", "he", env=_env(E2B_API_KEY="not-a-real-key"))
    assert other.returncode == 2, other.stdout + other.stderr
    assert "harbor_env: 'docker' -> 'e2b'" in other.stderr
    assert len(Ledger(run_dir / "ledger.jsonl", TrialRecord).load()) == 1


def test_eval_cloud_env_without_credentials_or_with_a_checkpoint_fails_before_any_trial(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from taskforge.cli import app

    for key in CLOUD_CREDENTIALS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.modal.toml
    runs = tmp_path / "runs"
    task = str(FIXTURES / "agent-tasks" / "count-lines")
    common = ["eval", task, "--backend", "harbor", "--runs-dir", str(runs)]
    missing = CliRunner().invoke(app, [*common, "--model", "m", "--harbor-env", "modal"])
    said = "".join(missing.output.split())
    assert missing.exit_code == 1 and "harbor_env_credentials_missing:--harbor-envmodal" in said, missing.output
    assert "MODAL_TOKEN_ID" in said
    checkpoint = CliRunner().invoke(app, [*common, "--policy", "tiny"])
    assert checkpoint.exit_code == 2 and "taskforgeservetiny" in "".join(checkpoint.output.split()), checkpoint.output
    assert not runs.exists()


def _validate(task_path: Path, runs: Path, *args: str, env=None):
    command = [sys.executable, "-m", "taskforge.cli", "validate", str(task_path), "--backend", "harbor"]
    command += ["--runs-dir", str(runs), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env or _env())


def test_validate_job_config_carries_the_harbor_env(tmp_path):
    task = load_task(FIXTURES / "agent-tasks" / "count-lines")
    job = validate_job_config([task], tmp_path, 2, None, "modal")
    assert job.environment.type.value == "modal"
    assert [a.name for a in job.agents] == ["oracle", "nop"] and job.n_attempts == 1


def test_validate_cloud_env_without_credentials_fails_before_any_trial(tmp_path):
    runs = tmp_path / "runs"
    completed = _validate(FIXTURES / "agent-tasks" / "count-lines", runs, "--harbor-env", "runloop")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "harbor_env_credentials_missing: --harbor-env runloop" in completed.stderr
    assert "RUNLOOP_API_KEY" in completed.stderr
    assert not runs.exists()


@pytest.mark.harbor
def test_validate_through_harbor_docker_for_real(tmp_path, base_image):
    task = tmp_path / "count-lines"
    shutil.copytree(FIXTURES / "agent-tasks" / "count-lines", task)
    runs = tmp_path / "runs"
    completed = _validate(task, runs, "--harbor-env", "docker", "--run", "hv")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    run_dir = runs / "hv"
    verdicts = json.loads((run_dir / "validation.json").read_text())
    assert [(v["status"], v["oracle_reward"], v["nop_reward"]) for v in verdicts] == [("passed", 1.0, 0.0)]
    records = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
    assert sorted((r.agent, r.reward) for r in records) == [("nop", 0.0), ("oracle", 1.0)]
    assert json.loads((run_dir / "trials" / "config.json").read_text())["environment"]["type"] == "docker"
    # Resuming runs nothing again and records nothing twice.
    again = _validate(task, runs, "--harbor-env", "docker", "--run", "hv")
    assert again.returncode == 0 and len(Ledger(run_dir / "ledger.jsonl", TrialRecord).load()) == 2
    # The same run in another environment is refused before any trial.
    other = _validate(task, runs, "--harbor-env", "e2b", "--run", "hv", env=_env(E2B_API_KEY="not-a-real-key"))
    assert other.returncode == 2 and "harbor_env: 'docker' -> 'e2b'" in other.stderr, other.stdout + other.stderr
    assert len(Ledger(run_dir / "ledger.jsonl", TrialRecord).load()) == 2
