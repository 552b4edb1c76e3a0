"""A command that breaks its sandbox is named, not reported as a vague failure (reliability issue):
a fork bomb, kill -9 -1, an OOM, a file past the disk limit, a build that cannot find a file.
Real Docker, no mocks."""

from __future__ import annotations

import time

import pytest

from taskforge.agent.scripted import OracleAgent
from taskforge.sandbox.base import ImageBuildError, Resources, SandboxLimitError
from taskforge.sandbox.docker import DockerSandbox, ensure_image
from taskforge.tasks import load_task
from taskforge.trial import resources_for, run_trial

PIDS_LIMIT = 64
MEMORY_MB = 256
STORAGE_MB = 50


@pytest.fixture
def sandbox(base_image):
    resources = Resources(cpus=1, memory_mb=MEMORY_MB, pids_limit=PIDS_LIMIT, storage_mb=STORAGE_MB)
    with DockerSandbox(base_image, resources) as sb:
        yield sb


# ---------------------------------------------------------------------------------------------
# Fault 1: what broke the sandbox, in plain words


def test_a_fork_bomb_is_named_as_using_up_the_process_limit(sandbox):
    started = time.monotonic()
    result = sandbox.exec(":(){ :|:& };:", 2)
    # The bomb forks on after the command returns: its own exec names it when the limit is hit
    # before the wrapper ends, else the next exec does (or, when none can start, says why).
    causes = list(result.notices)
    if not any("process limit" in cause for cause in causes):
        try:
            causes += sandbox.exec("true", 2).notices
        except SandboxLimitError as exc:
            causes.append(str(exc))
    assert time.monotonic() - started < 40
    assert any("used up its process limit" in cause and f"of {PIDS_LIMIT} pids" in cause for cause in causes), causes
    sandbox.kill_leftovers()
    after = sandbox.exec("echo usable", 10)
    assert after.output == "usable\n" and not after.notices, after  # counters moved on: no stale notice


def test_kill_every_process_is_named_and_ends_the_trial(sandbox):
    with pytest.raises(SandboxLimitError, match=r"killed every process in the container \(kill -9 -1\?\)"):
        sandbox.exec("kill -9 -1", 10)
    # The container is gone; an exec says why rather than the engine's "is not running".
    with pytest.raises(SandboxLimitError, match="killed every process"):
        sandbox.exec("echo never", 10)


def test_a_command_killed_for_memory_is_named_as_oom(sandbox):
    result = sandbox.exec("python3 -c 'a = bytearray(1 << 30)'", 30)  # 1 GB in a 256 MB container
    assert result.exit_code == 137 and not result.timed_out, result
    assert result.output == ""  # bash's "Killed" job report does not end up in the output
    assert any("ran out of memory" in notice and f"{MEMORY_MB} MB" in notice for notice in result.notices), result


def test_an_oracle_that_kills_every_process_is_recorded_with_the_cause(write_hello, base_image, tmp_path):
    task_dir = write_hello("kills-all", solution="echo forged > /app/out.txt\nkill -9 -1")
    record = run_trial(load_task(task_dir), OracleAgent(), tmp_path / "trial")
    assert record.error_type == "SandboxLimitError", record
    assert "killed every process in the container" in record.error_message
    assert record.error_kind != "sandbox_error"  # the task's doing: recorded, not retried as infrastructure


def test_a_copy_of_a_missing_file_names_the_file_not_the_base_image(tmp_path, base_image):
    env_dir = tmp_path / "environment"
    env_dir.mkdir()
    (env_dir / "Dockerfile").write_text(f"FROM {base_image}\nCOPY missing.txt /x\n")
    with pytest.raises(ImageBuildError) as raised:
        ensure_image(env_dir)
    message = str(raised.value)
    assert "missing.txt is not in environment/" in message, message
    assert "base image is missing" not in message


def test_a_from_image_that_cannot_be_pulled_is_named(tmp_path, docker_engine):
    env_dir = tmp_path / "environment"
    env_dir.mkdir()
    (env_dir / "Dockerfile").write_text("FROM taskforge-tests/no-such-image:0\nRUN true\n")
    with pytest.raises(ImageBuildError) as raised:
        ensure_image(env_dir, build_timeout_sec=40)
    assert "FROM image taskforge-tests/no-such-image:0 could not be found or pulled" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Fault 2: the writable layer is bounded


def test_a_file_past_the_disk_limit_ends_with_a_named_error(sandbox):
    if not sandbox.watch_disk:  # the engine enforces the quota itself: the write fails
        assert sandbox.exec("fallocate -l 200M /big", 30).exit_code != 0
        return
    with pytest.raises(SandboxLimitError, match=f"over the container's disk limit of {STORAGE_MB} MB"):
        sandbox.exec("fallocate -l 200M /big", 30)


def test_files_adding_up_past_the_disk_limit_end_with_a_named_error(sandbox):
    if not sandbox.watch_disk:
        assert sandbox.exec("for i in 1 2 3 4; do fallocate -l 40M /big$i || exit 1; done", 30).exit_code != 0
        return
    with pytest.raises(SandboxLimitError, match=rf"wrote 160 MB, over its disk limit of {STORAGE_MB} MB"):
        sandbox.exec("for i in 1 2 3 4; do fallocate -l 40M /big$i; done", 30)


def test_a_small_write_is_within_the_disk_limit(sandbox):
    result = sandbox.exec("head -c 1M /dev/urandom > /small && wc -c < /small", 30)
    assert result.exit_code == 0 and result.output == "1048576\n" and not result.notices, result
    assert sandbox.exec("echo fine", 10).output == "fine\n"


def test_task_toml_storage_mb_is_the_containers_disk_limit(write_hello):
    task_dir = write_hello("disk")
    assert resources_for(load_task(task_dir)).storage_mb == Resources.storage_mb  # unset: the default
    assert resources_for(load_task(task_dir)).cpus == 1.0  # what taskforge's tasks write
    toml = task_dir / "task.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(True) if not line.startswith("cpus")))
    assert resources_for(load_task(task_dir)).cpus is None  # unset: no CPU quota, as Harbor
    toml = task_dir / "task.toml"
    toml.write_text(toml.read_text().replace("[environment]\n", "[environment]\nstorage_mb = 64\n", 1))
    assert resources_for(load_task(task_dir)).storage_mb == 64


def test_validate_names_an_oracle_fork_bomb_instead_of_scored_0(write_hello, base_image, tmp_path):
    from taskforge.validate import validate_tasks

    bomb = "bomb() { bomb | bomb & }; bomb; sleep 2"
    (result,) = validate_tasks([write_hello("bomb", solution=bomb)], tmp_path / "run", jobs=1)
    assert result.status != "passed"
    assert "process limit" in result.detail, result


def test_an_agent_that_kills_its_sandbox_is_recorded_not_retried(write_hello, base_image, tmp_path):
    """kill -9 -1 from a model's command stops the container: the attempt is the agent's doing, so it is
    recorded (errored, not passed) and the next run does not play it again."""
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
    from taskforge.evaluate import evaluate
    from taskforge.runner import Ledger
    from taskforge.testing.openai_server import ScriptedOpenAIServer
    from taskforge.testing.scripts import competent
    from taskforge.trial import TrialRecord

    task_dir = write_hello("killer", solution="kill -9 -1")
    with ScriptedOpenAIServer(competent([task_dir])) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        for _ in range(2):  # the second run finds the attempt in the ledger
            summary, not_recorded = evaluate(
                [load_task(task_dir)],
                tmp_path / "eval",
                lambda: policy,
                attempts=1,
                concurrency=1,
                episode=EpisodeConfig(),
            )
            assert not_recorded == []
    (record,) = Ledger(tmp_path / "eval" / "ledger.jsonl", TrialRecord).load()
    assert record.stop_reason == "sandbox_limit" and not record.passed and record.error_kind != "sandbox_error"
    assert summary.overall.pass_at_1 == 0.0


@pytest.mark.parametrize(("cpus", "nano_cpus"), [(None, 0), (1.5, 1_500_000_000)])
def test_a_cpu_quota_only_when_the_task_sets_one(base_image, cpus, nano_cpus):
    with DockerSandbox(base_image, Resources(cpus=cpus, memory_mb=256, pids_limit=64)) as sandbox:
        sandbox.container.reload()
        assert sandbox.container.attrs["HostConfig"]["NanoCpus"] == nano_cpus


def test_collected_files_after_a_broken_record_count_as_absent_not_a_crash():
    """At the pids limit the wrapper's bash prints "fork: retry" where a file record belongs (seen in CI
    under load, with a fork bomb's leftovers still running when the verifier started)."""
    from taskforge.sandbox.docker import _parse_collected

    paths = ["/logs/verifier/reward.json", "/logs/verifier/reward.txt", "/logs/verifier/test-stdout.txt"]
    broken = b"N 0\nbash: fork: retry: Resource temporarily unavailable\n"
    assert _parse_collected(broken, paths) == dict.fromkeys(paths)
    assert _parse_collected(b"N 0\nY 2\n1\nY 0\n", paths) == {paths[0]: None, paths[1]: b"1\n", paths[2]: b""}
