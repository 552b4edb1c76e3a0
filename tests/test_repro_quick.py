"""The ECHO study's --quick mode end to end (generate, SFT, GRPO/ECHO/env-only x 3 seeds, eval,
env CE, report), as CI runs it. It checks the study's shape and bookkeeping, not its outcome."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from .conftest import REPO_ROOT


def test_quick_study_runs_end_to_end(tmp_path, base_image):
    out = tmp_path / "repro"
    completed = subprocess.run(
        [sys.executable, "benchmarks/echo_repro.py", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    seeds = results["study"]["seeds"]
    assert sorted(runs) == sorted(f"{mode}-s{seed}" for mode in ("grpo", "echo", "env-only") for seed in seeds)
    for name, run in runs.items():
        assert run["eval"]["n_trials"] == results["study"]["n_val"] * results["study"]["eval_attempts"], name
        assert math.isfinite(run["env_ce_after"]) and run["env_ce_after"] > 0
        metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == list(range(1, results["study"]["rl_steps"] + 1))
        assert {m["mode"] for m in metrics} == {run["mode"]}
    n_seeds = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    assert [row["policy"] for row in results["table"]] == [
        "expert SFT (start)",
        f"SFT + grpo ({n_seeds})",
        f"SFT + echo ({n_seeds})",
        f"SFT + env-only ({n_seeds})",
    ]
    assert "| policy | held-out pass@1 (95% CI) |" in (out / "results.md").read_text()
    html = (out / "report" / "report.html").read_text()
    assert all(name in html for name in runs) and "data:image/png;base64," in html
