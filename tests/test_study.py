"""The study's design, checked without running it: demonstrations fit the per-turn budget, the
split is fair, and the statistics behave as their docstrings say."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace

import pytest

from taskforge.commands.pipeline import DEMO_SIZE, check_demonstration_budget, generate_corpus
from taskforge.tasks import discover_task_dirs
from trainer.model import load_policy
from trainer.sft import demonstration_actions, longest_demonstration_action

from .conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("echo_repro", REPO_ROOT / "benchmarks" / "echo_repro.py")
echo_repro = importlib.util.module_from_spec(_spec)
sys.modules["echo_repro"] = echo_repro  # dataclasses look their module up while the class is built
_spec.loader.exec_module(echo_repro)


@pytest.mark.parametrize("size", [echo_repro.FULL, echo_repro.QUICK, DEMO_SIZE], ids=["full", "quick", "demo"])
def test_no_demonstration_reply_is_cut_by_the_turn_budget(tmp_path, size):
    """Every reply the demonstrator types (with its end-of-turn token) fits max_new_tokens, so the
    policy is never trained on replies it could not finish; and the held-out cells are trained."""
    train_dir, val_dir = generate_corpus(size, tmp_path)
    task_dirs = discover_task_dirs([train_dir, val_dir])
    assert len(task_dirs) == size.n_train + size.n_val
    _, tokenizer = load_policy("tiny")
    longest, _ = longest_demonstration_action(tokenizer, task_dirs, size.demonstrator)
    assert 0 < longest <= size.max_new_tokens
    assert check_demonstration_budget(size, train_dir, val_dir) == longest
    # Explorer demonstrations are 3 commands and DONE: the episode must allow them all.
    assert max(len(demonstration_actions(d, size.demonstrator)) for d in task_dirs) <= size.max_turns

    def cells(split: str) -> set:
        rows = (tmp_path / "tasks" / split / "manifest.jsonl").read_text().splitlines()
        return {(json.loads(r)["family"], json.loads(r)["difficulty"]) for r in rows}

    assert cells("val") <= cells("train")


def test_a_budget_that_would_cut_a_demonstration_is_refused(tmp_path):
    size = replace(echo_repro.QUICK, max_new_tokens=20)
    train_dir, val_dir = generate_corpus(size, tmp_path)
    with pytest.raises(ValueError, match="Raise max_new_tokens to >="):
        check_demonstration_budget(size, train_dir, val_dir)


def test_hierarchical_ci_hand_checked():
    ci = echo_repro.hierarchical_ci
    # One seed, one task: no spread at all.
    assert ci([{"t": 0.25}]) == (0.25, 0.25, 0.25)
    # Identical seeds of identical tasks: the interval is the point.
    assert ci([{"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}]) == (0.5, 0.5, 0.5)
    # Two seeds that disagree completely (all 0 vs all 1): the point is 0.5 and resampling seeds
    # reaches both extremes (both draws the same seed: p = 1/2 per rep), so the interval is [0, 1].
    point, lo, hi = ci([{"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}])
    assert (point, lo, hi) == (0.5, 0.0, 1.0)
    # Pooling tasks x seeds would call two tasks x many seeds precise; the seed level keeps it wide.
    _, lo_one, hi_one = ci([{"a": 0.0, "b": 1.0}])
    assert lo_one == 0.0 and hi_one == 1.0
    assert all(math.isnan(v) for v in ci([]))


def test_paired_effects_use_the_same_seed_and_tasks():
    a = [{"t1": 1.0, "t2": 0.5}, {"t1": 0.0}]
    b = [{"t1": 0.5, "t2": 0.5, "t3": 1.0}, {"t1": 0.25}]
    assert echo_repro.paired(a, b) == [{"t1": 0.5, "t2": 0.0}, {"t1": -0.25}]


def test_study_plan_has_every_comparison_the_claims_need():
    full = echo_repro.FULL
    plan = echo_repro.run_plan(full)
    groups = Counter(run["group"] for run in plan)
    seeds = len(full.seeds)
    assert seeds >= 3 and full.group_size >= 8 and full.eval_attempts >= 4
    assert groups["SFT + GRPO"] == groups["SFT + env-only"] == groups["SFT + ECHO l=0.05"] == seeds
    assert groups["SFT(+env CE) + GRPO"] == groups["SFT(+env CE) + ECHO l=0.05"] == seeds
    lambdas = {run["lambda"] for run in plan if run["mode"] == "echo"}
    assert len(lambdas) >= 3 and 0.05 in lambdas
    learning_rates = {run.get("lr", full.rl_lr) for run in plan if run["mode"] == "grpo"}
    assert len(learning_rates) >= 3
    assert all(run["start"].startswith("sft-env-") == run["group"].startswith("SFT(+env CE)") for run in plan)
    assert len({run["name"] for run in plan}) == len(plan)


def test_sweeps_stay_at_the_designs_first_seed_and_run_after_every_seeds_comparison():
    """`--seeds 2,3` in its own process must not move the sweeps to seed 2; and a study stopped
    early has every seed's comparison before the sweeps."""
    plan = echo_repro.run_plan(echo_repro.FULL)
    sweep_groups = ("SFT + ECHO l=0.001", "SFT + ECHO l=0.01", "SFT + ECHO l=0.2")
    is_sweep = [" lr=" in run["group"] or run["group"] in sweep_groups for run in plan]
    sweeps = [run for run, sweep in zip(plan, is_sweep, strict=True) if sweep]
    assert sweeps and {run["seed"] for run in sweeps} == {1}
    first_sweep = is_sweep.index(True)
    assert all(is_sweep[first_sweep:]), "a main run comes after a sweep"
    assert {run["seed"] for run in plan[:first_sweep]} == set(echo_repro.FULL.seeds)
    # `--part sweeps` selects exactly these, `--part main` the rest
    assert [run["part"] == "sweeps" for run in plan] == is_sweep


def _seed_results(seed: int, held_out: float, study: dict) -> dict:
    eval_row = {"timeout_rate": 0.0, "mean_turns": 2.0, "mean_output_tokens": 50.0, "error_rate": 0.0}
    policy = lambda group, rate: {  # noqa: E731
        "group": group,
        "seed": seed,
        "heldout": {"t1": rate, "t2": rate},
        "train": {"a": rate},
        "env_ce": 2.0,
        "heldout_eval": eval_row,
    }
    return {
        "study": study,
        "seeds_run": [seed],
        "longest_demonstration_tokens": 70,
        "policies": {f"sft-s{seed}": policy("SFT start", 0.25), f"grpo-s{seed}": policy("SFT + GRPO", held_out)},
        "complete": True,
        "wall_seconds": 60.0 * seed,
    }


def test_combined_seeds_give_one_table_with_intervals_over_seeds(tmp_path):
    study = {"seeds": [1, 2, 3], "n_train": 300}
    parts = [_seed_results(1, 0.5, study), _seed_results(2, 0.75, study)]
    merged = echo_repro.combine(parts, [tmp_path / "s1", tmp_path / "s2"])
    assert merged["seeds_run"] == [1, 2] and set(merged["policies"]) == {"sft-s1", "grpo-s1", "sft-s2", "grpo-s2"}
    assert merged["wall_seconds"] == 120.0 and merged["process_seconds"] == 180.0
    rows, effects = echo_repro.summarise(merged)
    grpo = next(row for row in rows if row["group"] == "SFT + GRPO")
    assert grpo["seeds"] == 2 and grpo["heldout"][0] == pytest.approx(0.625)
    effect = next(e for e in effects if e["effect"] == "SFT + GRPO vs SFT start")
    assert effect["seeds"] == 2 and effect["heldout"][0] == pytest.approx(0.375)
    # The header counts the seeds that have results, against the design's 3.
    with_design = merged | {"study": asdict(echo_repro.FULL)}
    assert "; 2 seed(s) of the 3 in the design;" in echo_repro.render_markdown(with_design, rows, effects)
    # Another design, a policy twice, or another held-out set: refused, not averaged together.
    with pytest.raises(SystemExit, match="another study"):
        echo_repro.combine([parts[0], _seed_results(2, 0.75, study | {"n_train": 100})], [tmp_path, tmp_path])
    # A sweeps part run with one value more (its design grew after the main parts ran) is the same
    # study; the merged design lists every value.
    grown = _seed_results(1, 0.5, study | {"lambda_sweep": [0.001, 0.01]})
    grown["policies"] = {"echo0.001-s1": grown["policies"]["grpo-s1"] | {"group": "SFT + ECHO l=0.001"}}
    merged = echo_repro.combine([parts[0] | {"study": study | {"lambda_sweep": [0.01]}}, grown], [tmp_path, tmp_path])
    assert merged["study"]["lambda_sweep"] == [0.001, 0.01] and merged["study"]["n_train"] == 300
    # A start both parts evaluated (a main part and a sweeps part at seed 1) is one policy; a policy
    # with two different results is refused.
    sweeps = _seed_results(1, 0.5, study)
    sweeps["policies"]["grpo-lr0.001-s1"] = sweeps["policies"].pop("grpo-s1") | {"group": "SFT + GRPO lr=0.001"}
    assert set(echo_repro.combine([parts[0], sweeps], [tmp_path, tmp_path])["policies"]) == {
        "sft-s1",
        "grpo-s1",
        "grpo-lr0.001-s1",
    }
    sweeps["policies"]["sft-s1"] = sweeps["policies"]["sft-s1"] | {"env_ce": 3.0}
    with pytest.raises(SystemExit, match="in two of the combined runs, with different results"):
        echo_repro.combine([parts[0], sweeps], [tmp_path, tmp_path])
    other = _seed_results(2, 0.75, study)
    other["policies"]["grpo-s2"]["heldout"] = {"t9": 1.0}
    with pytest.raises(SystemExit, match="different held-out tasks"):
        echo_repro.combine([parts[0], other], [tmp_path, tmp_path])


def test_smollm2_study_is_the_sft_start_then_grpo_and_echo():
    study = echo_repro.POLICY_SIZES["smollm2-135m"]
    assert study.policy == "smollm2-135m" and study.group_size >= 8 and study.eval_attempts >= 4
    plan = echo_repro.run_plan(study)
    assert [(run["name"], run["start"]) for run in plan] == [("grpo-s1", "sft-s1"), ("echo0.05-s1", "sft-s1")]


def test_throughput_divides_tokens_by_the_time_each_phase_took():
    results = {
        "policies": {
            "sft-s1": {"sft_curve": [{"tokens": 1000, "seconds": 10.0}, {"tokens": 1000, "seconds": 30.0}]},
            "grpo-s1": {
                "curve": [
                    {"tokens": 600, "action_tokens": 100, "rollout_seconds": 4.0, "seconds": 10.0},
                    {"tokens": 600, "action_tokens": 200, "rollout_seconds": 2.0, "seconds": 2.0 + 6.0},
                ]
            },
        }
    }
    assert echo_repro.throughput(results) == {
        "sft_tokens_per_s": 50.0,  # 2000 tokens / 40 s
        "rl_sampling_action_tokens_per_s": 50.0,  # 300 action tokens / 6 s of rollouts
        "rl_training_tokens_per_s": 100.0,  # 1200 tokens / 12 s of updates
    }


def test_a_run_folder_with_another_corpus_is_refused_not_reused(tmp_path):
    """Resuming reuses the corpus on disk; one made for other settings (an older demo) is named."""
    generate_corpus(echo_repro.QUICK, tmp_path)
    assert generate_corpus(echo_repro.QUICK, tmp_path)[0] == tmp_path / "tasks" / "train"  # same settings: resumed
    with pytest.raises(ValueError, match=r"holds another corpus \(n: 9 there, 10 now\).*Delete"):
        generate_corpus(replace(echo_repro.QUICK, n_train=7), tmp_path)


def test_demo_on_a_folder_of_an_older_demo_exits_2_with_what_to_do(tmp_path):
    generate_corpus(echo_repro.QUICK, tmp_path)  # an older, different corpus in the folder
    done = subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert done.returncode == 2, done.stderr
    assert "holds another corpus" in done.stderr and "Traceback" not in done.stderr
