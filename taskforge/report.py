"""Reading runs (ours and Harbor's) into comparable summaries, and writing the report.

A run is any of:
- a taskforge trials run (validate, filter, eval): runs/<run>/ledger.jsonl of TrialRecord lines;
- a taskforge training run: runs/<run>/metrics.jsonl (one JSON object per step), optionally with
  an eval ledger of its own (runs/<run>/eval/ledger.jsonl) and env_ce.json;
- a Harbor job directory: jobs/<job>/{config.json, result.json, <trial>/result.json}.
Half-written runs (a crash, a kill) are read for what they hold; what is missing is listed.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import tomllib
from collections import defaultdict
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import NamedTuple, get_args

import jinja2
from pydantic import BaseModel, Field

from taskforge.filter import FilterReport, PassRateBucket
from taskforge.tasks import TEMPLATES_DIR
from taskforge.trial import error_kind


class RunNotFoundError(ValueError):
    """A path that is not a run taskforge can read; the message says what a run looks like."""


class TrialRow(BaseModel):
    """One attempt of one task, whichever tool ran it."""

    task_name: str
    task_path: str | None = None
    attempt: int = 0
    reward: float | None = None
    error_type: str | None = None
    timed_out: bool = False
    n_turns: int | None = None
    n_input_tokens: int | None = None
    n_output_tokens: int | None = None
    family: str | None = None
    domain: str | None = None
    difficulty: str | None = None

    @property
    def passed(self) -> bool:
        return self.reward is not None and self.reward >= 1.0


class GroupStats(BaseModel):
    n_tasks: int
    n_trials: int
    pass_at_1: float | None
    pass_at_1_ci: tuple[float, float] | None = None
    pass_at_k: dict[int, float] = Field(default_factory=dict)
    timeout_rate: float | None = None
    mean_turns: float | None = None
    mean_input_tokens: float | None = None
    mean_output_tokens: float | None = None
    # Errored: no reward at all (sandbox, build or verifier failure); pass@1 counts them as not passed.
    error_rate: float | None = None
    n_errored: int = 0
    errored_by_kind: dict[str, int] = Field(default_factory=dict)  # error_kind -> trials


class TrainingStats(BaseModel):
    """Whether RL had anything to learn from, over a training run's logged steps. None: not logged
    by this run (older runs lack signal_group_share and output_tokens_per_episode)."""

    steps_logged: int
    # mean over steps of the share of a step's groups whose rewards were not all equal (non-zero advantage)
    signal_group_share: float | None = None
    steps_without_obs_tokens: int | None = None  # steps where the policy ran no command at all
    steps_with_obs_tokens_logged: int | None = None
    output_tokens_per_episode: float | None = None  # mean over steps of sampled action tokens per rollout


class RunSummary(BaseModel):
    name: str
    path: str
    kind: str  # "trials", "train" or "harbor-job"
    overall: GroupStats | None = None
    by_family: dict[str, GroupStats] = Field(default_factory=dict)
    by_domain: dict[str, GroupStats] = Field(default_factory=dict)
    by_difficulty: dict[str, GroupStats] = Field(default_factory=dict)
    curves: list[dict] = Field(default_factory=list)  # metrics.jsonl rows of a training run
    training: TrainingStats | None = None  # from curves, for a training run
    env_ce: float | None = None  # held-out environment-token cross-entropy, when measured
    env_ce_before: float | None = None
    # A filter run's tasks counted by requested difficulty (task.toml) -> measured bucket (filter.bucket_of).
    measured_difficulty: dict[str, dict[str, int]] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=list)  # what a half-written run lacks


# ---------------------------------------------------------------------------------------------
# statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} attempts, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_ci(
    values: list[float], *, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over tasks (deterministic with `seed`)."""
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = means[int((1 - level) / 2 * samples)]
    hi = means[min(samples - 1, int((1 + level) / 2 * samples))]
    return (lo, hi)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_stats(rows: list[TrialRow]) -> GroupStats:
    errored = [r for r in rows if r.reward is None]
    errored_by_kind: dict[str, int] = defaultdict(int)
    for row in errored:
        errored_by_kind[error_kind(row.error_type) or "unknown"] += 1
    by_task: dict[str, list[TrialRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_path or row.task_name].append(row)
    per_task_rate = [sum(r.passed for r in attempts) / len(attempts) for attempts in by_task.values()]
    min_attempts = min((len(a) for a in by_task.values()), default=0)
    ks = [k for k in (1, 2, 4, 8, 16) if k <= min_attempts]
    pass_k = {
        k: sum(pass_at_k(len(a), sum(r.passed for r in a), k) for a in by_task.values()) / len(by_task) for k in ks
    }
    return GroupStats(
        n_tasks=len(by_task),
        n_trials=len(rows),
        pass_at_1=_mean(per_task_rate),
        pass_at_1_ci=bootstrap_ci(per_task_rate) if per_task_rate else None,
        pass_at_k=pass_k,
        timeout_rate=_mean([float(r.timed_out) for r in rows]),
        mean_turns=_mean([r.n_turns for r in rows if r.n_turns is not None]),
        mean_input_tokens=_mean([r.n_input_tokens for r in rows if r.n_input_tokens is not None]),
        mean_output_tokens=_mean([r.n_output_tokens for r in rows if r.n_output_tokens is not None]),
        error_rate=len(errored) / len(rows) if rows else None,
        n_errored=len(errored),
        errored_by_kind=dict(sorted(errored_by_kind.items())),
    )


def obs_tokens_of(step: dict) -> int | None:
    """Observation tokens of a step's batch (older runs called the key n_obs_tokens); None: not logged."""
    for key in ("obs_tokens", "n_obs_tokens"):
        if step.get(key) is not None:
            return step[key]
    return None


def training_stats(curves: list[dict]) -> TrainingStats:
    shares = [c["signal_group_share"] for c in curves if c.get("signal_group_share") is not None]
    obs_tokens = [n for n in map(obs_tokens_of, curves) if n is not None]
    output_tokens = [c["output_tokens_per_episode"] for c in curves if c.get("output_tokens_per_episode") is not None]
    return TrainingStats(
        steps_logged=len(curves),
        signal_group_share=_mean(shares),
        steps_without_obs_tokens=sum(1 for n in obs_tokens if n == 0) if obs_tokens else None,
        steps_with_obs_tokens_logged=len(obs_tokens) if obs_tokens else None,
        output_tokens_per_episode=_mean(output_tokens),
    )


# ---------------------------------------------------------------------------------------------
# reading runs


@cache
def _task_metadata(task_path: str) -> dict:
    try:
        data = tomllib.loads((Path(task_path) / "task.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    metadata = data.get("metadata", {})
    # Harbor's own sets call the domain "category"
    return {
        "family": metadata.get("family"),
        "domain": metadata.get("domain") or metadata.get("category"),
        "difficulty": metadata.get("difficulty"),
    }


def _with_metadata(row: TrialRow) -> TrialRow:
    if row.task_path and (row.family is None or row.domain is None or row.difficulty is None):
        meta = _task_metadata(row.task_path)
        row = row.model_copy(update={k: getattr(row, k) or meta.get(k) for k in ("family", "domain", "difficulty")})
    return row


def rows_from_ledger(ledger_path: Path, missing: list[str], agents: set[str] | None = None) -> list[TrialRow]:
    rows = []
    lines = ledger_path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            missing.append(f"{ledger_path}:{number}: a torn line (the run was killed while writing it); ignored")
            continue
        if agents is not None and record.get("agent") not in agents:
            continue
        rows.append(
            _with_metadata(
                TrialRow(
                    task_name=record["task_name"],
                    task_path=record.get("task_path"),
                    attempt=record.get("attempt", 0),
                    reward=record.get("reward"),
                    error_type=record.get("error_type"),
                    timed_out=bool(record.get("agent_timed_out"))
                    or error_kind(record.get("error_type")) == "agent_timeout",
                    n_turns=record.get("n_turns"),
                    n_input_tokens=record.get("n_input_tokens"),
                    n_output_tokens=record.get("n_output_tokens"),
                )
            )
        )
    return rows


def rows_from_harbor_job(job_dir: Path, missing: list[str]) -> list[TrialRow]:
    """Trials of a `harbor run` job directory (each <trial>/result.json is Harbor's TrialResult)."""
    rows = []
    for trial_dir in sorted(p for p in job_dir.iterdir() if p.is_dir()):
        result_path = trial_dir / "result.json"
        if not result_path.is_file():
            missing.append(f"{trial_dir}: no result.json (trial interrupted or still running)")
            continue
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            missing.append(f"{result_path}: unreadable JSON (written half-way?)")
            continue
        rewards = (result.get("verifier_result") or {}).get("rewards") or {}
        reward = rewards.get("reward", _mean(list(rewards.values())) if rewards else None)
        exception = (result.get("exception_info") or {}).get("exception_type")
        agent_result = result.get("agent_result") or {}
        task_path = ((result.get("config") or {}).get("task") or {}).get("path")
        rows.append(
            _with_metadata(
                TrialRow(
                    task_name=result.get("task_name", trial_dir.name),
                    task_path=task_path,
                    reward=reward,
                    error_type=exception,
                    timed_out=error_kind(exception) == "agent_timeout",
                    n_turns=_harbor_turns(trial_dir),
                    n_input_tokens=agent_result.get("n_input_tokens"),
                    n_output_tokens=agent_result.get("n_output_tokens"),
                )
            )
        )
    return rows


def _harbor_turns(trial_dir: Path) -> int | None:
    """Agent turns from the ATIF trajectory terminus-2 writes (agent/trajectory.json)."""
    trajectory = trial_dir / "agent" / "trajectory.json"
    if not trajectory.is_file():
        return None
    try:
        steps = json.loads(trajectory.read_text()).get("steps", [])
    except (json.JSONDecodeError, AttributeError):
        return None
    return sum(1 for step in steps if step.get("source") == "agent") or None


def load_run(path: Path) -> RunSummary:
    """Reads any run directory into a summary; raises RunNotFoundError for anything else."""
    path = Path(path)
    if not path.exists():
        raise RunNotFoundError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunNotFoundError(
            f"{path}: not a directory; pass a run directory (runs/<run>) or a Harbor job directory (jobs/<job>)"
        )
    missing: list[str] = []
    summary = RunSummary(name=path.name, path=str(path), kind="trials")
    rows: list[TrialRow] = []
    if (path / "metrics.jsonl").is_file():
        summary.kind = "train"
        summary.curves = _read_jsonl(path / "metrics.jsonl", missing)
        summary.training = training_stats(summary.curves)
        _check_training_run(path, summary, missing)
        for ledger in (path / "eval" / "ledger.jsonl", path / "ledger.jsonl"):
            if ledger.is_file():
                rows = rows_from_ledger(ledger, missing)
                break
        else:
            missing.append(f"{path}: no eval ledger (eval/ledger.jsonl): pass@1 is not measured for this run")
    elif (path / "ledger.jsonl").is_file():
        # A validate run holds oracle and nop trials: report the oracle's; nop is a control.
        agents = _ledger_agents(path / "ledger.jsonl")
        rows = rows_from_ledger(path / "ledger.jsonl", missing, agents=(agents - {"nop"}) or agents)
        _check_trials_run(path, missing)
    elif (path / "config.json").is_file() and any(p.is_dir() for p in path.iterdir()):
        summary.kind = "harbor-job"
        rows = rows_from_harbor_job(path, missing)
        if not (path / "result.json").is_file():
            missing.append(f"{path}: no result.json: the Harbor job did not finish")
    else:
        raise RunNotFoundError(
            f"{path}: not a run: expected ledger.jsonl (validate/filter/eval), metrics.jsonl (train) "
            "or a Harbor job (config.json + trial folders)"
        )
    if (path / "filter.json").is_file():
        summary.measured_difficulty = measured_difficulty_counts(path / "filter.json", missing)
    env_ce_path = path / "env_ce.json"
    if env_ce_path.is_file():
        env = json.loads(env_ce_path.read_text())
        summary.env_ce, summary.env_ce_before = env.get("after", env.get("env_ce")), env.get("before")
    elif summary.curves and any("heldout_env_ce" in c for c in summary.curves):
        measured = [c["heldout_env_ce"] for c in summary.curves if c.get("heldout_env_ce") is not None]
        summary.env_ce_before, summary.env_ce = measured[0], measured[-1]
    if rows:
        summary.overall = group_stats(rows)
        for attribute, target in (
            ("family", summary.by_family),
            ("domain", summary.by_domain),
            ("difficulty", summary.by_difficulty),
        ):
            groups: dict[str, list[TrialRow]] = defaultdict(list)
            for row in rows:
                groups[getattr(row, attribute) or "unknown"].append(row)
            target.update({k: group_stats(v) for k, v in sorted(groups.items())})
    elif summary.kind != "train":
        missing.append(f"{path}: no finished trial yet")
    summary.missing = missing
    return summary


def measured_difficulty_counts(filter_json: Path, missing: list[str]) -> dict[str, dict[str, int]]:
    """requested difficulty -> measured bucket -> tasks, from a filter run's filter.json. The requested
    difficulty is filter.json's (older runs: the task's task.toml), "unknown" when neither says."""
    try:
        report = FilterReport.model_validate_json(filter_json.read_text())
    except (OSError, ValueError) as exc:
        missing.append(f"{filter_json}: unreadable ({exc}); no requested vs measured difficulty")
        return {}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for task in report.tasks:
        requested = task.requested_difficulty or _task_metadata(task.task_path).get("difficulty") or "unknown"
        counts[requested][task.difficulty] += 1
    return {requested: dict(by_bucket) for requested, by_bucket in counts.items()}


def _ledger_agents(ledger: Path) -> set[str]:
    agents = set()
    for line in ledger.read_text().splitlines():
        try:
            agents.add(json.loads(line).get("agent"))
        except json.JSONDecodeError:
            continue
    return agents


def _read_jsonl(path: Path, missing: list[str]) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            missing.append(f"{path}:{number}: a torn line (killed while writing); ignored")
    return rows


def _check_trials_run(path: Path, missing: list[str]) -> None:
    # "trials", and with --backend harbor one "trials-turnsN" per task turn cap
    for trials in sorted(p for p in path.glob("trials*") if p.is_dir()):
        unfinished = [p.name for p in trials.iterdir() if p.is_dir() and not (p / "result.json").is_file()]
        if unfinished:
            missing.append(
                f"{trials}: {len(unfinished)} trial(s) without result.json (interrupted): "
                f"{', '.join(sorted(unfinished)[:5])}"
            )


def _check_training_run(path: Path, summary: RunSummary, missing: list[str]) -> None:
    config_path = path / "config.json"
    planned = None
    if config_path.is_file():
        try:
            planned = json.loads(config_path.read_text()).get("steps")
        except json.JSONDecodeError:
            missing.append(f"{config_path}: unreadable")
    else:
        missing.append(f"{path}: no config.json (the run's settings are unknown)")
    logged = len(summary.curves)
    if planned is not None and logged < planned:
        missing.append(
            f"{path}: {logged} of {planned} training steps logged "
            "(the run stopped early; `taskforge train` with the same --run resumes it)"
        )
    if not (path / "checkpoints").is_dir() or not any((path / "checkpoints").iterdir()):
        missing.append(f"{path}: no checkpoint saved")


# ---------------------------------------------------------------------------------------------
# writing the report


COMPARISON_NOTES = (
    "pass@1 is the mean over tasks of each task's success rate, over all trials: an errored trial "
    "(no reward: sandbox, build or verifier failure, verifier timeout) counts as not passed; "
    "the errored column counts these trials apart from failures. The 95% CI is a bootstrap over tasks.",
    "Training runs: groups with signal is the mean over steps of the share of a step's groups whose rewards "
    "were not all equal (only they have a non-zero advantage, so only they move the policy); steps without "
    "obs tokens are steps where the policy ran no command at all; output tokens/episode is the mean over steps "
    "of the tokens sampled per rollout. '-': not logged by this run.",
)
# Per-group tables after the comparison: RunSummary attribute, section title.
BREAKDOWNS = (("by_domain", "By domain"), ("by_difficulty", "By difficulty"), ("by_family", "By family"))
MEASURED_BUCKETS: tuple[str, ...] = get_args(PassRateBucket)  # easiest first


def format_percent(value: float | None) -> str:
    """A rate as the report and the CLI tables show it ("43.8%"); "-" when not measured."""
    return "-" if value is None else f"{100 * value:.1f}%"


def format_number(value: float | None, digits: int = 1) -> str:
    """A mean as the report and the CLI tables show it ("1,234.5"); "-" when not measured."""
    return "-" if value is None else f"{value:,.{digits}f}"


def format_errored(stats: GroupStats | None) -> str:
    """Errored trials as a count and a share of all trials ("2 (12.5%)"); "-" when no trial was read."""
    return "-" if stats is None else f"{stats.n_errored} ({format_percent(stats.error_rate)})"


def comparison_rows(summaries: list[RunSummary]) -> list[dict[str, str]]:
    """One row per run: the paper's table (pass@1 with CI, errored, timeouts, turns, tokens, env CE) and,
    for training runs, whether the steps had a learning signal."""
    rows = []
    for s in summaries:
        o = s.overall
        ci = o.pass_at_1_ci if o and o.pass_at_1_ci else None
        t = s.training
        no_obs_steps = (
            f"{t.steps_without_obs_tokens} of {t.steps_with_obs_tokens_logged}"
            if t and t.steps_without_obs_tokens is not None
            else "-"
        )
        rows.append(
            {
                "run": s.name,
                "kind": s.kind,
                "tasks": str(o.n_tasks) if o else "-",
                "trials": str(o.n_trials) if o else "-",
                "pass@1": format_percent(o.pass_at_1) if o else "-",
                "95% CI": f"{format_percent(ci[0])}-{format_percent(ci[1])}" if ci else "-",
                "errored": format_errored(o),
                "timeouts": format_percent(o.timeout_rate) if o else "-",
                "turns": format_number(o.mean_turns) if o else "-",
                "input tokens": format_number(o.mean_input_tokens, 0) if o else "-",
                "output tokens": format_number(o.mean_output_tokens, 0) if o else "-",
                "env CE": format_number(s.env_ce, 3),
                "env CE before": format_number(s.env_ce_before, 3),
                "groups with signal": format_percent(t.signal_group_share) if t else "-",
                "steps without obs tokens": no_obs_steps,
                "output tokens/episode": format_number(t.output_tokens_per_episode) if t else "-",
            }
        )
    return rows


def errored_notes(summaries: list[RunSummary]) -> list[str]:
    """One line per run with errored trials: what kind of error, so a reader can tell infrastructure from agent."""
    notes = []
    for s in summaries:
        if s.overall and s.overall.n_errored:
            kinds = ", ".join(f"{kind} {count}" for kind, count in s.overall.errored_by_kind.items())
            notes.append(f"{s.name}: {s.overall.n_errored} of {s.overall.n_trials} trials errored ({kinds})")
    return notes


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no data_\n"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row[h] for h in headers) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _group_rows(summaries: list[RunSummary], attribute: str) -> list[dict[str, str]]:
    groups = sorted({g for s in summaries for g in getattr(s, attribute)})
    # An errored column only for runs that had errored trials: elsewhere it would be a column of zeros.
    with_errors = {s.name for s in summaries if s.overall and s.overall.n_errored}
    rows = []
    for group in groups:
        row = {attribute.removeprefix("by_"): group}
        for s in summaries:
            stats = getattr(s, attribute).get(group)
            row[f"{s.name} pass@1"] = format_percent(stats.pass_at_1) if stats else "-"
            if s.name in with_errors:
                row[f"{s.name} errored"] = format_errored(stats)
        rows.append(row)
    return rows


def difficulty_tables(summaries: list[RunSummary]) -> list[tuple[str, list[dict[str, str]]]]:
    """Per filter run, a cross-table of tasks: rows the requested difficulty, columns the measured one."""
    tables = []
    for s in summaries:
        if not s.measured_difficulty:
            continue
        requested_order = [d for d in ("easy", "medium", "hard") if d in s.measured_difficulty]
        requested_order += sorted(set(s.measured_difficulty) - set(requested_order) - {"unknown"})
        requested_order += ["unknown"] if "unknown" in s.measured_difficulty else []
        rows = []
        for requested in requested_order:
            by_bucket = s.measured_difficulty[requested]
            row = {"requested": requested}
            row.update({bucket: str(by_bucket.get(bucket, 0)) for bucket in MEASURED_BUCKETS})
            row["tasks"] = str(sum(by_bucket.values()))
            rows.append(row)
        totals = {bucket: sum(b.get(bucket, 0) for b in s.measured_difficulty.values()) for bucket in MEASURED_BUCKETS}
        rows.append(
            {
                "requested": "all",
                **{b: str(n) for b, n in totals.items()},
                "tasks": str(sum(totals.values())),
            }
        )
        tables.append(
            (f"Requested vs measured difficulty: {s.name} (tasks; columns: filter's pass-rate buckets)", rows)
        )
    return tables


# ---------------------------------------------------------------------------------------------
# plots


class Curve(NamedTuple):
    """A per-step plot of training runs."""

    key: str  # metrics.jsonl key
    label: str
    is_share: bool  # a share in 0..1: a fixed 0..100% axis, so runs and steps compare at a glance
    always: bool  # plotted for every training run ("not measured" if none logged it), else only when logged


CURVES = (
    Curve("reward_mean", "mean reward", is_share=False, always=True),
    Curve("pass_rate", "pass rate (rollouts)", is_share=True, always=True),
    Curve("signal_group_share", "groups with signal (non-zero advantage)", is_share=True, always=True),
    Curve("output_tokens_per_episode", "output tokens per episode", is_share=False, always=True),
    Curve("env_ce", "env-token cross-entropy (train batch)", is_share=False, always=True),
    Curve("heldout_env_ce", "held-out env-token CE", is_share=False, always=False),
)
# Bars per run: GroupStats attribute, title, whether it is a share (shown in %, on a fixed 0..100 axis).
BARS = (
    ("pass_at_1", "pass@1 (%)", True),
    ("error_rate", "errored (%)", True),
    ("timeout_rate", "timeouts (%)", True),
    ("mean_turns", "turns", False),
    ("mean_output_tokens", "output tokens", False),
)
SHARE_AXIS = (0.0, 1.0)
PERCENT_AXIS = (0.0, 100.0)


def y_range(
    values: list[float | None], *, fixed: tuple[float, float] | None = None, from_zero: bool = False
) -> tuple[tuple[float, float] | None, str | None]:
    """The y limits of a plot of `values` (None: let matplotlib autoscale) and a note to print on it.

    A fixed range (shares) is kept whatever the values; no value at all is "not measured"; an all-zero
    series gets 0..1, not the tiny band around 0 autoscaling gives; `from_zero` (bars) starts at 0."""
    measured = [v for v in values if v is not None]
    if not measured:
        return fixed or (0.0, 1.0), "not measured"
    all_zero = all(v == 0 for v in measured)
    if fixed is not None:
        return fixed, "all zero" if all_zero else None
    if all_zero:
        return (0.0, 1.0), "all zero"
    if from_zero and max(measured) > 0:
        return (min(0.0, *measured), max(measured) * 1.15), None
    return None, None


def _set_y_range(ax, values: list[float | None], **options) -> None:
    limits, note = y_range(values, **options)
    if limits is not None:
        ax.set_ylim(*limits)
    if note:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=11)
    if note == "not measured":
        ax.set_yticks([])  # tick labels would suggest values that were never logged


def _curve_points(steps: list[dict], key: str) -> list[tuple[float, float]]:
    points = []
    for number, step in enumerate(steps, start=1):
        # A step whose rollouts had no observation token has no env CE (older runs logged 0).
        if key == "env_ce" and obs_tokens_of(step) == 0:
            continue
        if step.get(key) is not None:
            points.append((step.get("step", number), step[key]))
    return points


def report_figures(summaries: list[RunSummary]) -> dict:
    """The report's plots as matplotlib Figures (name -> Figure): training curves overlaid, bars per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figures = {}
    training = [s for s in summaries if s.curves]
    for curve in CURVES:
        if not training or not (curve.always or any(curve.key in c for s in training for c in s.curves)):
            continue
        fig = Figure(figsize=(6, 3.6), dpi=110)
        ax = fig.subplots()
        values = []
        for s in training:
            points = _curve_points(s.curves, curve.key)
            values += [v for _, v in points]
            if points:
                # clip_on=False: a point on a fixed axis' edge (a share of 0 or 1) stays whole
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=s.name, clip_on=False)
            else:
                ax.plot([], [], label=f"{s.name} (not measured)")
        if not values:
            logged_steps = [c.get("step", n) for s in training for n, c in enumerate(s.curves, start=1)]
            if min(logged_steps) < max(logged_steps):
                ax.set_xlim(min(logged_steps), max(logged_steps))
        _set_y_range(ax, values, fixed=SHARE_AXIS if curve.is_share else None)
        if curve.is_share:
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        ax.set_xlabel("step")
        ax.set_ylabel(curve.label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figures[f"curve_{curve.key}.png"] = fig
    with_stats = [s for s in summaries if s.overall]
    if with_stats:
        fig = Figure(figsize=(3.2 * len(BARS), 3.4), dpi=110)
        for ax, (attribute, title, is_share) in zip(fig.subplots(1, len(BARS)), BARS, strict=True):
            values = [getattr(s.overall, attribute) for s in with_stats]
            values = [None if v is None else v * (100 if is_share else 1) for v in values]
            ax.bar(range(len(values)), [v or 0 for v in values], color=[f"C{i}" for i in range(len(values))])
            for position, value in enumerate(values):
                if value is None:
                    ax.text(position, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
            ax.set_xticks(range(len(values)), [s.name for s in with_stats], rotation=30, ha="right", fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            _set_y_range(ax, values, fixed=PERCENT_AXIS if is_share else None, from_zero=True)
        fig.tight_layout()
        figures["bars.png"] = fig
    return figures


def make_plots(summaries: list[RunSummary]) -> dict[str, bytes]:
    """PNG plots: training curves overlaid, and bars per run. Name -> PNG bytes."""
    return {name: _png(fig) for name, fig in report_figures(summaries).items()}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(summaries: list[RunSummary], out_dir: Path) -> tuple[Path, Path]:
    """Writes report.md (with PNGs beside it) and a self-contained report.html (PNGs inlined)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(summaries)
    for name, data in plots.items():
        (out_dir / name).write_bytes(data)
    contents = {
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "run_names": [s.name for s in summaries],
        "comparison_notes": list(COMPARISON_NOTES),
        "comparison": comparison_rows(summaries),
        "errored": errored_notes(summaries),
        "breakdowns": [(title, rows) for attribute, title in BREAKDOWNS if (rows := _group_rows(summaries, attribute))]
        + difficulty_tables(summaries),
        "missing": [(s.name, m) for s in summaries for m in s.missing],
    }
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(plot_names=list(plots), **contents))
    html_path = out_dir / "report.html"
    plots_base64 = {name: base64.b64encode(data).decode() for name, data in plots.items()}
    html_path.write_text(_report_template().render(plots=plots_base64, **contents))
    (out_dir / "summary.json").write_text(json.dumps([s.model_dump() for s in summaries], indent=2))
    return md_path, html_path


def _markdown(
    *,
    generated: str,
    run_names: list[str],
    comparison_notes: list[str],
    comparison: list[dict[str, str]],
    errored: list[str],
    breakdowns: list[tuple[str, list[dict[str, str]]]],
    plot_names: list[str],
    missing: list[tuple[str, str]],
) -> str:
    """report.md: the same tables as the HTML, readable as text and on GitHub (the PNGs sit beside it)."""
    sections = [
        f"# taskforge report\n\n_{generated}; runs: {', '.join(run_names)}_\n",
        "## Comparison\n",
        *[f"{note}\n" for note in comparison_notes],
        _markdown_table(comparison),
    ]
    if errored:
        sections += ["Errored trials by kind:\n", *[f"- {line}" for line in errored], ""]
    for title, rows in breakdowns:
        sections += [f"\n## {title}\n", _markdown_table(rows)]
    if plot_names:
        sections.append("\n## Plots\n")
        sections += [f"![{name}]({name})\n" for name in plot_names]
    if missing:
        sections.append("\n## Missing or incomplete\n")
        sections += [f"- {run_name}: {note}" for run_name, note in missing]
        sections.append("")
    return "\n".join(sections)


@cache
def _report_template() -> jinja2.Template:
    """Autoescaped: run names, task names and paths in the report come from directory names."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "report"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.get_template("report.html.j2")
