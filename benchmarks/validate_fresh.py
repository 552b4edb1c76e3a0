"""Generate fresh tasks with a new seed and validate them in Docker (oracle 1.0, nop 0.0).

    .venv/bin/python benchmarks/validate_fresh.py [--n 300] [--seed S] [--jobs 2] [--keep]

Prints the pass rate and the failures per family. The seed defaults to one derived from the
clock (printed), so every run checks tasks nobody has validated before; pass --seed to repeat a
run. Task images built by the run are removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HARBOR_TELEMETRY", "0")

from taskforge.forge.generate import generate  # noqa: E402
from taskforge.sandbox.docker import IMAGE_REPO, docker_client, hash_directory  # noqa: E402
from taskforge.tasks import discover_task_dirs, load_task  # noqa: E402
from taskforge.validate import validate_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated tasks, run directory and images")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000_007

    work = Path(tempfile.mkdtemp(prefix="taskforge-fresh-"))
    tasks_dir, run_dir = work / "tasks", work / "run"
    print(f"seed {seed}: generating {args.n} tasks into {tasks_dir}")
    generate(args.n, seed, tasks_dir, jobs=args.jobs, progress=True)
    task_dirs = discover_task_dirs([tasks_dir])
    before = {t for image in docker_client().images.list(name=IMAGE_REPO) for t in image.tags}

    started = time.perf_counter()
    results = validate_tasks([tasks_dir], run_dir, jobs=args.jobs)
    wall = time.perf_counter() - started

    family_of = {str(p.resolve()): load_task(p).metadata["family"] for p in task_dirs}
    per_family: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, list[str]] = defaultdict(list)
    for r in results:
        family = family_of.get(r.task_path, "?")
        per_family[family]["total"] += 1
        if r.passed:
            per_family[family]["passed"] += 1
        else:
            failures[family].append(f"{r.task_name}: {r.status} {r.detail}")
    passed = sum(r.passed for r in results)
    print(
        f"\npass rate: {passed}/{len(results)} = {100 * passed / max(1, len(results)):.1f}%  "
        f"({wall / 60:.1f} min, {wall / max(1, len(results)):.1f} s per task with jobs={args.jobs})"
    )
    statuses = Counter(r.status for r in results)
    print("statuses:", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    print("\nper family (passed/total):")
    for family in sorted(per_family):
        c = per_family[family]
        print(f"  {family:22s} {c['passed']}/{c['total']}")
    if failures:
        print("\nfailures:")
        for family, lines in sorted(failures.items()):
            for line in lines:
                print(f"  [{family}] {line}")

    if args.keep:
        print(f"\nkept: {work}")
        return
    tags = {f"{IMAGE_REPO}:{hash_directory(p / 'environment')}" for p in task_dirs}
    removed = 0
    for tag in sorted(tags - before):
        try:
            docker_client().images.remove(tag, force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ncleaned up {work} and {removed} task images")


if __name__ == "__main__":
    main()
