"""Near-miss solutions (issue 15, point 4): every family ships >= 2 per instance, each right but for
one stated requirement. Parametrised over FAMILIES: a new family is covered without editing this file.

`near_miss_problems(family, n)` is the fast check (no Docker) other tests can reuse. That the
near-misses all score 0 in the real Docker engine is checked by
tests/test_forge_docker.py::test_one_task_of_every_family_validates (one validate call over one
sample task per family, which now runs their near-misses too; tasks/sample must be regenerated as
tasks/README.md says once families change).
"""

from __future__ import annotations

import random
import stat

import pytest

from taskforge.forge.base import DIFFICULTIES, DraftError
from taskforge.forge.families import FAMILIES
from taskforge.forge.generate import task_seed
from taskforge.tasks import NEAR_MISS_DIR, TaskSpec, lint_task, load_task, render_files, write_task

from .conftest import hello_spec

MIN_NEAR_MISSES = 2


def instances(family: str, n: int, seed: int = 15) -> list[TaskSpec]:
    """n instances of one family from fixed seeds, difficulties rotating (easy, medium, hard, ...)."""
    specs = []
    for i in range(n):
        task = task_seed(seed, i, attempt=len(family))
        specs.append(FAMILIES[family].sample(random.Random(task), DIFFICULTIES[i % 3], seed=task))
    return specs


def near_miss_problems(family: str, n: int = 12, seed: int = 15) -> list[str]:
    """What is wrong with the near-misses of n instances of `family`: fewer than MIN_NEAR_MISSES,
    or one that is the reference solution itself. Empty when all is well."""
    problems = []
    for spec in instances(family, n, seed):
        if len(spec.near_misses) < MIN_NEAR_MISSES:
            problems.append(
                f"{spec.name} ({spec.metadata.difficulty}): {len(spec.near_misses)} near-miss(es) "
                f"{sorted(spec.near_misses)}, needs >= {MIN_NEAR_MISSES}"
            )
        for slug, body in spec.near_misses.items():
            if body.strip() == spec.solution.strip():
                problems.append(f"{spec.name}: near-miss {slug} is the reference solution itself")
    return problems


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_instance_ships_near_misses(family):
    problems = near_miss_problems(family)
    assert not problems, "\n".join(problems)


def test_near_misses_render_as_executable_scripts_lint_accepts(tmp_path):
    spec = hello_spec(near_misses={"no_newline": "printf forged > /app/out.txt", "wrong_word": "echo x > /app/out.txt"})
    files = render_files(spec)
    text, mode = files[f"{NEAR_MISS_DIR}/no_newline.sh"]
    assert mode == 0o755 and "printf forged > /app/out.txt" in text and text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    task_dir = write_task(spec, tmp_path / "hello")
    assert lint_task(task_dir) == []
    task = load_task(task_dir)
    assert list(task.near_miss_scripts) == ["no_newline", "wrong_word"]
    assert task.near_miss_scripts["wrong_word"].stat().st_mode & stat.S_IXUSR
    (task_dir / NEAR_MISS_DIR / "notes.txt").write_text("not a script")
    (task_dir / NEAR_MISS_DIR / "wrong_word.sh").chmod(0o644)
    problems = {(p.path.name, p.severity, p.message.split(":")[0]) for p in lint_task(task_dir)}
    assert problems == {
        ("notes.txt", "warning", "not a near-miss solution"),
        ("wrong_word.sh", "error", "not executable"),
    }
    assert list(load_task(task_dir).near_miss_scripts) == ["no_newline", "wrong_word"]


def test_near_miss_names_must_be_slugs():
    with pytest.raises(ValueError, match="near-miss name 'Bad Name'"):
        render_files(hello_spec(near_misses={"Bad Name": "true"}))
    from taskforge.forge.base import Draft, to_spec

    family = FAMILIES["csv_groupby"]
    draft = Draft(instruction="Write /tmp/x.", tests="", solution="true", outputs=["/tmp/x"], near_misses={"a-b": "x"})
    with pytest.raises(DraftError, match="not slugs"):
        to_spec(family, draft, "easy", 0)


def test_a_typing_player_is_not_handed_the_near_misses(tmp_path):
    from taskforge.agent.scripted import solution_command

    task_dir = write_task(hello_spec(near_misses={"no_newline": "printf forged > /app/out.txt"}), tmp_path / "hello")
    assert solution_command(task_dir) == (task_dir / "solution" / "solve.sh").read_text()
