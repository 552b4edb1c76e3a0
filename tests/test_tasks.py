"""Task directories: rendering through Harbor's TaskConfig, loading, and lint's findings."""

import os
import stat

from harbor.models.task.task import Task as HarborTask

from taskforge.tasks import discover_task_dirs, lint_task, load_task


def problems_of(task_dir):
    return [(p.path.relative_to(task_dir).as_posix(), p.message) for p in lint_task(task_dir)]


def test_written_task_is_valid_harbor_and_lint_clean(write_hello):
    task_dir = write_hello()
    harbor_task = HarborTask(task_dir)  # Harbor's own loader accepts it
    assert harbor_task.config.agent.timeout_sec == 60.0
    assert harbor_task.config.metadata["family"] == "hello"
    ours = load_task(task_dir)
    assert ours.name == "taskforge-tests/hello"
    assert ours.metadata["difficulty"] == "easy"
    assert not ours.wants_network  # no network unless the task asks
    assert "/app/out.txt" in ours.instruction
    assert lint_task(task_dir) == []
    dockerfile = (task_dir / "environment" / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM taskforge/base:1\n")
    assert "tests" not in dockerfile and "solution" not in dockerfile
    for script in ("tests/test.sh", "solution/solve.sh"):
        assert os.stat(task_dir / script).st_mode & stat.S_IXUSR


def test_lint_reports_missing_files_with_fixes(tmp_path):
    task_dir = tmp_path / "empty"
    task_dir.mkdir()
    found = lint_task(task_dir)
    messages = {p.path.relative_to(task_dir).as_posix(): p for p in found}
    assert set(messages) == {
        "task.toml",
        "instruction.md",
        "environment/Dockerfile",
        "tests/test.sh",
        "solution/solve.sh",
    }
    assert all(p.fix for p in found)
    assert messages["solution/solve.sh"].severity == "warning"


def test_lint_reports_unparseable_toml(write_hello):
    task_dir = write_hello()
    (task_dir / "task.toml").write_text("[agent\ntimeout_sec = 10\n")
    (found,) = [p for p in lint_task(task_dir) if p.path.name == "task.toml"]
    assert "unparseable TOML" in found.message


def test_lint_reports_a_config_harbor_rejects(write_hello):
    task_dir = write_hello()
    (task_dir / "task.toml").write_text('[agent]\ntimeout_sec = "soon"\n')
    (found,) = [p for p in lint_task(task_dir) if p.path.name == "task.toml"]
    assert "agent.timeout_sec" in found.message


def test_lint_reports_missing_agent_timeout(write_hello):
    task_dir = write_hello()
    text = (task_dir / "task.toml").read_text().replace("[agent]\ntimeout_sec = 60.0\n", "[agent]\n", 1)
    (task_dir / "task.toml").write_text(text)
    assert load_task(task_dir).config.agent.timeout_sec is None
    assert load_task(task_dir).config.verifier.timeout_sec == 60.0
    assert ("task.toml", "no agent timeout: Harbor runs the agent without a time limit") in problems_of(task_dir)


def test_lint_reports_tests_or_solution_copied_into_the_image(write_hello):
    task_dir = write_hello(dockerfile_steps=["COPY tests/ /tests/", "COPY solve.sh /root/solve.sh"])
    (task_dir / "environment" / "solve.sh").write_text("echo cheat\n")
    found = problems_of(task_dir)
    copies = [m for path, m in found if path == "environment/Dockerfile"]
    assert len(copies) == 2 and all("copies tests or solution" in m for m in copies)
    assert any(path == "environment/solve.sh" for path, _ in found)


def test_lint_reports_test_sh_that_never_writes_a_reward(write_hello):
    task_dir = write_hello()
    (task_dir / "tests" / "test.sh").write_text("#!/bin/bash\npython3 -m pytest /tests\n")
    assert any("never writes a reward file" in m for _, m in problems_of(task_dir))


def test_lint_reports_non_executable_scripts(write_hello):
    task_dir = write_hello()
    for script in ("tests/test.sh", "solution/solve.sh"):
        os.chmod(task_dir / script, 0o644)
    found = problems_of(task_dir)
    assert ("tests/test.sh", "not executable") in found
    assert ("solution/solve.sh", "not executable") in found


def test_discover_finds_nested_task_dirs_and_rejects_empty(tmp_path, write_hello):
    a = write_hello("set/a")
    b = write_hello("set/deeper/b")
    assert discover_task_dirs([tmp_path / "set"]) == [a, b]
    assert discover_task_dirs([a]) == [a]
    (tmp_path / "nothing").mkdir()
    import pytest

    from taskforge.tasks import TaskLoadError

    with pytest.raises(TaskLoadError, match="holds no task"):
        discover_task_dirs([tmp_path / "nothing"])
    with pytest.raises(TaskLoadError, match="no such file"):
        discover_task_dirs([tmp_path / "missing"])


def test_discover_reads_a_filter_runs_kept_json(tmp_path, write_hello):
    """`train --tasks kept.json` trains on the tasks a filter kept, not on the whole folder."""
    import json

    import pytest

    from taskforge.tasks import TaskLoadError

    a, _b = write_hello("set/a"), write_hello("set/b")
    kept = tmp_path / "set" / "kept.json"
    kept.write_text(json.dumps({"kept": [{"task_path": str(a), "pass_rate": 0.5}]}))
    assert discover_task_dirs([kept]) == [a]
    kept.write_text(json.dumps({"kept": [{"task_path": str(tmp_path / "gone")}]}))
    with pytest.raises(TaskLoadError, match="kept tasks not found"):
        discover_task_dirs([kept])
    kept.write_text(json.dumps({"tasks": []}))
    with pytest.raises(TaskLoadError, match="not a filter run's kept.json"):
        discover_task_dirs([kept])
