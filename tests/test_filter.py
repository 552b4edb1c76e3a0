"""`taskforge filter` over real HTTP (scripted server) and the real Docker engine: a competent model's
tasks are kept and a hopeless one's dropped, every attempt is written and recorded once, the
registry runs under `harbor run`, and failures to run exit non-zero without being recorded."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harbor.models.trial.result import TrialResult

from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
from taskforge.filter import FilterConfig, bucket_of, filter_tasks
from taskforge.runner import Ledger
from taskforge.tasks import discover_task_dirs, load_task
from taskforge.testing.openai_server import ScriptedOpenAIServer
from taskforge.testing.scripts import competent, hopeless
from taskforge.trial import TRANSCRIPT_FILE, TrialRecord, read_transcript

from .conftest import FIXTURES, REPO_ROOT

AGENT_TASKS = FIXTURES / "agent-tasks"
HARBOR = Path(sys.executable).parent / "harbor"


@pytest.fixture
def task_set(tmp_path) -> Path:
    """A copy of the fixture tasks as a task set folder (kept.json and registry.json land in it)."""
    destination = tmp_path / "myset"
    shutil.copytree(AGENT_TASKS, destination)
    return destination


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "filter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def ledger_of(run_dir: Path) -> list[TrialRecord]:
    return Ledger(run_dir / "ledger.jsonl", TrialRecord).load()


def test_competent_tasks_are_kept_with_every_attempt_written(task_set, tmp_path, base_image):
    tasks = [load_task(d) for d in discover_task_dirs([task_set])]
    count_lines = next(t for t in tasks if t.path.name == "count-lines")
    run_dir = tmp_path / "run"
    # The script can solve count-lines only; service-config gets a command that fails.
    with ScriptedOpenAIServer(competent([count_lines.path])) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        config = FilterConfig(attempts=2, concurrency=2, price_input_per_mtok=3.0, price_output_per_mtok=15.0)
        report = filter_tasks(tasks, run_dir, lambda: policy, config, out_dir=task_set, model="test-model")
        n_requests = len(server.requests)

        by_name = {t.task_name: t for t in report.tasks}
        kept, dropped = by_name["taskforge-fixtures/count-lines"], by_name["taskforge-fixtures/service-config"]
        assert (kept.n_passed, kept.n_attempts, kept.pass_rate, kept.difficulty, kept.kept) == (2, 2, 1.0, "easy", True)
        assert (dropped.n_passed, dropped.n_attempts, dropped.difficulty, dropped.kept) == (0, 2, "unsolved", False)
        assert report.n_not_recorded == 0 and report.n_input_tokens > 0 and report.n_output_tokens > 0
        assert report.cost_usd == pytest.approx(report.n_input_tokens * 3e-6 + report.n_output_tokens * 15e-6)

        # Every attempt: one ledger line, a Harbor TrialResult with tokens, a transcript with the reward.
        records = ledger_of(run_dir)
        assert sorted((r.task_name, r.attempt) for r in records) == sorted((t.name, i) for t in tasks for i in range(2))
        for record in records:
            result = TrialResult.model_validate_json(Path(record.trial_dir, "result.json").read_text())
            assert result.agent_result.n_input_tokens == record.n_input_tokens > 0
            assert result.agent_result.n_output_tokens == record.n_output_tokens > 0
            assert result.agent_info.model_info.name == "test-model"
            episode = read_transcript(Path(record.trial_dir, TRANSCRIPT_FILE))
            assert episode.reward == record.reward and episode.stop_reason == record.stop_reason == "done"

        kept_file = json.loads((task_set / "kept.json").read_text())
        assert [t["task_name"] for t in kept_file["kept"]] == ["taskforge-fixtures/count-lines"]
        assert kept_file["dropped"] == ["taskforge-fixtures/service-config"] and kept_file["attempts"] == 2

        # Re-running the finished run resumes it: nothing is repeated, nothing added.
        again = filter_tasks(tasks, run_dir, lambda: policy, config, out_dir=task_set, model="test-model")
        assert len(server.requests) == n_requests and len(ledger_of(run_dir)) == 4
        assert [t.model_dump() for t in again.tasks] == [t.model_dump() for t in report.tasks]

    # Harbor reads the registry: its own client resolves the dataset to the kept task ...
    from harbor.models.job.config import DatasetConfig

    resolved = asyncio.run(
        DatasetConfig(name="myset-kept", registry_path=task_set / "registry.json").get_task_configs()
    )
    assert [Path(c.path) for c in resolved] == [count_lines.path]
    # ... and `harbor run` runs it.
    jobs = tmp_path / "jobs"
    completed = subprocess.run(
        [
            str(HARBOR),
            "run",
            "--registry-path",
            str(task_set / "registry.json"),
            "-d",
            "myset-kept",
            "-a",
            "oracle",
            "-o",
            str(jobs),
            "--job-name",
            "kept",
            "-y",
            "--extra-docker-compose",
            str(REPO_ROOT / "envs" / "harbor-fast.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HARBOR_TELEMETRY": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    (trial,) = [json.loads(p.read_text()) for p in (jobs / "kept").glob("*/result.json")]
    assert trial["exception_info"] is None and trial["verifier_result"]["rewards"] == {"reward": 1.0}


def test_hopeless_model_drops_every_task_and_the_command_still_succeeds(task_set, tmp_path, base_image):
    with ScriptedOpenAIServer(hopeless()) as server:
        completed = run_cli(
            str(task_set),
            "--model",
            "test-model",
            "--base-url",
            server.base_url,
            "--attempts",
            "2",
            "-n",
            "2",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--price-input",
            "1",
            "--price-output",
            "2",
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "kept 0 of 2 tasks" in completed.stdout and "unsolved 2" in completed.stdout
    assert "cost $" in completed.stdout and "0/4" in completed.stdout
    kept_file = json.loads((task_set / "kept.json").read_text())
    assert kept_file["kept"] == [] and len(kept_file["dropped"]) == 2
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = ledger_of(run_dir)
    assert len(records) == 4 and all(r.reward == 0.0 and r.n_turns == 2 for r in records)
    episode = read_transcript(Path(records[0].trial_dir, TRANSCRIPT_FILE))
    assert episode.turns[0].command == "ls"


def test_stop_on_success_skips_the_remaining_attempts(task_set, tmp_path, base_image):
    tasks = [load_task(d) for d in discover_task_dirs([task_set])]
    with ScriptedOpenAIServer(competent([t.path for t in tasks])) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        report = filter_tasks(
            tasks,
            tmp_path / "run",
            lambda: policy,
            FilterConfig(attempts=6, concurrency=2, stop_on_success=True),
            out_dir=tmp_path,
        )
    # At most the attempts already started when the first success landed; never all six.
    assert all(t.kept and t.n_passed == t.n_attempts and 1 <= t.n_attempts <= 3 for t in report.tasks), report.tasks
    # Those pass rates stop at the first pass: they are not written back as a measured difficulty.
    assert report.n_measured_written == 0 and all(load_task(t.path).metadata.get("measured") is None for t in tasks)


def test_unreachable_model_records_nothing_and_a_rerun_retries(task_set, tmp_path, base_image):
    tasks = [load_task(task_set / "count-lines")]
    run_dir = tmp_path / "run"
    down = OpenAIChatPolicy(
        ChatConfig(model="test-model", base_url="http://127.0.0.1:9/v1", max_retries=0, request_timeout_sec=2)
    )
    report = filter_tasks(tasks, run_dir, lambda: down, FilterConfig(attempts=2, concurrency=2), out_dir=tmp_path)
    assert report.n_not_recorded == 2 and "cannot reach" in report.not_recorded_errors[0]
    assert ledger_of(run_dir) == []
    with ScriptedOpenAIServer(competent([tasks[0].path])) as server:
        up = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        report = filter_tasks(tasks, run_dir, lambda: up, FilterConfig(attempts=2, concurrency=2), out_dir=tmp_path)
    assert report.n_not_recorded == 0 and [
        (r.attempt, r.reward) for r in sorted(ledger_of(run_dir), key=lambda r: r.attempt)
    ] == [(0, 1.0), (1, 1.0)]


def test_command_exits_non_zero_when_it_cannot_run(task_set, tmp_path):
    with ScriptedOpenAIServer(hopeless(), api_key="right") as server:
        bad_key = run_cli(
            str(task_set),
            "--model",
            "test-model",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "TF_FILTER_KEY",
            "--attempts",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            env={"TF_FILTER_KEY": "wrong"},
        )
        unknown_model = run_cli(
            str(task_set),
            "--model",
            "nope",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "TF_FILTER_KEY",
            "--attempts",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            env={"TF_FILTER_KEY": "right"},
        )
    assert bad_key.returncode == 1 and "HTTP 401" in bad_key.stderr and "TF_FILTER_KEY" in bad_key.stderr
    assert (
        unknown_model.returncode == 1
        and "no model 'nope'" in unknown_model.stderr
        and "test-model" in unknown_model.stderr
    )
    assert all(ledger_of(run_dir) == [] for run_dir in (tmp_path / "runs").iterdir())
    missing = run_cli(
        str(tmp_path / "no-such-dir"),
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


@pytest.mark.parametrize(
    ("rate", "bucket"),
    [
        (1.0, "easy"),
        (0.7, "easy"),
        (0.69, "medium"),
        (0.4, "medium"),
        (0.39, "hard"),
        (0.1, "hard"),
        (1 / 16, "extreme"),
        (0.0, "unsolved"),
    ],
)
def test_difficulty_buckets(rate, bucket):
    assert bucket_of(rate) == bucket


def test_measured_difficulty_is_written_back_and_a_rerun_reruns_nothing(task_set, tmp_path, base_image):
    """task.toml, kept.json, registry.json and the report carry the measured difficulty; the measured
    block is not part of the task's checksum (the same command reruns nothing), an edited instruction is."""
    from harbor.models.task.config import TaskConfig as HarborTaskConfig

    from taskforge.report import load_run
    from taskforge.tasks import measured_of, task_checksum

    count_lines, service_config = task_set / "count-lines", task_set / "service-config"
    toml_path = count_lines / "task.toml"
    # Requested hard, solved every time: the buckets must follow the pass rate, not the request.
    toml_path.write_text(toml_path.read_text().replace('difficulty = "easy"', 'difficulty = "hard"'))
    checksums = {d: task_checksum(d) for d in (count_lines, service_config)}
    runs = tmp_path / "runs"
    with ScriptedOpenAIServer(competent([count_lines])) as server:
        args = (str(task_set), "--model", "test-model", "--base-url", server.base_url, "--attempts", "1", "-n", "2")
        first = run_cli(*args, "--runs-dir", str(runs))
        assert first.returncode == 0, first.stderr[-3000:]
        assert "measured difficulty written to 2 task.toml file(s)" in first.stdout
        n_requests, (run_dir,) = len(server.requests), list(runs.iterdir())

        measured = {d.name: measured_of(load_task(d)) for d in (count_lines, service_config)}
        assert measured["count-lines"].model_dump() == {
            "difficulty": "easy",
            "pass_rate": 1.0,
            "n_passed": 1,
            "n_attempts": 1,
            "n_errors": 0,
            "model": "test-model",
            "run": run_dir.name,
        }
        assert (measured["service-config"].difficulty, measured["service-config"].n_attempts) == ("unsolved", 1)
        config = HarborTaskConfig.model_validate_toml(toml_path.read_text())  # still Harbor's TaskConfig
        assert config.metadata["difficulty"] == "hard" and not load_task(count_lines).wants_network
        assert {d: task_checksum(d) for d in checksums} == checksums

        kept = json.loads((task_set / "kept.json").read_text())["kept"]
        assert [(t["requested_difficulty"], t["difficulty"]) for t in kept] == [("hard", "easy")]
        registry = {d["name"]: d for d in json.loads((task_set / "registry.json").read_text())}
        assert sorted(registry) == ["myset-easy", "myset-kept"]
        assert [t["name"] for t in registry["myset-easy"]["tasks"]] == ["taskforge-fixtures/count-lines"]
        assert load_run(run_dir).measured_difficulty == {"hard": {"easy": 1}, "easy": {"unsolved": 1}}

        # The same command again: no attempt reruns, no task.toml is rewritten.
        toml_bytes = toml_path.read_bytes()
        again = run_cli(*args, "--runs-dir", str(runs))
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.requests) == n_requests and len(ledger_of(run_dir)) == 2
        assert toml_path.read_bytes() == toml_bytes and "task(s) changed" not in again.stderr

        # An edited instruction is a new task: its attempts run again (the other task's do not).
        instruction = count_lines / "instruction.md"
        instruction.write_text(instruction.read_text() + "\nDo not print anything else.\n")
        edited = run_cli(*args, "--runs-dir", str(runs))
        assert edited.returncode == 0, edited.stderr[-3000:]
        assert "1 task(s) changed since the last run" in edited.stderr and len(server.requests) > n_requests
    records = ledger_of(run_dir)
    assert sorted(r.task_name for r in records) == [
        "taskforge-fixtures/count-lines",
        "taskforge-fixtures/service-config",
    ]
    assert {r.task_checksum for r in records if r.task_path == str(count_lines)} == {task_checksum(count_lines)}
    assert task_checksum(count_lines) != checksums[count_lines]


def test_the_measured_block_is_replaced_and_only_it_is_left_out_of_the_checksum(tmp_path):
    from taskforge.tasks import MeasuredDifficulty, TaskLoadError, measured_of, task_checksum, write_measured

    task_dir = tmp_path / "count-lines"
    shutil.copytree(AGENT_TASKS / "count-lines", task_dir)
    toml_path = task_dir / "task.toml"
    original, checksum = toml_path.read_bytes(), task_checksum(task_dir)
    first = MeasuredDifficulty(difficulty="easy", pass_rate=1.0, n_passed=2, n_attempts=2, model="a", run="r1")
    second = MeasuredDifficulty(difficulty="hard", pass_rate=0.25, n_passed=1, n_attempts=4, model="b", run="r2")
    assert write_measured(task_dir, first) and not write_measured(task_dir, first)  # unchanged: not rewritten
    assert write_measured(task_dir, second) and measured_of(load_task(task_dir)) == second
    assert toml_path.read_bytes().startswith(original) and toml_path.read_text().count("[metadata.measured]") == 1
    assert task_checksum(task_dir) == checksum

    # A table added by hand after the block is part of the task: the checksum changes.
    with toml_path.open("a") as handle:
        handle.write('\n[solution.env]\nEXTRA = "1"\n')
    assert task_checksum(task_dir) != checksum

    # [metadata] as an inline table cannot take a [metadata.measured] table: named, file untouched.
    inline = 'metadata = { family = "count-lines" }\n' + original.decode().replace(
        '[metadata]\nfamily = "count-lines"\ndomain = "data_processing"\ndifficulty = "easy"\nseed = 0\n'
        'generator_version = "fixture"\n',
        "",
    )
    assert "[metadata]" not in inline
    toml_path.write_text(inline)
    with pytest.raises(TaskLoadError, match="task.toml: cannot add the measured difficulty"):
        write_measured(task_dir, first)
    assert toml_path.read_text() == inline
