"""CPU-heavy commands through `DockerSandbox.exec` vs plain `docker exec`, side by side.

    .venv/bin/python benchmarks/exec_overhead.py                  # ~4 minutes on 2 busy cores
    .venv/bin/python benchmarks/exec_overhead.py --rounds 10 --scale 0.75 --workloads cpu forks
    .venv/bin/python benchmarks/exec_overhead.py --workloads go --old-default-too --rounds 3
                                   # a real Go build-and-bisect, also under the old 1-CPU default

Why: a Go build-and-bisect solve.sh took 343 s under taskforge and 54 s under `harbor run` on the
same machine. This separates the exec path (the wrapper: GNU timeout in its own process group,
output to a file, cgroup counters) from the container's settings, with three ways to run a command:

- taskforge: `DockerSandbox.exec` in a container started as a trial starts it (Resources: cpus,
  memory with no swap, pids limit, init, no network);
- docker-exec: plain `docker exec <same container> bash -c CMD`: same container, no wrapper;
- harbor: plain `docker exec` into a container started as Harbor's docker environment starts one
  (compose's `cpus`/`mem_limit` from task.toml, `sh -c "sleep infinity"`, no init, no pids limit,
  bridge network);
- taskforge-cpus1 (with --old-default-too): `DockerSandbox.exec` in a container with a 1-CPU quota,
  which taskforge applied to every task before 071afbd (now only when task.toml sets cpus = 1).

--cpus (task.toml's cpus) applies to the taskforge and harbor ways; by default neither has a quota,
as a task.toml without cpus runs in both.

Workloads (sized by --scale to a few seconds each on a free core):
- cpu: one python loop;
- parallel: --procs python loops at once (a build's parallel compiles);
- forks: many short processes in a row (a build or a bisect spawns thousands);
- go: benchmarks/go/bisect.sh, a Go module's `git bisect run go test ./...` over 24 commits, in
  the image benchmarks/go/Dockerfile builds (base + Debian's golang-go; built on first use).

The runs are interleaved (each round runs every workload in every way, in rotating order) so a
busy phase of the machine hits all of them; figures are min and median over rounds, and the ratio
is taskforge's median over each other way's. The load average is printed before and after.

Measured on 2 cores at load 7-8 (10 rounds, --scale 0.75): medians cpu 1.30 s taskforge vs 2.12 s
docker-exec vs 1.51 s harbor, forks 2.27 vs 2.87 vs 2.82 s: the exec path adds no more than the
noise (ratios 0.6-0.9; mins within ~0.1-0.4 s, the fixed cost of one exec).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taskforge import BASE_IMAGE  # noqa: E402
from taskforge.sandbox.base import Resources, Sandbox  # noqa: E402
from taskforge.sandbox.docker import DockerSandbox, wait_for_removals  # noqa: E402

GO_DIR = Path(__file__).resolve().parent / "go"
GO_IMAGE = "taskforge/bench-go:1"
GO_SCRIPT = "/tmp/go_bisect.sh"  # where each container gets benchmarks/go/bisect.sh


def workloads(scale: float, procs: int) -> dict[str, str]:
    loop = f"python3 -c 'n = 0\nfor i in range({int(20_000_000 * scale)}): n += i'"
    return {
        "cpu": loop,
        "parallel": " ".join(f"{loop} &" for _ in range(procs)) + " wait",
        "forks": f"for i in $(seq {int(2000 * scale)}); do /bin/true; done",
        # grep: the bisect must find the regression, or the timing means nothing
        "go": f"GO_WORK={int(1_500_000_000 * scale)} bash {GO_SCRIPT} | grep -q 'is the first bad commit'",
    }


def build_go_image() -> str:
    subprocess.run(["docker", "build", "-q", "-t", GO_IMAGE, str(GO_DIR)], check=True, capture_output=True)
    return GO_IMAGE


def copy_go_script(container_id: str) -> None:
    subprocess.run(["docker", "cp", str(GO_DIR / "bisect.sh"), f"{container_id}:{GO_SCRIPT}"], check=True)


def start_harbor_style(image: str, cpus: float | None, memory_mb: int) -> str:
    """A container as Harbor's docker environment starts it (docker compose: cpus, mem_limit)."""
    cpu_limit = [f"--cpus={cpus:g}"] if cpus else []
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--label", "taskforge.bench=1", *cpu_limit]
        + [f"--memory={memory_mb}m", image, "sh", "-c", "sleep infinity"],
        capture_output=True,
        text=True,
        check=True,
    )
    return started.stdout.strip()


def docker_exec(container_id: str, command: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(["docker", "exec", container_id, "bash", "-c", command], capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command!r} failed in {container_id[:12]}: {done.stdout[-500:]!r} {done.stderr[-500:]!r}")
    return elapsed


def sandbox_exec(sandbox: Sandbox, command: str) -> float:
    started = time.perf_counter()
    result = sandbox.exec(command, 600)
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"{command!r} failed in the sandbox: {result.output[-500:]} {result.notices}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None, help="default: the base image; the Go image for --workloads go")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="work per command (1.0: a few seconds)")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="processes of the parallel load")
    parser.add_argument("--cpus", type=float, default=None, help="task.toml cpus (default: none, no quota)")
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--workloads", nargs="+", default=["cpu", "parallel", "forks"], help="which to run")
    parser.add_argument("--old-default-too", action="store_true", help="also taskforge with a 1-CPU quota")
    args = parser.parse_args()

    wants_go = "go" in args.workloads
    image = args.image or (build_go_image() if wants_go else BASE_IMAGE)
    print(f"load before: {os.getloadavg()}  cores: {os.cpu_count()}  cpus: {args.cpus}  image: {image}")
    commands = {name: command for name, command in workloads(args.scale, args.procs).items() if name in args.workloads}
    harbor_id = start_harbor_style(image, args.cpus, args.memory_mb)
    seconds: dict[tuple[str, str], list[float]] = {}
    sandboxes = {"taskforge": DockerSandbox(image, Resources(cpus=args.cpus, memory_mb=args.memory_mb))}
    if args.old_default_too:
        sandboxes["taskforge-cpus1"] = DockerSandbox(image, Resources(cpus=1.0, memory_mb=args.memory_mb))
    try:
        for sandbox in sandboxes.values():
            sandbox.start()
        ways = {
            name: (lambda command, sandbox=sandbox: sandbox_exec(sandbox, command))
            for name, sandbox in sandboxes.items()
        }
        ways["docker-exec"] = lambda command: docker_exec(sandboxes["taskforge"].container.id, command)
        ways["harbor"] = lambda command: docker_exec(harbor_id, command)
        if wants_go:
            for container_id in [sandbox.container.id for sandbox in sandboxes.values()] + [harbor_id]:
                copy_go_script(container_id)
        for way in ways.values():  # warm-up: page cache, python's first start
            way("python3 -c pass")
        names = list(ways)
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for workload, command in commands.items():
                for name in order:
                    seconds.setdefault((workload, name), []).append(ways[name](command))
            print(f"round {round_index + 1}/{args.rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for sandbox in sandboxes.values():
            sandbox.stop()
        subprocess.run(["docker", "rm", "-f", harbor_id], capture_output=True)
        wait_for_removals()

    print(f"\n{'workload':<10} {'way':<16} {'min s':>7} {'median s':>9} {'this / harbor':>14}")
    for workload in commands:
        harbor = statistics.median(seconds[(workload, "harbor")])
        for name in names:
            runs = seconds[(workload, name)]
            median = statistics.median(runs)
            print(f"{workload:<10} {name:<16} {min(runs):7.2f} {median:9.2f} {median / harbor:14.2f}")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
