"""How fast `taskforge filter` runs attempts, and what each costs beyond the model's own time.

Runs the filter on tasks/sample (or the test fixtures when tasks/sample holds no tasks) against
the scripted OpenAI-compatible server playing a competent agent (replies are instant, so what is
measured is the harness: sandbox start, command execs, verifier, removal, bookkeeping). Images
are built before the clock starts. Prints attempts per minute and, per attempt, the wall time
minus the time spent waiting on the server, with a breakdown by phase. Target: <= 1.5 s.

    .venv/bin/python benchmarks/filter_overhead.py [--attempts 8] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harbor.models.trial.result import TrialResult  # noqa: E402

from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy  # noqa: E402
from taskforge.filter import FilterConfig, filter_tasks  # noqa: E402
from taskforge.runner import Ledger  # noqa: E402
from taskforge.sandbox.docker import wait_for_removals  # noqa: E402
from taskforge.tasks import TaskLoadError, discover_task_dirs, load_task  # noqa: E402
from taskforge.testing.openai_server import ScriptedOpenAIServer  # noqa: E402
from taskforge.testing.scripts import competent  # noqa: E402
from taskforge.trial import TRANSCRIPT_FILE, TrialRecord, image_for, read_transcript  # noqa: E402  # noqa: E402

TARGET_OVERHEAD_SEC = 1.5


def task_dirs() -> tuple[str, list[Path]]:
    sample = REPO / "tasks" / "sample"
    try:
        return "tasks/sample", discover_task_dirs([sample])
    except TaskLoadError:
        return "tests/fixtures", discover_task_dirs([REPO / "tests" / "fixtures"])


def seconds_between(timing) -> float:
    if timing is None or timing.started_at is None or timing.finished_at is None:
        return 0.0
    return (timing.finished_at - timing.started_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=8, help="attempts per task")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    source, dirs = task_dirs()
    tasks = [load_task(d) for d in dirs]
    for task in tasks:
        image_for(task)  # builds are a one-off per task, not per attempt
    print(f"tasks: {len(tasks)} from {source}; {args.attempts} attempts each; concurrency {args.concurrency}")

    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp, ScriptedOpenAIServer(competent(dirs)) as server:
        policy = OpenAIChatPolicy(ChatConfig(model="test-model", base_url=server.base_url))
        run_dir = Path(tmp) / "run"
        started = time.monotonic()
        report = filter_tasks(
            tasks,
            run_dir,
            lambda: policy,
            # a timing run: the repo's sample tasks keep their task.toml as committed
            FilterConfig(attempts=args.attempts, concurrency=args.concurrency, write_measured=False),
            out_dir=Path(tmp),
        )
        wait_for_removals()  # container removal runs in the background; count it in the wall time
        wall = time.monotonic() - started

        records = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
        overheads, waits, setup, agent_exec, verifier = [], [], [], [], []
        for record in records:
            episode = read_transcript(Path(record.trial_dir, TRANSCRIPT_FILE))
            result = TrialResult.model_validate_json(Path(record.trial_dir, "result.json").read_text())
            waits.append(episode.policy_seconds)
            overheads.append(record.seconds - episode.policy_seconds)
            setup.append(seconds_between(result.environment_setup))
            agent_exec.append(seconds_between(result.agent_execution) - episode.policy_seconds)
            verifier.append(seconds_between(result.verifier))

    n = len(records)
    passed = sum(r.passed for r in records)
    mean = statistics.mean
    overhead = mean(overheads)
    print(f"attempts: {n} ({passed} passed), wall {wall:.1f} s, server busy {server.busy_seconds:.2f} s")
    print(
        f"throughput: {n / wall * 60:.1f} attempts/min "
        f"({wall / n:.2f} s of wall time per attempt at concurrency {args.concurrency})"
    )
    print(
        f"overhead per attempt (attempt wall time minus time waiting on the model server): mean {overhead:.2f} s, "
        f"median {statistics.median(overheads):.2f} s, p90 {sorted(overheads)[int(0.9 * (n - 1))]:.2f} s, "
        f"max {max(overheads):.2f} s"
    )
    print(
        f"  sandbox start {mean(setup):.2f} s | commands (agent phase minus model wait) {mean(agent_exec):.2f} s | "
        f"verifier {mean(verifier):.2f} s | rest (bookkeeping, result files) "
        f"{overhead - mean(setup) - mean(agent_exec) - mean(verifier):.2f} s"
    )
    print(
        f"  model wait per attempt: mean {mean(waits) * 1000:.0f} ms (scripted server, {len(server.requests)} requests)"
    )
    verdict = "meets" if overhead <= TARGET_OVERHEAD_SEC else "MISSES"
    print(
        f"target <= {TARGET_OVERHEAD_SEC} s per attempt: {verdict} ({overhead:.2f} s); "
        f"kept {len(report.kept)}/{len(report.tasks)} tasks"
    )


if __name__ == "__main__":
    main()
