"""The ECHO study's --quick mode end to end (corpus, demonstrations, two SFT starts, GRPO / ECHO /
env-only / control runs, evals, env CE, results.json -> results.md + plots, report), as CI runs it.
It checks the study's shape and bookkeeping, not its outcome."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from .conftest import REPO_ROOT


def test_quick_study_runs_end_to_end(tmp_path, base_image):
    out = tmp_path / "repro"
    # --part prep writes what the seeds' processes share (corpus, transcripts, demonstrations) and
    # stops before any training; the run below reuses it.
    prep = subprocess.run(
        [sys.executable, "benchmarks/echo_repro.py", "--quick", "--part", "prep", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    for shared in ("demonstrations-oracle-text", "demonstrations-explorer", "heldout-transcripts"):
        assert any((out / shared).iterdir()), shared
    assert not list(out.glob("results*.json")) and not (out / "sft-s1").exists()
    completed = subprocess.run(
        [sys.executable, "benchmarks/echo_repro.py", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    study, policies = results["study"], results["policies"]
    (seed,) = study["seeds"]
    assert sorted(policies) == sorted(
        [f"sft-s{seed}", f"sft-env-s{seed}", f"grpo-s{seed}", f"echo0.05-s{seed}", f"env-only-s{seed}"]
        + [f"control-grpo-s{seed}", f"control-echo0.05-s{seed}"]
    )
    for name, policy in policies.items():
        assert len(policy["heldout"]) == study["n_val"], name  # every held-out task, each attempt counted
        assert len(policy["train"]) == study["eval_train_tasks"], name
        assert policy["heldout_eval"]["n_trials"] == study["n_val"] * study["eval_attempts"]
        assert math.isfinite(policy["env_ce"]) and policy["env_ce"] > 0
        if policy["start"] is not None:  # an RL run: its curve is one row per step, in its mode
            assert [row["step"] for row in policy["curve"]] == list(range(1, study["rl_steps"] + 1))
            metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
            assert {m["mode"] for m in metrics} == {policy["mode"]}
            assert policy["start"] == ("sft-env-s1" if name.startswith("control") else "sft-s1")
    # The control start trained on observations: its held-out env CE is below the actions-only start's.
    assert policies[f"sft-env-s{seed}"]["env_ce"] < policies[f"sft-s{seed}"]["env_ce"]

    markdown = (out / "results.md").read_text()
    assert "| SFT + ECHO l=0.05 | 1 |" in markdown and "control: SFT(+env CE) start vs SFT start" in markdown
    assert all((out / png).stat().st_size > 0 for png in ("pass_at_1.png", "env_ce.png", "curves.png"))
    # The table and plots come from results.json alone: rendering again gives the same table.
    (out / "results.md").unlink()
    subprocess.run([sys.executable, "benchmarks/echo_repro.py", "--render", str(out)], cwd=REPO_ROOT, check=True)
    assert (out / "results.md").read_text() == markdown
    html = (out / "report" / "report.html").read_text()
    assert all(name in html for name in policies) and "data:image/png;base64," in html
