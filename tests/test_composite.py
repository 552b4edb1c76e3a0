"""Composite families: stages drawn per task, ground truth composed in the stated order, near-misses."""

from __future__ import annotations

import random
import re

import pytest

from taskforge.forge.base import DIFFICULTIES
from taskforge.forge.families import FAMILIES
from taskforge.forge.families.composite import SYMPTOM_SHARE, CompositeFamily, Menu, compose
from taskforge.forge.families.diagnosis import HARD_MAX_TURNS
from taskforge.forge.skeleton import instruction_skeleton, solution_skeleton
from taskforge.tasks import write_task
from taskforge.validate import validate_tasks

COMPOSITE = sorted(name for name, family in FAMILIES.items() if isinstance(family, CompositeFamily))


def test_three_composite_families_are_registered():
    assert COMPOSITE == ["restore_and_report", "restore_and_ship", "tidy_and_verify"]


@pytest.mark.parametrize("name", COMPOSITE)
def test_every_draw_names_its_outputs_and_ships_near_misses(name):
    family = FAMILIES[name]
    for difficulty in DIFFICULTIES:
        for seed in range(60):
            spec = family.sample(random.Random(seed), difficulty, seed=seed)  # to_spec checks the outputs are named
            stages = spec.metadata.extra["stages"].split()
            assert len(stages) == {"easy": 2, "medium": 3}.get(difficulty, len(stages)) and len(stages) >= 2
            assert len(spec.near_misses) >= 2, f"{spec.name}: {spec.near_misses}"
            assert all(body != spec.solution for body in spec.near_misses.values())
            assert "if False" not in spec.solution and "None is not None" not in spec.solution


@pytest.mark.parametrize("name", COMPOSITE)
def test_one_family_composes_many_programs(name):
    """Distinct skeletons among 60 hard draws: composition, not new data, makes them differ."""
    specs = [FAMILIES[name].sample(random.Random(seed), "hard", seed=seed) for seed in range(60)]
    assert len({instruction_skeleton(s.instruction) for s in specs}) >= 50
    assert len({solution_skeleton(s.solution) for s in specs}) >= 40


def test_the_stated_order_changes_the_expected_checksums():
    """Checksums taken before the junk is deleted list the junk; after, they do not."""
    menu = Menu(sources=(), fixes=("junk",), reports=("checksums",))
    seen = {}
    for seed in range(40):
        draft = compose(random.Random(seed), menu, "easy", "t")
        stages = draft.extra["stages"]
        listed = [line for line in draft.solution.splitlines() if "sha256sum" in line or "-delete" in line]
        seen.setdefault(stages, (draft, listed))
    assert set(seen) == {"junk checksums", "checksums junk"}
    for stages, (draft, listed) in seen.items():
        junk_listed = any(n.endswith((".tmp", ".bak", ".old")) for n in _digests(draft))
        assert junk_listed == (stages == "checksums junk"), stages
        assert ("sha256sum" in listed[0]) == (stages == "checksums junk")


@pytest.mark.parametrize("name", COMPOSITE)
def test_goal_style_tasks_hide_what_a_look_around_shows_and_hold_a_decoy(name):
    """Medium and hard tasks are mostly goal-style: no archive name, junk pattern, measure column or
    "CRLF" in the text; a decoy copy the tests check is left alone; hard ones get more turns."""
    styles = {difficulty: [] for difficulty in DIFFICULTIES}
    for difficulty in DIFFICULTIES:
        for seed in range(60):
            spec = FAMILIES[name].sample(random.Random(seed), difficulty, seed=seed)
            extra, text = spec.metadata.extra, spec.instruction
            styles[difficulty].append(extra["style"])
            expected = _expected(spec.tests["test_outputs.py"])
            if extra["style"] == "spec":
                assert "untouched" not in expected and "max_turns" not in extra
                continue
            decoy = next(iter(expected["untouched"])).rsplit("/", 1)[0]
            assert f"`{decoy}`" in text and "test_decoy_copy_left_alone" in spec.tests["test_outputs.py"]
            assert extra.get("max_turns") == (HARD_MAX_TURNS if difficulty == "hard" else None)
            assert "CRLF" not in text and ".csv.gz" not in text, spec.name  # the agent finds them
            assert not re.search(r"backups?/[^`]*\.(tar|zip)", text), spec.name  # which backup: the newest
            for pattern in expected.get("junk_patterns", []):
                assert f"`{pattern}`" not in text, spec.name
            for want in expected.get("aggregates", []):
                value = want["header"][1]
                assert value in ("rows", "total", "mean", "max", "min"), want["header"]
    assert set(styles["easy"]) == {"spec"}
    for difficulty in ("medium", "hard"):
        share = styles[difficulty].count("symptom") / len(styles[difficulty])
        assert share >= SYMPTOM_SHARE[difficulty] - 0.15, (difficulty, share)


def _expected(tests: str) -> dict:
    import json
    import re

    return json.loads(json.loads(re.search(r"EXPECTED = json.loads\((.*)\)\n", tests).group(1)))


def _digests(draft) -> dict:
    import json
    import re

    embedded = re.search(r"EXPECTED = json.loads\((.*)\)\n", draft.tests).group(1)
    return json.loads(json.loads(embedded))["checksums"]["digests"]


@pytest.mark.docker
def test_one_task_per_composite_family_and_difficulty_validates(tmp_path, base_image):
    """Oracle 1.0, nop 0.0 and every near-miss 0.0, in one validate call with 2 jobs."""
    for name in COMPOSITE:
        for i, difficulty in enumerate(DIFFICULTIES):
            spec = FAMILIES[name].sample(random.Random(100 + i), difficulty, seed=100 + i)
            write_task(spec, tmp_path / "tasks" / spec.name.split("/", 1)[1])
    results = validate_tasks([tmp_path / "tasks"], tmp_path / "run", jobs=2)
    assert len(results) == 3 * len(COMPOSITE)
    # The goal-style draws are among them, with the near-misses only they have (older backup, decoy).
    near_miss_names = {name for r in results for name in r.near_miss_rewards}
    assert {"restores_an_older_backup", "cleans_the_decoy_too"} <= near_miss_names
    failed = [f"{r.task_name}: {r.status} {r.detail}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    assert all(r.oracle_reward == 1.0 and r.nop_reward == 0.0 for r in results)
    assert all(r.near_miss_rewards and set(r.near_miss_rewards.values()) == {0.0} for r in results)
