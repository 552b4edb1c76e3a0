"""Symptom-style diagnosis families: hidden causes and decoys, the task's own turn cap, the symptom share.

The Docker test reads the shared validation of one sample task per family (tests/conftest.py
family_validation: oracle 1, nop 0, every near-miss 0: the decoy fixed instead of the cause, the job
run as root, one of two causes fixed); the four diagnosis tasks there span easy, medium and hard.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from taskforge.agent.episode import EpisodeConfig
from taskforge.agent.loop import run_episode
from taskforge.agent.policy import PolicyReply
from taskforge.forge.base import DIFFICULTIES
from taskforge.forge.families import FAMILIES
from taskforge.forge.families.diagnosis import (
    HARD_MAX_TURNS,
    ConfigRejected,
    CronJobNeverRuns,
    FailingTestData,
    ReportToolFails,
)
from taskforge.forge.generate import generate, symptom_share, task_seed
from taskforge.sandbox.docker import DockerSandbox
from taskforge.tasks import TaskLoadError, load_task, write_task

from .conftest import FIXTURES

DIAGNOSIS = [CronJobNeverRuns.name, ReportToolFails.name, ConfigRejected.name, FailingTestData.name]


def specs_of(family: str, difficulty: str, n: int = 30):
    for i in range(n):
        seed = task_seed(15, i)
        yield FAMILIES[family].sample(random.Random(seed), difficulty, seed=seed)


def expected_of(spec) -> dict:
    source = spec.tests["test_outputs.py"]
    line = next(line for line in source.splitlines() if line.startswith("EXPECTED = "))
    return json.loads(json.loads(line.removeprefix("EXPECTED = json.loads(").removesuffix(")")))


@pytest.mark.parametrize("family", DIAGNOSIS)
def test_medium_and_hard_state_a_symptom_and_hide_the_cause(family):
    for difficulty in DIFFICULTIES:
        for spec in specs_of(family, difficulty):
            extra = spec.metadata.extra
            assert extra["style"] == ("spec" if difficulty == "easy" else "symptom"), spec.name
            assert extra.get("max_turns") == (HARD_MAX_TURNS if difficulty == "hard" else None), spec.name
            assert len(spec.near_misses) >= 2 and "fixes_decoy" in spec.near_misses, spec.name
            if difficulty == "hard":
                assert "first_cause_only" in spec.near_misses and len(extra["causes"].split()) == 2
            expected = expected_of(spec)
            assert expected["untouched"], f"{spec.name}: no decoy"
            if difficulty == "easy":
                continue
            # The symptom names the outcome (and the program that shows it), never the file at fault or a decoy.
            allowed = {expected.get(key) for key in ("tool", "daemon")}
            decoys = [path for path in expected["untouched"] if path not in allowed]
            files = [rel.removeprefix("files") for rel in spec.environment_files if rel.startswith("files/")]
            named = [path for path in files if path in spec.instruction]
            assert not set(named) - allowed, f"{spec.name}: the instruction names {named}"
            assert not any(decoy in spec.instruction for decoy in decoys), spec.name


def test_causes_and_decoys_vary():
    causes = Counter(
        cause
        for family in DIAGNOSIS
        for spec in specs_of(family, "medium", 60)
        for cause in spec.metadata.extra["causes"].split()
    )
    assert {"file_mode", "file_name", "no_user", "wrong_path", "bare_command", "no_exec", "dir_owner"} <= set(causes)
    assert {"crlf", "shebang", "env_key", "missing_dir", "misspelt", "unit", "alias"} <= set(causes)
    assert {"decimal_comma", "semicolon", "bom"} <= set(causes)


def test_symptom_share_is_computed(tmp_path):
    families = [*DIAGNOSIS, "csv_groupby"]
    summary = generate(24, 3, tmp_path / "set", families=families, jobs=1, progress=False)
    styles = Counter()
    for row in (tmp_path / "set" / "manifest.jsonl").read_text().splitlines():
        task = load_task(tmp_path / "set" / json.loads(row)["path"])
        styles[(task.metadata["difficulty"], task.metadata.get("style", "spec"))] += 1
    medium_hard = sum(c for (d, _), c in styles.items() if d != "easy")
    symptom = sum(c for (d, s), c in styles.items() if d != "easy" and s == "symptom")
    assert symptom_share(styles) == summary["symptom_share_medium_hard"] == round(symptom / medium_hard, 4)
    assert 0 < summary["symptom_share_medium_hard"] < 1  # csv_groupby's medium and hard tasks are spec-style
    assert json.loads((tmp_path / "set" / "summary.json").read_text())["symptom_share_medium_hard"] == round(
        symptom / medium_hard, 4
    )
    assert symptom_share(Counter({("easy", "symptom"): 3})) is None


# ------------------------------------------------------------------------------------------
# The task's turn cap reaches the loop


class NeverDone:
    """Thinks aloud forever: no command, never done. Only the turn cap ends its episode."""

    name = "never-done"

    def next_action(self, messages):
        return PolicyReply(text="still thinking")


def hard_task(tmp_path: Path):
    spec = next(specs_of(CronJobNeverRuns.name, "hard", 1))
    return load_task(write_task(spec, tmp_path / "hard"))


def test_task_max_turns_is_read_and_checked(tmp_path):
    assert hard_task(tmp_path).max_turns == HARD_MAX_TURNS
    assert load_task(FIXTURES / "harbor-hello").max_turns is None
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "harbor-hello", broken)
    toml = broken / "task.toml"
    toml.write_text(toml.read_text().replace("[metadata]\n", '[metadata]\nmax_turns = "many"\n'))
    with pytest.raises(TaskLoadError, match="max_turns must be a whole number"):
        _ = load_task(broken).max_turns


@pytest.mark.docker
def test_turn_cap_comes_from_the_task(tmp_path, base_image):
    task, plain = hard_task(tmp_path), load_task(FIXTURES / "harbor-hello")
    default = EpisodeConfig(max_turns=3)
    with DockerSandbox(base_image) as sandbox:
        capped = run_episode(task, sandbox, NeverDone(), default)
        uncapped = run_episode(plain, sandbox, NeverDone(), default)
        opted_out = run_episode(task, sandbox, NeverDone(), default.model_copy(update={"task_max_turns": False}))
    assert capped.stop_reason == "max_turns" and len(capped.turns) == HARD_MAX_TURNS
    assert capped.config.max_turns == HARD_MAX_TURNS and str(HARD_MAX_TURNS) in capped.system_prompt
    assert uncapped.stop_reason == "max_turns" and len(uncapped.turns) == 3  # no max_turns: the default
    assert len(opted_out.turns) == 3


# ------------------------------------------------------------------------------------------
# In Docker: oracle 1, nop 0, every near-miss (the decoy fixed instead of the cause) 0


@pytest.mark.docker
def test_one_task_per_family_validates_across_the_difficulties(family_validation):
    results = [family_validation[family] for family in DIAGNOSIS]
    failed = [f"{r.task_name}: {r.status} {r.detail}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    # One difficulty per family, every difficulty once at least (hard: two causes, first_cause_only).
    assert {load_task(Path(r.task_path)).metadata["difficulty"] for r in results} == set(DIFFICULTIES)
    for result in results:
        assert result.oracle_reward == 1.0 and result.nop_reward == 0.0
        assert len(result.near_miss_rewards) >= 2 and set(result.near_miss_rewards.values()) == {0.0}, result
        assert "fixes_decoy" in result.near_miss_rewards
    assert any("first_cause_only" in r.near_miss_rewards for r in results)
