"""Seconds per trial: `taskforge validate` vs `harbor run -a oracle`, on the same tasks, one run.

Both tools get the same task copies and the same concurrency; images are built in an untimed
warm-up first, so the figures compare trial overhead (container start, uploads, execs, verifier,
teardown), not image builds. Harbor runs with the fast-stop compose overlay (envs/harbor-fast.yaml).
taskforge validate runs two trials per task (oracle and nop); Harbor's run here is oracle only.

    .venv/bin/python benchmarks/validate_vs_harbor.py [--tasks tasks/sample] [--n 16] [--jobs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HARBOR_TELEMETRY": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def pick_tasks(source: Path | None, n: int, workdir: Path) -> list[Path]:
    sys.path.insert(0, str(REPO))
    from taskforge.tasks import discover_task_dirs, write_task

    out = workdir / "tasks"
    out.mkdir()
    if source is not None and source.exists():
        chosen = discover_task_dirs([source])[:n]
        for task_dir in chosen:
            shutil.copytree(task_dir, out / task_dir.name)
    else:
        from tests.conftest import hello_spec

        for i in range(n):
            write_task(
                hello_spec(name=f"bench/hello-{i}", solution=f"echo forged > /app/out.txt  # {i}"), out / f"hello-{i}"
            )
    return sorted(p for p in out.iterdir() if p.is_dir())


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO)
    return time.monotonic() - started, completed


def harbor(tasks_dir: Path, jobs_dir: Path, name: str, jobs: int) -> tuple[float, int, int]:
    seconds, completed = timed(
        [
            str(BIN / "harbor"),
            "run",
            "-p",
            str(tasks_dir),
            "-a",
            "oracle",
            "-n",
            str(jobs),
            "-o",
            str(jobs_dir),
            "--job-name",
            name,
            "-y",
            "--extra-docker-compose",
            str(REPO / "envs" / "harbor-fast.yaml"),
        ]
    )
    if completed.returncode != 0:
        sys.exit(f"harbor run failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in (jobs_dir / name).glob("*/result.json")]
    solved = sum(1 for r in results if (r.get("verifier_result") or {}).get("rewards", {}).get("reward") == 1.0)
    return seconds, len(results), solved


def taskforge(tasks_dir: Path, runs_dir: Path, name: str, jobs: int) -> tuple[float, int, int]:
    seconds, completed = timed(
        [
            str(BIN / "taskforge"),
            "validate",
            str(tasks_dir),
            "-j",
            str(jobs),
            "--run",
            name,
            "--runs-dir",
            str(runs_dir),
        ]
    )
    ledger = [json.loads(line) for line in (runs_dir / name / "ledger.jsonl").read_text().splitlines()]
    if completed.returncode != 0:
        print(completed.stdout[-3000:], file=sys.stderr)
    passed = sum(1 for r in json.loads((runs_dir / name / "validation.json").read_text()) if r["status"] == "passed")
    return seconds, len(ledger), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=Path, default=REPO / "tasks" / "sample")
    parser.add_argument("--n", type=int, default=16, help="number of tasks")
    parser.add_argument("--jobs", type=int, default=1, help="concurrency for both tools")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        workdir = Path(tmp)
        task_dirs = pick_tasks(args.tasks, args.n, workdir)
        tasks_dir = workdir / "tasks"
        print(
            f"{len(task_dirs)} tasks from {args.tasks if args.tasks.exists() else 'built-in hello tasks'}, "
            f"concurrency {args.jobs}"
        )

        print("warm-up (image builds, untimed) ...", flush=True)
        taskforge(tasks_dir, workdir / "runs", "warmup", args.jobs)
        harbor(tasks_dir, workdir / "jobs", "warmup", args.jobs)

        tf_seconds, tf_trials, tf_passed = taskforge(tasks_dir, workdir / "runs", "timed", args.jobs)
        hb_seconds, hb_trials, hb_solved = harbor(tasks_dir, workdir / "jobs", "timed", args.jobs)

    tf_per_trial = tf_seconds / tf_trials
    hb_per_trial = hb_seconds / hb_trials
    print(
        f"taskforge validate: {tf_trials} trials (oracle + nop) in {tf_seconds:.1f} s = {tf_per_trial:.3f} s/trial; "
        f"{tf_passed}/{len(task_dirs)} tasks passed"
    )
    print(
        f"harbor run oracle : {hb_trials} trials in {hb_seconds:.1f} s = {hb_per_trial:.3f} s/trial; "
        f"{hb_solved}/{hb_trials} solved"
    )
    ratio = hb_per_trial / tf_per_trial
    print(f"ratio harbor/taskforge per trial: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
