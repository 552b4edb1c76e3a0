"""The report reads our runs and Harbor's jobs; its numbers are checked against the fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskforge.report import (
    RunNotFoundError,
    RunSummary,
    format_number,
    format_percent,
    load_run,
    pass_at_k,
    write_report,
)

from .conftest import FIXTURES, REPO_ROOT

# task -> outcomes of 4 attempts: (passed, timed_out, turns, input tokens, output tokens)
EVAL_OUTCOMES = {
    "t1": [(1, 0, 2, 100, 10)] * 4,
    "t2": [(1, 0, 4, 200, 20), (0, 1, 16, 900, 90), (1, 0, 4, 200, 20), (0, 0, 6, 300, 30)],
    "t3": [(0, 0, 16, 800, 80), (0, 1, 16, 800, 80), (0, 0, 16, 800, 80), (0, 0, 16, 800, 80)],
    "t4": [(1, 0, 3, 150, 15), (0, 0, 5, 250, 25), (0, 0, 5, 250, 25), (0, 0, 5, 250, 25)],
}
FAMILIES = {
    "t1": ("csv-sum", "data_processing", "easy"),
    "t2": ("csv-sum", "data_processing", "hard"),
    "t3": ("chmod", "system_operations", "hard"),
    "t4": ("chmod", "system_operations", "easy"),
}


def write_eval_ledger(path: Path, outcomes=EVAL_OUTCOMES) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for task, attempts in outcomes.items():
        for attempt, (passed, timed_out, turns, n_in, n_out) in enumerate(attempts):
            task_dir = path.parent / "tasks" / task
            task_dir.mkdir(parents=True, exist_ok=True)
            family, domain, difficulty = FAMILIES[task]
            (task_dir / "task.toml").write_text(
                f'[metadata]\nfamily = "{family}"\ndomain = "{domain}"\ndifficulty = "{difficulty}"\n'
            )
            lines.append(
                json.dumps(
                    {
                        "task_name": f"sample/{task}",
                        "task_path": str(task_dir),
                        "trial_name": f"{task}__{attempt}",
                        "agent": "policy",
                        "attempt": attempt,
                        "reward": float(passed),
                        "agent_timed_out": bool(timed_out),
                        "error_type": "AgentTimeoutError" if timed_out else None,
                        "n_turns": turns,
                        "n_input_tokens": n_in,
                        "n_output_tokens": n_out,
                        "trial_dir": "x",
                        "finished_at": "2026-01-01T00:00:00",
                    }
                )
            )
    path.write_text("\n".join(lines) + "\n")


def write_train_run(
    run_dir: Path, steps: int, planned: int, *, env_ce: tuple[float, float] | None, checkpoint: bool, torn: bool = False
) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"steps": planned, "mode": "echo"}))
    rows = [
        json.dumps({"step": s, "reward_mean": 0.1 * s, "pass_rate": 0.05 * s, "env_ce": 3.0 - 0.2 * s})
        for s in range(1, steps + 1)
    ]
    text = "\n".join(rows) + "\n"
    if torn:
        text += '{"step": 99, "reward_me'
    (run_dir / "metrics.jsonl").write_text(text)
    if checkpoint:
        (run_dir / "checkpoints" / f"step-{steps}").mkdir(parents=True)
    if env_ce is not None:
        (run_dir / "env_ce.json").write_text(json.dumps({"before": env_ce[0], "after": env_ce[1]}))


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)


def test_report_numbers_match_the_fixture_runs(tmp_path):
    eval_run = tmp_path / "eval-echo"
    write_eval_ledger(eval_run / "ledger.jsonl")
    echo = tmp_path / "echo"
    write_train_run(echo, steps=5, planned=5, env_ce=(2.0, 1.5), checkpoint=True)
    write_eval_ledger(echo / "eval" / "ledger.jsonl")
    harbor_job = FIXTURES / "runs" / "harbor-oracle-k3"

    summaries = [load_run(eval_run), load_run(echo), load_run(harbor_job)]
    evaluated, trained, harbor = summaries

    overall = evaluated.overall
    assert (overall.n_tasks, overall.n_trials) == (4, 16)
    assert overall.pass_at_1 == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    assert overall.pass_at_k[2] == pytest.approx((1 + (1 - 1 / 6) + 0 + 0.5) / 4)
    assert overall.timeout_rate == pytest.approx(2 / 16)
    turns = [t for attempts in EVAL_OUTCOMES.values() for (_, _, t, _, _) in attempts]
    assert overall.mean_turns == pytest.approx(sum(turns) / 16)
    assert overall.mean_output_tokens == pytest.approx(sum(a[4] for v in EVAL_OUTCOMES.values() for a in v) / 16)
    lo, hi = overall.pass_at_1_ci
    assert 0 <= lo < overall.pass_at_1 < hi <= 1
    assert evaluated.by_domain["data_processing"].pass_at_1 == pytest.approx(0.75)
    assert evaluated.by_difficulty["hard"].pass_at_1 == pytest.approx(0.25)
    assert evaluated.by_family["chmod"].pass_at_1 == pytest.approx(0.125)

    assert trained.kind == "train" and len(trained.curves) == 5
    assert (trained.env_ce_before, trained.env_ce) == (2.0, 1.5)
    assert trained.missing == []

    assert harbor.kind == "harbor-job"
    assert (harbor.overall.n_trials, harbor.overall.pass_at_1) == (3, 1.0)
    assert harbor.overall.pass_at_k[2] == 1.0

    md_path, html_path = write_report(summaries, tmp_path / "report")
    markdown = md_path.read_text()
    assert "| eval-echo | trials | 4 | 16 | 43.8% |" in markdown
    assert "| 12.5% |" in markdown
    assert "| echo | train | 4 | 16 | 43.8% |" in markdown and "| 1.500 | 2.000 |" in markdown
    assert "| harbor-oracle-k3 | harbor-job | 1 | 3 | 100.0% |" in markdown
    for png in ("curve_reward_mean.png", "curve_pass_rate.png", "curve_env_ce.png", "bars.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "<td>43.8%</td>" in html
    assert 'src="http' not in html  # self-contained


def test_numbers_are_formatted_as_the_report_and_cli_show_them():
    assert (format_percent(0.4375), format_percent(1.0), format_percent(None)) == ("43.8%", "100.0%", "-")
    assert (format_number(7.5), format_number(1234.4, 0), format_number(1.5, 3)) == ("7.5", "1,234", "1.500")
    assert format_number(None) == "-"


def test_the_html_report_escapes_run_names_and_notes(tmp_path):
    odd = RunSummary(name="<i>odd</i> & run", path=str(tmp_path), kind="trials", missing=["<script>alert(1)</script>"])
    _, html_path = write_report([odd], tmp_path / "report")
    html = html_path.read_text()
    assert "<i>odd" not in html and "<script>" not in html
    assert "<td>&lt;i&gt;odd&lt;/i&gt; &amp; run</td>" in html
    assert "<li>&lt;i&gt;odd&lt;/i&gt; &amp; run: &lt;script&gt;alert(1)&lt;/script&gt;</li>" in html


def test_a_half_written_run_is_reported_with_what_is_missing(tmp_path):
    crashed = tmp_path / "crashed"
    write_train_run(crashed, steps=3, planned=10, env_ce=None, checkpoint=False, torn=True)
    summary = load_run(crashed)
    assert len(summary.curves) == 3
    text = "\n".join(summary.missing)
    assert "3 of 10 training steps logged" in text
    assert "torn line" in text
    assert "no checkpoint saved" in text
    assert "no eval ledger" in text

    killed = tmp_path / "killed-validate"
    write_eval_ledger(killed / "ledger.jsonl", {"t1": EVAL_OUTCOMES["t1"][:2]})
    with (killed / "ledger.jsonl").open("a") as handle:
        handle.write('{"task_name": "sample/t2", "rew')
    (killed / "trials" / "t2__0").mkdir(parents=True)
    summary = load_run(killed)
    assert summary.overall.n_trials == 2
    assert any("without result.json" in m and "t2__0" in m for m in summary.missing)


def test_report_cli_rejects_unknown_paths_clearly(tmp_path):
    with pytest.raises(RunNotFoundError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="not a run: expected ledger.jsonl"):
        load_run(tmp_path / "empty")
    completed = subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "report", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 2 and "not a run" in completed.stderr
