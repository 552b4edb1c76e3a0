"""Reliability: one reward rule everywhere, lint that catches real task bugs, one process per run dir,
verdicts keyed on the task's content, failing endpoints that exit with their cause, named oracle
failures and messages rich cannot eat. Real Docker, real HTTP (the scripted server or a tiny
http.server stands in for a model API)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from taskforge.agent.episode import EpisodeConfig
from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy
from taskforge.evaluate import evaluate
from taskforge.runner import Ledger
from taskforge.tasks import lint_task, load_task
from taskforge.testing.openai_server import ErrorReply, Malformed, ScriptedOpenAIServer
from taskforge.testing.scripts import competent
from taskforge.trial import TrialRecord, error_kind
from taskforge.validate import validate_tasks
from taskforge.verify import InvalidRewardError, parse_reward

from .conftest import REPO_ROOT

ENV = {**os.environ, "COLUMNS": "250", "OPENAI_API_KEY": "unused"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskforge.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
        env=ENV,
    )


def ledger_of(run_dir) -> list[TrialRecord]:
    return Ledger(run_dir / "ledger.jsonl", TrialRecord).load()


# ---------------------------------------------------------------------------------------------
# 5. A reward outside [0, 1] is a named verifier error, like NaN, in validate and eval alike


@pytest.mark.parametrize(
    ("reward_json", "reward_txt"),
    [(None, b"2.5"), (None, b"-0.5"), (b'{"reward": 2.5}', None), (b'{"reward": 1, "style": 3}', None)],
)
def test_a_reward_outside_0_1_is_an_invalid_reward(reward_json, reward_txt):
    with pytest.raises(InvalidRewardError, match=r"outside \[0, 1\]"):
        parse_reward(reward_json, reward_txt)
    assert error_kind(InvalidRewardError.__name__) == "verifier_error"
    assert parse_reward(None, b"0") == {"reward": 0.0} and parse_reward(None, b"1") == {"reward": 1.0}


def test_validate_and_eval_both_call_a_reward_of_2_5_a_verifier_error(write_hello, base_image, tmp_path):
    task_dir = write_hello("over")
    (task_dir / "tests" / "test.sh").write_text(
        "#!/bin/bash\nmkdir -p /logs/verifier\necho 2.5 > /logs/verifier/reward.txt\n"
    )

    (validated,) = validate_tasks([task_dir], tmp_path / "validate", jobs=1)
    assert validated.status == "verifier_error" and "outside [0, 1]" in validated.detail, validated

    with ScriptedOpenAIServer(competent([task_dir])) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        summary, not_recorded = evaluate(
            [load_task(task_dir)], tmp_path / "eval", lambda: policy, attempts=1, concurrency=1, episode=EpisodeConfig()
        )
    assert not_recorded == []
    assert summary.overall.pass_at_1 == 0.0 and summary.overall.errored_by_kind == {"verifier_error": 1}
    # The eval table shows the errored share apart from pass@1 (an errored attempt is not a plain failure).
    from taskforge.commands import evaluate as evaluate_command

    with evaluate_command.console.capture() as captured:
        evaluate_command.print_eval(summary)
    header, row = [line for line in captured.get().splitlines() if "pass@1" in line or line.startswith("│ all")]
    assert header.split("┃")[5].strip() == "errored" and row.split("│")[5].strip() == "100.0%"
    (record,) = ledger_of(tmp_path / "eval")
    assert record.reward is None and record.error_kind == "verifier_error" and not record.passed


# ---------------------------------------------------------------------------------------------
# 7. Lint catches a reward written outside /logs/verifier/ and a COPY of what environment/ lacks


def lint_messages(task_dir) -> list[tuple[str, str, str]]:
    return [(p.path.relative_to(task_dir).as_posix(), p.message, p.fix) for p in lint_task(task_dir)]


def test_lint_flags_a_reward_written_outside_logs_verifier(write_hello):
    task_dir = write_hello()
    test_sh = task_dir / "tests" / "test.sh"
    test_sh.write_text(
        "#!/bin/bash\ncd /tests\n"
        "python3 -m pytest -q && echo 1 > /verifier/reward.txt || echo 0 > /verifier/reward.txt\n"
    )
    ((path, message, fix),) = lint_messages(task_dir)
    assert path == "tests/test.sh" and "/verifier/reward.txt" in message and "outside /logs/verifier/" in message
    assert "/logs/verifier/reward.txt" in fix

    # A relative reward path in a script that never goes near /logs/verifier/ lands in its cwd.
    test_sh.write_text("#!/bin/bash\ncd /tests\npython3 -m pytest -q && echo 1 > reward.txt\n")
    assert [m for p, m, _ in lint_messages(task_dir) if p == "tests/test.sh" and "reward.txt" in m]

    # The template's verifier, and one that names the file through a variable, are clean.
    test_sh.write_text('#!/bin/bash\nOUT=/logs/verifier\nmkdir -p "$OUT"\necho 1 > "$OUT/reward.txt"\n')
    assert lint_messages(task_dir) == []


def test_lint_flags_a_copy_of_a_source_environment_lacks(write_hello):
    task_dir = write_hello(
        environment_files={"data/input.csv": "a,b\n", "app.py": "print(1)\n"},
        dockerfile_steps=[
            "RUN mkdir -p /app",
            "COPY data/ /app/data/",
            "COPY ./app.py /app/app.py",
            "COPY *.csv config.yaml /app/",
            "ADD ../secrets.txt /root/",
            "COPY --from=busybox:1 /bin/busybox /bin/busybox",
            "ADD https://example.com/x.tar.gz /tmp/",
        ],
    )
    found = [(m, f) for p, m, f in lint_messages(task_dir) if p == "environment/Dockerfile"]
    named = sorted(m.split(" copies ")[1].split(",")[0] for m, _ in found)
    assert named == ["'*.csv'", "'../secrets.txt'", "'config.yaml'"], found
    assert all("not in environment/" in m for m, _ in found)
    assert "add environment/config.yaml or remove that line" in [f for _, f in found]


# ---------------------------------------------------------------------------------------------
# 6. Two processes on one run dir: the second exits naming the run dir and the other process


def test_a_second_validate_on_the_same_run_dir_exits_instead_of_running_every_trial_twice(
    write_hello, base_image, tmp_path
):
    task_dir = write_hello("slow", solution="sleep 6; echo forged > /app/out.txt")
    runs_dir, run_dir = tmp_path / "runs", tmp_path / "runs" / "shared"
    command = [sys.executable, "-m", "taskforge.cli", "validate", str(task_dir), "--run", "shared"]
    command += ["--runs-dir", str(runs_dir), "-j", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "trials").is_dir():  # the first process is running its oracle trial
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        second = cli("validate", str(task_dir), "--run", "shared", "--runs-dir", str(runs_dir), "-j", "1")
        fresh = cli("validate", str(task_dir), "--run", "shared", "--runs-dir", str(runs_dir), "--fresh")
        first_out, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_out + first_err
    for refused in (second, fresh):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert str(run_dir) in refused.stderr.replace("\n", "") and "another process" in refused.stderr
        assert f"pid {first.pid}" in refused.stderr
    assert len((run_dir / "ledger.jsonl").read_text().splitlines()) == 2  # oracle and nop, once each
    assert [r.agent for r in ledger_of(run_dir)] == ["oracle", "nop"]


# ---------------------------------------------------------------------------------------------
# 1. A verdict holds for the task content it ran: an edited task is run again


def test_validate_runs_an_edited_task_again_instead_of_reusing_its_old_verdict(write_hello, base_image, tmp_path):
    task_dir = write_hello("edited")
    untouched = write_hello("untouched")
    command = ["validate", str(task_dir), str(untouched), "--run", "v", "--runs-dir", str(tmp_path), "-j", "2"]
    first = cli(*command)
    assert first.returncode == 0, first.stdout + first.stderr
    ledger_before = ledger_of(tmp_path / "v")
    assert len(ledger_before) == 4 and all(r.task_checksum for r in ledger_before)

    (task_dir / "solution" / "solve.sh").write_text("#!/bin/bash\necho wrong > /app/out.txt\n")
    again = cli(*command)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "1 task(s) changed since the last run: run again (taskforge-tests/hello)" in again.stderr
    assert "oracle_failed" in again.stdout and "1/2 tasks passed validation" in again.stdout
    # The edited task's two trials ran again; the untouched task's verdicts were reused; the old ones are kept aside.
    ledger_after = ledger_of(tmp_path / "v")
    assert len(ledger_after) == 4
    edited = [r for r in ledger_after if r.task_path == str(task_dir.resolve())]
    assert {r.agent: r.reward for r in edited} == {"oracle": 0.0, "nop": 0.0}
    assert [r for r in ledger_after if r.task_path == str(untouched.resolve())] == [
        r for r in ledger_before if r.task_path == str(untouched.resolve())
    ]
    retired = Ledger(tmp_path / "v" / "ledger.retired.jsonl", TrialRecord).load()
    assert sorted(r.agent for r in retired) == ["nop", "oracle"] and all(r.reward is not None for r in retired)

    # Unchanged since: the same command reuses every verdict and says nothing about changes.
    third = cli(*command)
    assert third.returncode == 1 and "changed since the last run" not in third.stderr
    assert ledger_of(tmp_path / "v") == ledger_after


def test_filter_attempts_of_an_edited_task_run_again(write_hello, base_image, tmp_path):
    from taskforge.filter import FilterConfig, filter_tasks
    from taskforge.testing.scripts import hopeless

    task_dir = write_hello("lenient")
    run_dir = tmp_path / "run"
    with ScriptedOpenAIServer(hopeless()) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        config = FilterConfig(attempts=1, concurrency=1)
        (dropped,) = filter_tasks([load_task(task_dir)], run_dir, lambda: policy, config, out_dir=tmp_path).tasks
        assert (dropped.n_passed, dropped.kept) == (0, False)
        # The tests now accept anything: `ls` passes. The old verdict must not decide.
        (task_dir / "tests" / "test_outputs.py").write_text("def test_anything():\n    assert True\n")
        n_requests = len(server.requests)
        (kept,) = filter_tasks([load_task(task_dir)], run_dir, lambda: policy, config, out_dir=tmp_path).tasks
        assert len(server.requests) > n_requests
    assert (kept.n_passed, kept.n_attempts, kept.kept) == (1, 1, True)
    (record,) = ledger_of(run_dir)
    assert record.reward == 1.0


# ---------------------------------------------------------------------------------------------
# 4. A failing endpoint: exit 1 with the HTTP cause, and no verdict from attempts that never ran


FAILING_ENDPOINTS = {
    "http-500": (ErrorReply(500, "the GPU caught fire"), "HTTP 500"),
    "invalid-json": (Malformed(b"<html>not json</html>"), "malformed replies (body is not JSON"),
}


@pytest.mark.parametrize("endpoint", sorted(FAILING_ENDPOINTS))
def test_eval_and_filter_against_a_failing_endpoint_exit_1_with_the_cause(endpoint, write_hello, base_image, tmp_path):
    reply, cause = FAILING_ENDPOINTS[endpoint]
    task_dir = write_hello("hello")
    common = ["--model", "test-model", "--max-retries", "0", "--runs-dir", str(tmp_path / "runs")]
    with ScriptedOpenAIServer(lambda request: reply) as server:
        evaluated = cli("eval", str(task_dir), *common, "--base-url", server.base_url, "--run", "ev")
        filtered = cli(
            "filter", str(task_dir), *common, "--base-url", server.base_url, "--attempts", "1", "--out", str(tmp_path)
        )
        assert len(server.requests) == 2  # one request per attempt: retries are off
    for completed in (evaluated, filtered):
        assert completed.returncode == 1, completed.stdout + completed.stderr
        stderr = completed.stderr.replace("\n", " ")
        assert cause in stderr and "1 attempt(s) could not run" in stderr, stderr
        assert "Traceback" not in stderr and "RunNotFoundError" not in stderr
    assert not (tmp_path / "runs" / "ev" / "eval.json").exists()
    assert not (tmp_path / "kept.json").exists() and not (tmp_path / "registry.json").exists()
    assert not list((tmp_path / "runs").glob("*/filter.json"))
    assert all(ledger_of(run_dir) == [] for run_dir in (tmp_path / "runs").iterdir())

    # A run named with --run resumes only with the sampling it started with (its verdicts hold for those).
    resampled = cli(
        "eval", str(task_dir), *common, "--base-url", "http://127.0.0.1:9/v1", "--run", "ev", "--temperature", "0.1"
    )
    assert resampled.returncode == 2 and "started with other settings" in resampled.stderr, resampled.stderr
    assert "temperature: 0.6 -> 0.1" in resampled.stderr


# ---------------------------------------------------------------------------------------------
# 8. A missing solve.sh is named; bracketed words survive rich


def test_a_missing_solution_is_named_and_brackets_survive_the_output(write_hello, base_image, tmp_path):
    task_dir = write_hello("unsolved")
    (task_dir / "solution" / "solve.sh").unlink()
    text = (task_dir / "task.toml").read_text().replace("[agent]\ntimeout_sec = 60.0\n", "[agent]\n", 1)
    (task_dir / "task.toml").write_text(text)

    validated = cli("validate", str(task_dir), "--run", "v[agent]", "--runs-dir", str(tmp_path))
    assert validated.returncode == 1, validated.stdout + validated.stderr
    out = validated.stdout.replace("\n", " ")
    assert "solution_missing" in out and "oracle_failed" not in out
    assert "0/1 tasks passed validation (solution_missing: 1)" in out
    assert f"Ledger: {tmp_path / 'v[agent]' / 'ledger.jsonl'}" in out and f"validation ({tmp_path / 'v[agent]'})" in out
    (record,) = ledger_of(tmp_path / "v[agent]")
    assert record.agent == "nop"  # the oracle had nothing to run

    linted = cli("lint", str(task_dir))
    assert "fix: set [agent] timeout_sec" in linted.stdout and "solve.sh" in linted.stdout


def test_validate_prints_a_failure_reason_whole_on_a_narrow_terminal(write_hello, base_image, tmp_path):
    """The reason used to sit in a table column wrapped to ~17 characters; now each failure's
    reason follows the table in full, the build error's last lines included."""
    task_dir = write_hello("broken_build")
    marker = "marker-of-a-build-step-that-fails-" + "x" * 60
    dockerfile = task_dir / "environment" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"RUN echo {marker} && exit 3\n")
    narrow = {**ENV, "COLUMNS": "80"}
    validated = subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "validate", str(task_dir), "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env=narrow,
    )
    assert validated.returncode == 1
    assert marker in validated.stdout  # on one line, not folded into a column
    assert "build_failed:" in validated.stdout and "returned a non-zero code: 3" in validated.stdout
    assert f"Ledger: {tmp_path}" in validated.stdout  # the path whole, not wrapped
