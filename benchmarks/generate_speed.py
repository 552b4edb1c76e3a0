"""How fast `taskforge generate` writes tasks: tasks/s, wall time and peak RSS for --n 6000.

    .venv/bin/python benchmarks/generate_speed.py [--n 6000] [--seed 1] [--jobs 2]

Writes into a temporary directory that is removed afterwards. The target is under 60 s for
6000 tasks on a 2-core machine with memory that does not grow with n beyond a few MB per
thousand tasks (tasks are streamed to disk; only hashes and dedup signatures stay in memory).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from taskforge.forge.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--val", type=int, default=0)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="taskforge-genspeed-"))
    try:
        started = time.perf_counter()
        summary = generate(args.n, args.seed, out / "set", val=args.val, jobs=args.jobs, progress=True)
        wall = time.perf_counter() - started
        files = sum(1 for p in out.rglob("*") if p.is_file())
        size = subprocess.run(["du", "-sh", str(out)], capture_output=True, text=True).stdout.split()[0]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"tasks:           {args.n} ({len(summary['by_family'])} families, {summary['redrawn']} redrawn as duplicates)"
    )
    print(f"wall time:       {wall:.1f} s  (jobs={args.jobs})")
    print(f"throughput:      {args.n / wall:.0f} tasks/s")
    print(f"peak RSS:        main {self_rss:.0f} MB, largest worker {child_rss:.0f} MB")
    print(f"written:         {files} files, {size}")
    print(f"verdict:         {'OK' if wall < 60 else 'TOO SLOW'} (target: n=6000 under 60 s)")


if __name__ == "__main__":
    main()
