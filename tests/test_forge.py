"""The procedural generator without Docker: determinism, distinctness, metadata, layout, lint, CLI."""

from __future__ import annotations

import ast
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import typer
from harbor.models.registry import Registry
from harbor.models.task.config import TaskConfig
from typer.testing import CliRunner

from taskforge.commands.tasks import generate as generate_command
from taskforge.forge import dedup
from taskforge.forge.base import DIFFICULTIES, DOMAINS, GENERATOR_VERSION, PARAM_POOL
from taskforge.forge.families import FAMILIES
from taskforge.forge.generate import GenerateError, generate, schedule, schedule_weight, task_seed, val_indices
from taskforge.tasks import lint_task, load_task, render_files

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tasks" / "sample"
# Two rounds of the schedule: 2 tasks per family, 2 x schedule_weight for a composite family.
SAMPLE_SEED, SAMPLE_N = 1, 2 * sum(schedule_weight(f) for f in FAMILIES)  # tasks/README.md says how it was made
NETWORK_WORDS = re.compile(r"\b(apt-get|apt|pip3?|curl|wget|npm|git clone|docker pull)\b")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sample_specs():
    """One spec per family x difficulty, from fixed seeds."""
    for name, family in FAMILIES.items():
        for difficulty in DIFFICULTIES:
            seed = task_seed(2024, len(name) * 7 + DIFFICULTIES.index(difficulty))
            yield family.sample(random.Random(seed), difficulty, seed=seed)


@pytest.fixture(scope="module")
def specs():
    return list(sample_specs())


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    """2,000 generated tasks, shared by the distinctness tests."""
    out = tmp_path_factory.mktemp("big") / "set"
    summary = generate(2000, 99, out, jobs=2, progress=False)
    return out, summary


# ------------------------------------------------------------------------------------------
# Families


def test_family_catalogue_spans_three_domains():
    by_domain = Counter(f.domain for f in FAMILIES.values())
    assert len(FAMILIES) >= 24
    assert set(by_domain) == set(DOMAINS)
    assert all(count >= 6 for count in by_domain.values()), by_domain


def test_metadata_and_limits(specs):
    for spec in specs:
        meta = spec.metadata
        assert meta.family in FAMILIES and meta.domain == FAMILIES[meta.family].domain
        assert meta.difficulty in DIFFICULTIES and meta.generator_version == GENERATOR_VERSION
        assert meta.extra["param_pool"] == PARAM_POOL and meta.extra["outputs"]
        assert spec.name == f"taskforge/{meta.family}-{meta.difficulty}-{spec.name.rsplit('-', 1)[1]}"
        config = TaskConfig.model_validate_toml(render_files(spec)["task.toml"][0])
        assert config.agent.timeout_sec == 600 and config.verifier.timeout_sec == 120
        assert config.environment.build_timeout_sec == 600 and config.environment.cpus == 1
        assert config.environment.memory_mb <= 2048
        assert config.metadata["family"] == meta.family and config.metadata["seed"] == meta.seed


def test_same_rng_same_task_and_seed_changes_data():
    family = FAMILIES["csv_groupby"]
    a = family.sample(random.Random(5), "hard", seed=5)
    b = family.sample(random.Random(5), "hard", seed=5)
    c = family.sample(random.Random(6), "hard", seed=6)
    assert a == b
    assert a.environment_files != c.environment_files and a.tests != c.tests


def test_difficulty_changes_the_task(specs):
    by_family: dict[str, dict[str, object]] = {}
    for spec in specs:
        by_family.setdefault(spec.metadata.family, {})[spec.metadata.difficulty] = spec
    for family, levels in by_family.items():
        easy, medium, hard = levels["easy"], levels["medium"], levels["hard"]
        assert len({easy.instruction, medium.instruction, hard.instruction}) == 3, family
        assert easy.tests != hard.tests and easy.solution != hard.solution, family
    mean = {d: sum(len(by_family[f][d].instruction) for f in by_family) / len(by_family) for d in DIFFICULTIES}
    assert mean["easy"] < mean["medium"] < mean["hard"], mean


def test_instruction_names_every_checked_path(specs):
    for spec in specs:
        for path in spec.metadata.extra["outputs"].split():
            assert path in spec.instruction, f"{spec.name}: instruction does not name {path}"
            assert path in spec.tests["test_outputs.py"], f"{spec.name}: tests do not check {path}"


def test_instructions_state_outcomes_not_commands(specs):
    for spec in specs:
        assert "solve.sh" not in spec.instruction and "EXPECTED" not in spec.instruction
        assert len(spec.instruction) < 1400, f"{spec.name}: instruction too long ({len(spec.instruction)} chars)"


def test_environment_is_offline_and_holds_no_answers(specs):
    for spec in specs:
        files = render_files(spec)
        dockerfile = files["environment/Dockerfile"][0]
        for line in dockerfile.splitlines()[1:]:
            assert line.split()[0] in {"COPY", "RUN", "ENTRYPOINT", "WORKDIR"}, (
                f"{spec.name}: unexpected Dockerfile line {line!r}"
            )
            assert not NETWORK_WORDS.search(line), f"{spec.name}: network use in {line!r}"
        setup = spec.environment_files.get("setup.sh", "")
        assert not NETWORK_WORDS.search(setup.replace("git init", "").replace("git add", "")), (
            f"{spec.name}: network use in setup.sh"
        )
        for rel, text in spec.environment_files.items():
            assert "EXPECTED" not in text and "test_outputs" not in text, f"{spec.name}: {rel} leaks the tests"
            assert not rel.startswith(("tests/", "solution/")) and Path(rel).name not in {"solve.sh", "test.sh"}


def test_tests_are_pytest_modules_that_assert(specs):
    for spec in specs:
        source = spec.tests["test_outputs.py"]
        tree = ast.parse(source)
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        assert tests, spec.name
        for fn in tests:
            asserts = [n for n in ast.walk(fn) if isinstance(n, ast.Assert)]
            helpers = [
                n
                for n in ast.walk(fn)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id.startswith("check_")
            ]
            assert asserts or helpers, f"{spec.name}: {fn.name} asserts nothing"
        assert "skip" not in source and "xfail" not in source, f"{spec.name}: tests must not skip"
        expected = json.loads(
            ast.literal_eval(
                next(n.value.args[0] for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "EXPECTED")
            )
        )
        assert expected, spec.name


def test_solution_is_bash_that_computes(specs):
    for spec in specs:
        rendered = render_files(spec)["solution/solve.sh"][0]
        assert rendered.startswith("#!/bin/bash") and "set -euo pipefail" in rendered
        assert spec.solution.strip()


# ------------------------------------------------------------------------------------------
# Generator


def test_task_seeds_are_stable_and_independent_of_python_hash():
    assert task_seed(1, 0) == task_seed(1, 0)
    assert task_seed(1, 0) == 1919272745753489354  # sha256-based: the same on every machine and Python
    assert len({task_seed(1, i) for i in range(1000)}) == 1000


def test_schedule_is_fair():
    families = list(FAMILIES)
    plan = schedule(6000, families, DIFFICULTIES)
    cells = Counter(plan)
    assert len(cells) == len(families) * len(DIFFICULTIES)
    per_slot = [count / schedule_weight(family) for (family, _), count in cells.items()]
    assert max(per_slot) - min(per_slot) <= 1
    slots = sum(schedule_weight(f) for f in families)
    first_round = Counter(f for f, _ in plan[:slots])
    assert first_round == {f: schedule_weight(f) for f in families}


def test_val_split_is_family_stratified():
    plan = schedule(600, list(FAMILIES), DIFFICULTIES)
    held = val_indices(plan, 2 * len(FAMILIES))
    per_family = Counter(plan[i][0] for i in held)
    assert len(held) == 2 * len(FAMILIES) and set(per_family) == set(FAMILIES) and set(per_family.values()) == {2}
    assert len({plan[i][1] for i in held}) == 3


@pytest.mark.parametrize(
    ("n", "val", "families", "difficulties"),
    [
        (144, 24, list(FAMILIES), DIFFICULTIES),  # the old study's split: 0 of its 24 held-out cells trained
        (600, 58, list(FAMILIES), DIFFICULTIES),
        (60, 20, list(FAMILIES)[:5], DIFFICULTIES),
        (45, 30, list(FAMILIES)[:3], DIFFICULTIES),  # 5 per cell: up to 4 held out each
    ],
)
def test_every_held_out_cell_is_also_in_training(n, val, families, difficulties):
    """A held-out (family, difficulty) cell always has training tasks too: each difficulty of a family
    is a different program, so a cell seen only at evaluation tests a skill no training task shows."""
    plan = schedule(n, families, difficulties)
    held = val_indices(plan, val)
    assert len(held) == val
    training_cells = {plan[i] for i in range(n) if i not in held}
    held_cells = {plan[i] for i in held}
    assert held_cells <= training_cells, held_cells - training_cells


def test_val_split_that_would_empty_a_cell_is_refused():
    plan = schedule(30, list(FAMILIES)[:5], DIFFICULTIES)  # 2 per cell: at most 1 of each held out
    assert len(val_indices(plan, 15)) == 15
    with pytest.raises(GenerateError, match="one training task left per cell"):
        val_indices(plan, 16)
    # The old demo's split (56 tasks over 29 families x 3 difficulties): no cell has two tasks.
    with pytest.raises(GenerateError, match="at most 0 can be held out"):
        val_indices(schedule(56, [f for f in FAMILIES if schedule_weight(f) == 1][:29], DIFFICULTIES), 8)


def test_generated_split_puts_held_out_cells_in_training(tmp_path):
    """The same property on disk: the manifests of `generate --val` (what the study reads)."""
    summary = generate(48, 5, tmp_path / "set", families=list(FAMILIES)[:4], val=12, progress=False)
    assert summary["val"] == 12

    def cells(split: str) -> Counter:
        rows = (tmp_path / "set" / split / "manifest.jsonl").read_text().splitlines()
        return Counter((json.loads(r)["family"], json.loads(r)["difficulty"]) for r in rows)

    held, trained = cells("val"), cells("train")
    assert sum(held.values()) == 12 and set(held) <= set(trained)


def test_same_seed_gives_byte_identical_output(tmp_path):
    """Same seed and n: the same bytes with 1 or 2 workers and under another PYTHONHASHSEED
    (iterating a set of strings while drawing from the rng would differ there)."""
    a, b, d = tmp_path / "a", tmp_path / "b", tmp_path / "d"
    generate(290, 11, a, jobs=1, progress=False, val=12)
    generate(290, 11, b, jobs=2, progress=False, val=12)
    script = (
        "from pathlib import Path; from taskforge.forge.generate import generate; "
        f"generate(290, 11, Path({str(d)!r}), jobs=2, progress=False, val=12)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=REPO)
    left, right, other = tree_bytes(a), tree_bytes(b), tree_bytes(d)
    assert len(left) > 290 * 6
    assert left == right
    assert left == other
    c = tmp_path / "c"
    generate(90, 12, c, jobs=2, progress=False)
    names_a = {
        json.loads(line)["name"]
        for split in ("train", "val")
        for line in (a / split / "manifest.jsonl").read_text().splitlines()
    }
    names_c = {json.loads(line)["name"] for line in (c / "manifest.jsonl").read_text().splitlines()}
    assert len(names_c) == 90 and not names_a & names_c


def test_layout_manifest_and_registry(tmp_path):
    out = tmp_path / "gen"
    # 6 families x 3 difficulties: 3-4 tasks per cell, so 9 can be held out with every cell still trained.
    summary = generate(60, 3, out, list(FAMILIES)[:6], jobs=2, progress=False, val=9)
    assert summary["n"] == 60 and summary["val"] == 9
    for split, count in (("train", 51), ("val", 9)):
        set_dir = out / split
        manifest = [json.loads(line) for line in (set_dir / "manifest.jsonl").read_text().splitlines()]
        assert len(manifest) == count
        for row in manifest:
            assert set(row) == {
                "name",
                "family",
                "domain",
                "difficulty",
                "seed",
                "path",
                "instruction_skeleton",
                "solution_skeleton",
            }
            task = load_task(set_dir / row["path"])
            assert task.name == row["name"] and task.metadata["seed"] == row["seed"]
            assert row["name"] == f"taskforge/{row['path']}"
        registry = Registry.from_path(set_dir / "registry.json")
        (dataset,) = registry.datasets
        assert dataset.name == f"taskforge-{split}" and dataset.version == f"{GENERATOR_VERSION}-seed3"
        assert sorted(t.path.as_posix() for t in dataset.tasks) == sorted(r["path"] for r in manifest)
        assert all((set_dir / t.path / "task.toml").is_file() for t in dataset.tasks)
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["sets"]["val"]["tasks"] == 9 and "seconds" not in summary_file


def test_manifest_seed_reproduces_the_task(tmp_path):
    out = tmp_path / "gen"
    generate(29, 8, out, jobs=2, progress=False)
    for line in (out / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        spec = FAMILIES[row["family"]].sample(random.Random(row["seed"]), row["difficulty"], seed=row["seed"])
        assert spec.name == row["name"]
        for rel, (text, _) in render_files(spec).items():
            assert (out / row["path"] / rel).read_text() == text, f"{row['path']}/{rel} differs from a fresh sample"


def test_generate_refuses_to_overwrite_and_rejects_bad_arguments(tmp_path):
    out = tmp_path / "x"
    generate(3, 1, out, jobs=1, progress=False)
    with pytest.raises(GenerateError, match="not empty"):
        generate(3, 1, out, jobs=1, progress=False)
    generate(3, 1, out, jobs=1, progress=False, force=True)
    with pytest.raises(GenerateError, match="unknown families"):
        generate(3, 1, tmp_path / "y", families=["nope"], progress=False)
    with pytest.raises(GenerateError, match="unknown difficulties"):
        generate(3, 1, tmp_path / "z", difficulties=["extreme"], progress=False)


def test_family_and_difficulty_filters(tmp_path):
    summary = generate(
        12,
        4,
        tmp_path / "f",
        families=["cron_schedule", "sqlite_report"],
        difficulties=["hard"],
        jobs=1,
        progress=False,
    )
    assert summary["by_family"] == {"cron_schedule": 6, "sqlite_report": 6}
    assert summary["by_difficulty"] == {"hard": 12}


def test_skeleton_cap_spreads_programs_and_a_saturated_family_still_finishes(tmp_path):
    """Under a cap of 1 a family with several programs per cell shows more of them in its first tasks;
    a cell with fewer programs than tasks keeps its over-cap draws (counted) instead of looping."""
    uncapped = generate(24, 6, tmp_path / "a", families=["csv_groupby"], jobs=1, progress=False, skeleton_cap=1000)
    capped = generate(24, 6, tmp_path / "b", families=["csv_groupby"], jobs=2, progress=False, skeleton_cap=1)
    assert capped["skeletons"]["solution"] > uncapped["skeletons"]["solution"]
    assert capped["skeletons"]["redrawn_over_cap"] > 0 and uncapped["skeletons"]["redrawn_over_cap"] == 0
    rows = [json.loads(line) for line in (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()]
    assert len({r["solution_skeleton"] for r in rows}) == capped["skeletons"]["solution"]
    generate(24, 6, tmp_path / "c", families=["csv_groupby"], jobs=1, progress=False, skeleton_cap=1)
    assert (tmp_path / "c" / "manifest.jsonl").read_text() == (tmp_path / "b" / "manifest.jsonl").read_text()
    saturated = generate(30, 2, tmp_path / "d", families=["makefile_build"], jobs=1, progress=False, skeleton_cap=2)
    programs = saturated["skeletons"]
    assert saturated["n"] == 30 and programs["over_cap"] >= 30 - 2 * programs["solution"]
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["skeletons"] == programs


def test_distinct_over_2000_tasks(big_set):
    out, summary = big_set
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2000 and len({r["name"] for r in rows}) == 2000
    counts = Counter((r["family"], r["difficulty"]) for r in rows)
    per_slot = [count / schedule_weight(family) for (family, _), count in counts.items()]
    assert max(per_slot) - min(per_slot) <= 1
    normalised = [dedup.normalise((out / r["path"] / "instruction.md").read_text()) for r in rows]
    assert len(set(normalised)) == 2000, "two tasks share a normalised instruction"
    environments = []
    for r in rows:
        env = out / r["path"] / "environment"
        environments.append(
            json.dumps(sorted((p.relative_to(env).as_posix(), p.read_text()) for p in env.rglob("*") if p.is_file()))
        )
    assert len(set(zip(normalised, environments, strict=True))) == 2000, "two tasks share instruction and environment"
    assert len(set(environments)) == 2000, "two tasks share an environment (the data must be drawn per task)"


def test_near_duplicate_rate_over_2000_tasks(big_set):
    """Near-duplicate: character 5-gram Jaccard >= 0.95 between normalised instructions.

    Every same-family pair (about 68k pairs; other families use other templates) plus 20k random
    cross-family pairs are measured exactly; the generator redraws near-duplicates, so the rate is 0.
    """
    out, _ = big_set
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    grams = [dedup.shingles(dedup.normalise((out / r["path"] / "instruction.md").read_text())) for r in rows]
    by_family: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_family.setdefault(r["family"], []).append(i)
    pairs = [p for members in by_family.values() for p in itertools.combinations(members, 2)]
    rng = random.Random(0)
    pairs += [tuple(rng.sample(range(len(rows)), 2)) for _ in range(20_000)]
    near = [
        (rows[a]["name"], rows[b]["name"])
        for a, b in pairs
        if dedup.jaccard(grams[a], grams[b]) >= dedup.NEAR_DUPLICATE_JACCARD
    ]
    assert len(pairs) > 80_000
    assert near == [], f"{len(near)} near-duplicate pairs, e.g. {near[:3]}"


def test_near_duplicate_index_finds_near_copies(specs):
    index = dedup.NearDuplicateIndex()
    base = dedup.normalise(specs[0].instruction)
    index.add("fam", base, dedup.signature(base))
    copy = re.sub(r"\d", lambda m: str((int(m.group(0)) + 1) % 10), base, count=1)  # one digit changed
    assert dedup.jaccard(dedup.shingles(base), dedup.shingles(copy)) >= dedup.NEAR_DUPLICATE_JACCARD
    assert index.find("fam", copy, dedup.signature(copy)) == 0
    other = dedup.normalise(specs[-1].instruction)
    assert dedup.jaccard(dedup.shingles(base), dedup.shingles(other)) < 0.5
    assert index.find("fam", other, dedup.signature(other)) is None
    assert index.find("other-family", base, dedup.signature(base)) is None


# ------------------------------------------------------------------------------------------
# The committed sample set


def test_sample_set_is_what_the_generator_writes(tmp_path):
    fresh = tmp_path / "sample"
    generate(SAMPLE_N, SAMPLE_SEED, fresh, jobs=2, progress=False)
    assert tree_bytes(fresh) == {k: v for k, v in tree_bytes(SAMPLE).items()}, (
        "tasks/sample is stale: regenerate it as tasks/README.md says"
    )


def test_sample_covers_every_family_and_lints_clean():
    manifest = [json.loads(line) for line in (SAMPLE / "manifest.jsonl").read_text().splitlines()]
    assert Counter(r["family"] for r in manifest) == {name: 2 * schedule_weight(name) for name in FAMILIES}
    for row in manifest:
        task_dir = SAMPLE / row["path"]
        problems = lint_task(task_dir)
        assert problems == [], f"{task_dir}: {[str(p) for p in problems]}"
        assert (
            not (task_dir / "environment" / "tests").exists() and not (task_dir / "environment" / "solution").exists()
        )
        test_sh = (task_dir / "tests" / "test.sh").read_text()
        assert "rm -f /logs/verifier/reward.txt /logs/verifier/reward.json" in test_sh


# ------------------------------------------------------------------------------------------
# CLI


def test_generate_command(tmp_path):
    app = typer.Typer()
    app.command("generate")(generate_command)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "generate",
            "--n",
            "8",
            "--seed",
            "2",
            "--out",
            str(tmp_path / "cli"),
            "--families",
            "csv_join,env_merge",
            "--val",
            "2",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 tasks" in result.output and "harbor run --registry-path registry.json" in result.output
    assert len((tmp_path / "cli" / "val" / "manifest.jsonl").read_text().splitlines()) == 2
    again = runner.invoke(app, ["generate", "--n", "8", "--out", str(tmp_path / "cli")])
    assert again.exit_code == 2 and "not empty" in again.output
    listing = runner.invoke(app, ["generate", "--list-families"])
    assert listing.exit_code == 0 and "python_bugfix" in listing.output
