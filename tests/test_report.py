"""The report reads our runs and Harbor's jobs; its numbers are checked against the fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskforge.report import (
    RunNotFoundError,
    RunSummary,
    comparison_rows,
    format_number,
    format_percent,
    load_run,
    pass_at_k,
    report_figures,
    write_report,
    y_range,
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
    run_dir: Path,
    steps: int,
    planned: int,
    *,
    env_ce: tuple[float, float] | None,
    checkpoint: bool,
    torn: bool = False,
    step_keys: dict[str, list] | None = None,
) -> None:
    """A training run's directory; step_keys: metrics.jsonl key -> one value per step, over the defaults."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"steps": planned, "mode": "echo"}))
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward_mean": 0.1 * s, "pass_rate": 0.05 * s, "env_ce": 3.0 - 0.2 * s}
        row.update({key: values[s - 1] for key, values in (step_keys or {}).items()})
        rows.append(json.dumps(row))
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
    pngs = (
        "curve_reward_mean.png",
        "curve_pass_rate.png",
        "curve_signal_group_share.png",  # not logged by this run: the plot says "not measured"
        "curve_output_tokens_per_episode.png",
        "curve_env_ce.png",
        "bars.png",
    )
    for png in pngs:
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
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


def test_training_runs_show_whether_the_steps_had_a_learning_signal(tmp_path):
    learning = tmp_path / "learning"
    write_train_run(
        learning,
        steps=4,
        planned=4,
        env_ce=None,
        checkpoint=True,
        step_keys={
            "signal_group_share": [0.5, 0.25, 0.0, 1.0],
            "obs_tokens": [120, 0, 0, 40],
            "output_tokens_per_episode": [30.0, 50.0, 10.0, 20.0],
        },
    )
    older = tmp_path / "older"  # logged before these keys existed
    write_train_run(older, steps=2, planned=2, env_ce=None, checkpoint=True)
    eval_only = tmp_path / "eval-only"
    write_eval_ledger(eval_only / "ledger.jsonl")

    learning_row, older_row, eval_row = comparison_rows([load_run(learning), load_run(older), load_run(eval_only)])
    assert learning_row["groups with signal"] == "43.8%"  # (0.5 + 0.25 + 0 + 1) / 4
    assert learning_row["steps without obs tokens"] == "2 of 4"
    assert learning_row["output tokens/episode"] == "27.5"  # (30 + 50 + 10 + 20) / 4
    for row in (older_row, eval_row):
        assert (row["groups with signal"], row["steps without obs tokens"], row["output tokens/episode"]) == (
            "-",
            "-",
            "-",
        )

    md_path, _ = write_report([load_run(learning)], tmp_path / "report")
    markdown = md_path.read_text()
    assert "| groups with signal | steps without obs tokens | output tokens/episode |" in markdown
    assert "| 43.8% | 2 of 4 | 27.5 |" in markdown
    for png in ("curve_signal_group_share.png", "curve_output_tokens_per_episode.png"):
        assert f"![{png}]({png})" in markdown


def _axis_notes(ax) -> list[str]:
    return [text.get_text() for text in ax.texts]


def test_y_range_of_shares_all_zero_and_unmeasured_series():
    assert y_range([0.0, 0.0], fixed=(0.0, 1.0)) == ((0.0, 1.0), "all zero")
    assert y_range([0.2, 0.4], fixed=(0.0, 1.0)) == ((0.0, 1.0), None)
    assert y_range([0.0, 0.0, 0.0]) == ((0.0, 1.0), "all zero")  # not the 1e-9 axis of old
    assert y_range([0.0, 0.0], from_zero=True) == ((0.0, 1.0), "all zero")
    assert y_range([None, None]) == ((0.0, 1.0), "not measured")
    assert y_range([2.0, None, 4.0], from_zero=True) == ((0.0, pytest.approx(4.6)), None)
    assert y_range([2.0, 3.0]) == (None, None)  # a measured, non-zero series: matplotlib's autoscale


def test_plots_of_all_zero_and_unmeasured_series_have_sensible_axes(tmp_path):
    stuck = tmp_path / "stuck"  # a policy that never ran a command: nothing to learn from
    write_train_run(
        stuck,
        steps=3,
        planned=3,
        env_ce=None,
        checkpoint=True,
        step_keys={
            "pass_rate": [0.0, 0.0, 0.0],
            "signal_group_share": [0.0, 0.0, 0.0],
            "obs_tokens": [0, 0, 0],
            "output_tokens_per_episode": [0.0, 0.0, 0.0],
            "env_ce": [None, None, None],
        },
    )
    write_eval_ledger(stuck / "eval" / "ledger.jsonl", {"t1": [(0, 0, 1, 10, 0)] * 2})

    figures = report_figures([load_run(stuck)])
    share_axes = figures["curve_signal_group_share.png"].axes[0]
    assert share_axes.get_ylim() == (0.0, 1.0) and _axis_notes(share_axes) == ["all zero"]
    assert figures["curve_pass_rate.png"].axes[0].get_ylim() == (0.0, 1.0)
    tokens_axes = figures["curve_output_tokens_per_episode.png"].axes[0]
    assert tokens_axes.get_ylim() == (0.0, 1.0) and _axis_notes(tokens_axes) == ["all zero"]
    env_ce_axes = figures["curve_env_ce.png"].axes[0]
    assert _axis_notes(env_ce_axes) == ["not measured"] and env_ce_axes.get_ylim() == (0.0, 1.0)
    assert "stuck (not measured)" in [t.get_text() for t in env_ce_axes.get_legend().get_texts()]

    bars = {ax.get_title(): ax for ax in figures["bars.png"].axes}
    assert bars["pass@1 (%)"].get_ylim() == (0.0, 100.0) and _axis_notes(bars["pass@1 (%)"]) == ["all zero"]
    assert bars["output tokens"].get_ylim() == (0.0, 1.0)  # zero output tokens: not a 1e-9 axis
    assert bars["turns"].get_ylim() == (0.0, pytest.approx(1.15))


def test_errored_trials_are_counted_apart_from_failures(tmp_path):
    run = tmp_path / "flaky-infra"
    ledger = run / "ledger.jsonl"
    write_eval_ledger(ledger)  # 16 graded trials, 7 passed
    task_dir = run / "tasks" / "t1"
    errored = [("VerifierTimeoutError", 4), ("SandboxError", 5), ("SandboxError", 6)]
    with ledger.open("a") as handle:
        for error_type, attempt in errored:
            record = {
                "task_name": "sample/t1",
                "task_path": str(task_dir),
                "trial_name": f"t1__{attempt}",
                "agent": "policy",
                "attempt": attempt,
                "reward": None,
                "error_type": error_type,
                "trial_dir": "x",
                "finished_at": "2026-01-01T00:00:00",
            }
            handle.write(json.dumps(record) + "\n")

    summary = load_run(run)
    overall = summary.overall
    assert (overall.n_trials, overall.n_errored) == (19, 3)
    assert overall.errored_by_kind == {"sandbox_error": 2, "verifier_timeout": 1}
    # pass@1 stays over all trials: t1 passed 4 of 7, the errored three count as not passed
    assert overall.pass_at_1 == pytest.approx((4 / 7 + 0.5 + 0 + 0.25) / 4)
    (row,) = comparison_rows([summary])
    assert row["errored"] == "3 (15.8%)"
    assert row["timeouts"] == "10.5%"  # 2 agent timeouts of 19: graded, so failures, not errored

    md_path, html_path = write_report([summary], tmp_path / "report")
    markdown = md_path.read_text()
    assert "| pass@1 | 95% CI | errored | timeouts |" in markdown
    assert "| 3 (15.8%) | 10.5% |" in markdown
    assert "- flaky-infra: 3 of 19 trials errored (sandbox_error 2, verifier_timeout 1)" in markdown
    assert "| domain | flaky-infra pass@1 | flaky-infra errored |" in markdown
    assert "| data_processing | 53.6% | 3 (27.3%) |" in markdown  # t1 (7 trials, 3 errored) and t2 (4)
    assert "| system_operations | 12.5% | 0 (0.0%) |" in markdown
    html = html_path.read_text()
    assert "<th>errored</th>" in html and "<td>3 (15.8%)</td>" in html


def test_a_filter_run_shows_requested_against_measured_difficulty(tmp_path):
    from taskforge.filter import FilterReport, TaskFilterResult, bucket_of

    run = tmp_path / "filter-run"
    write_eval_ledger(run / "ledger.jsonl")
    results = []
    for task, attempts in EVAL_OUTCOMES.items():
        n_passed = sum(passed for passed, *_ in attempts)
        results.append(
            TaskFilterResult(
                task_name=f"sample/{task}",
                task_path=str(run / "tasks" / task),
                n_attempts=len(attempts),
                n_passed=n_passed,
                n_errors=0,
                pass_rate=n_passed / len(attempts),
                difficulty=bucket_of(n_passed / len(attempts)),
                # t4 as an older filter.json has it: no requested difficulty (read from its task.toml)
                requested_difficulty=None if task == "t4" else FAMILIES[task][2],
                kept=n_passed > 0,
                n_input_tokens=0,
                n_output_tokens=0,
                stop_reasons={},
            )
        )
    report = FilterReport(
        run_dir=str(run), backend="docker", model="m", attempts=4, min_success=1, thresholds={}, tasks=results
    )
    (run / "filter.json").write_text(report.model_dump_json())

    # t1 easy -> easy (4/4), t4 easy -> hard (1/4), t2 hard -> medium (2/4), t3 hard -> unsolved (0/4)
    summary = load_run(run)
    assert summary.measured_difficulty == {"easy": {"easy": 1, "hard": 1}, "hard": {"medium": 1, "unsolved": 1}}
    md_path, html_path = write_report([summary], tmp_path / "report")
    markdown = md_path.read_text()
    assert "## Requested vs measured difficulty: filter-run" in markdown
    assert "| requested | easy | medium | hard | extreme | unsolved | tasks |" in markdown
    for row in (
        "| easy | 1 | 0 | 1 | 0 | 0 | 2 |",
        "| hard | 0 | 1 | 0 | 0 | 1 | 2 |",
        "| all | 1 | 1 | 1 | 0 | 1 | 4 |",
    ):
        assert row in markdown
    assert "Requested vs measured difficulty: filter-run" in html_path.read_text()

    cli = subprocess.run(
        [sys.executable, "-m", "taskforge.cli", "report", str(run), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "Requested vs measured difficulty: filter-run" in cli.stdout
    assert "│ hard      │    0 │      1 │    0 │       0 │        1 │     2 │" in cli.stdout
