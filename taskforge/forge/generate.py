"""`taskforge generate`: n procedural tasks, deterministic in (seed, n), streamed to disk.

Layout written under out_dir:

    val == 0:  out_dir/<task>/...  + registry.json + manifest.jsonl          (one set, "taskforge")
    val  > 0:  out_dir/train/<task>/... + registry.json + manifest.jsonl     ("taskforge-train")
               out_dir/val/<task>/...   + registry.json + manifest.jsonl     ("taskforge-val")
    always:    out_dir/summary.json   (parameters and counts; no timings, so it is deterministic)

Task i draws its family and difficulty from a round-robin schedule (every family once per round,
or `schedule_weight` times for a family that sets it, difficulties rotating), and its seed from
sha256(seed, i, attempt). A task is redrawn with the next attempt when its instruction +
environment repeat an earlier task, when its normalised instruction (digits kept) does, or when its
instruction is a near-duplicate of an earlier one of the same family (character 5-gram Jaccard >=
0.95, see dedup.py). Decisions are made in index order, so 1 or 2 workers give the same bytes.

Programs, not just data: each task's instruction and solution skeletons (skeleton.py: values, paths,
numbers, names and comments abstracted) are recorded in manifest.jsonl and counted in summary.json.
A task whose instruction or solution skeleton is already held by `skeleton_cap` accepted tasks is
redrawn too, but at most SKELETON_CAP_REDRAWS times: a (family, difficulty) cell that cannot make a
new program keeps the last draw, which is counted as over the cap; once a cell has ended over the cap
CELL_GIVES_UP times, its later over-cap tasks are kept at once (no draws spent on a cell that has
shown it has no more programs).

registry.json task paths are relative to the set's folder (so a set can be moved or committed):
run Harbor from inside it, `cd <set> && harbor run --registry-path registry.json -d <name>@<version>`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from taskforge.forge import dedup, skeleton
from taskforge.forge.base import DIFFICULTIES, GENERATOR_VERSION, content_hash
from taskforge.forge.families import FAMILIES, get_family
from taskforge.tasks import TaskSpec, write_task

MAX_ATTEMPTS = 50
# How many accepted tasks may share one instruction skeleton or one solution skeleton: about the
# number of tasks per (family, difficulty) cell at --n 4000 with one program per cell.
DEFAULT_SKELETON_CAP = 30
SKELETON_CAP_REDRAWS = 3
CELL_GIVES_UP = 3
DATASET_PREFIX = "taskforge"


class GenerateError(ValueError):
    """Bad generate arguments or an exhausted family; the message says what to change."""


def task_seed(seed: int, index: int, attempt: int = 0) -> int:
    """A stable 63-bit seed for task `index` (not Python's hash(), which is salted per process)."""
    digest = hashlib.sha256(f"taskforge.forge:{seed}:{index}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


normalise_instruction = dedup.normalise


def schedule(n: int, families: Sequence[str], difficulties: Sequence[str]) -> list[tuple[str, str]]:
    """(family, difficulty) for each index: every family once per round (a family with a
    `schedule_weight` k, k times in a row), difficulties rotating."""
    slots = [f for f in families for _ in range(schedule_weight(f))]
    n_f, n_d = len(slots), len(difficulties)
    return [(slots[i % n_f], difficulties[(i // n_f + i % n_f) % n_d]) for i in range(n)]


def schedule_weight(family: str) -> int:
    """Slots per round: 1, or more for a family that composes many programs (composite.py)."""
    return int(getattr(get_family(family), "schedule_weight", 1))


def val_indices(plan: Sequence[tuple[str, str]], k: int) -> set[int]:
    """A held-out split of k indices, stratified by family and then by (family, difficulty) cell.

    Every held-out cell keeps at least one task in training: within a family each difficulty is a
    different program, so a cell seen only at evaluation would test a skill no training task shows.
    Held-out tasks differ from training ones only in their parameters and data (each index has its
    own seed). Quotas: k spread evenly over families, then each family's share round-robin over its
    cells (most populous first); within a cell, evenly spaced indices.
    """
    if k <= 0:
        return set()
    if k >= len(plan):
        raise GenerateError(f"--val {k} leaves no training tasks out of --n {len(plan)}; use a smaller --val")
    cells: dict[str, dict[str, list[int]]] = {}
    for i, (family, difficulty) in enumerate(plan):
        cells.setdefault(family, {}).setdefault(difficulty, []).append(i)
    # How many tasks each family can lend: all but one per cell.
    capacity = {f: sum(len(ix) - 1 for ix in by_d.values()) for f, by_d in cells.items()}
    if k > sum(capacity.values()):
        raise GenerateError(
            f"--val {k} would hold out every task of some (family, difficulty) cell of --n {len(plan)}; "
            f"at most {sum(capacity.values())} can be held out with one training task left per cell: "
            "use a smaller --val or a larger --n"
        )
    quota = dict.fromkeys(cells, 0)
    families = list(cells)
    remaining = k
    while remaining:  # round-robin over families with spare capacity
        for family in families:
            if remaining and quota[family] < capacity[family]:
                quota[family] += 1
                remaining -= 1
    chosen: set[int] = set()
    for family, by_difficulty in cells.items():
        order = sorted(by_difficulty, key=lambda d: -len(by_difficulty[d]))
        per_cell = dict.fromkeys(order, 0)
        left = quota[family]
        while left:
            for difficulty in order:
                if left and per_cell[difficulty] < len(by_difficulty[difficulty]) - 1:
                    per_cell[difficulty] += 1
                    left -= 1
        for difficulty, q in per_cell.items():
            indices = by_difficulty[difficulty]
            chosen.update(indices[int((j + 0.5) * len(indices) / q)] for j in range(q))
    return chosen


@dataclass(frozen=True)
class Job:
    index: int
    attempt: int
    family: str
    difficulty: str
    seed: int
    set_dir: str


@dataclass(frozen=True)
class Written:
    index: int
    attempt: int
    name: str
    family: str
    domain: str
    difficulty: str
    seed: int
    set_dir: str
    dir_name: str
    content_key: str
    instruction_key: str
    normalised: str
    signature: bytes
    instruction_skeleton: str
    solution_skeleton: str
    style: str = "spec"  # [metadata] style: "symptom" when the instruction states a symptom, not a spec


def build_and_write(job: Job) -> Written:
    """Samples one task and writes its directory; runs in a worker process."""
    task, spec = build(job)
    write_task(spec, Path(job.set_dir) / task.dir_name)
    return task


def build(job: Job) -> tuple[Written, TaskSpec]:
    """Samples one task (not written yet) and computes what the uniqueness rules compare."""
    family = get_family(job.family)
    spec = family.sample(random.Random(job.seed), job.difficulty, seed=job.seed)
    dir_name = spec.name.split("/", 1)[1]
    normalised = normalise_instruction(spec.instruction)
    task = Written(
        index=job.index,
        attempt=job.attempt,
        name=spec.name,
        family=job.family,
        domain=family.domain,
        difficulty=job.difficulty,
        seed=job.seed,
        set_dir=job.set_dir,
        dir_name=dir_name,
        content_key=content_hash(spec.instruction, spec.environment_files, spec.dockerfile_steps),
        instruction_key=hashlib.sha256(normalised.encode()).hexdigest(),
        normalised=normalised,
        signature=dedup.signature(normalised),
        instruction_skeleton=skeleton.skeleton_key(skeleton.instruction_skeleton(spec.instruction)),
        solution_skeleton=skeleton.skeleton_key(skeleton.solution_skeleton(spec.solution)),
        style=str(spec.metadata.extra.get("style", "spec")),
    )
    return task, spec


def _pool(jobs: int):
    if jobs <= 1:
        return None
    # fork is fast and safe while this process has a single thread; otherwise forkserver (workers
    # forked from a clean single-threaded server process, started once per process).
    method = "fork" if _os_thread_count() == 1 else "forkserver"
    return multiprocessing.get_context(method).Pool(jobs)


def _os_thread_count() -> int:
    """Threads of this process, native ones included (torch's or pyarrow's pools are not Python
    threads, and fork() with them running can deadlock the child)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def dataset_version(seed: int) -> str:
    return f"{GENERATOR_VERSION}-seed{seed}"


def write_registry(set_dir: Path, dataset: str, version: str, tasks: list[tuple[str, str]], description: str) -> Path:
    """A Harbor registry.json (list of DatasetSpec) with paths relative to set_dir."""
    from harbor.models.registry import DatasetSpec, RegistryTaskId

    spec = DatasetSpec(
        name=dataset,
        version=version,
        description=description,
        tasks=[RegistryTaskId(name=name, path=Path(dir_name)) for name, dir_name in tasks],
    )
    path = set_dir / "registry.json"
    path.write_text(json.dumps([spec.model_dump(mode="json", exclude_none=True)], indent=2) + "\n")
    return path


class TaskSet:
    """One written set (all, train or val): its folder, manifest.jsonl (streamed) and registry.json."""

    def __init__(self, path: Path, split: str | None):
        self.path = path
        self.split = split
        self.dataset = DATASET_PREFIX if split is None else f"{DATASET_PREFIX}-{split}"
        self.rows: list[tuple[str, str]] = []
        path.mkdir(parents=True, exist_ok=True)
        self._manifest = (path / "manifest.jsonl").open("w")

    def add(self, task: Written) -> None:
        row = {
            "name": task.name,
            "family": task.family,
            "domain": task.domain,
            "difficulty": task.difficulty,
            "seed": task.seed,
            "path": task.dir_name,
            "instruction_skeleton": task.instruction_skeleton,
            "solution_skeleton": task.solution_skeleton,
        }
        self._manifest.write(json.dumps(row) + "\n")
        self.rows.append((task.name, task.dir_name))

    def close(self) -> None:
        self._manifest.close()

    def finish(self, seed: int, n: int) -> dict:
        version = dataset_version(seed)
        suffix = f", {self.split}" if self.split else ""
        registry = write_registry(
            self.path,
            self.dataset,
            version,
            self.rows,
            f"taskforge procedural tasks (generator {GENERATOR_VERSION}, seed {seed}, n {n}{suffix})",
        )
        return {
            "path": str(self.path),
            "tasks": len(self.rows),
            "registry": str(registry),
            "dataset": f"{self.dataset}@{version}",
            "harbor": (
                f"cd {self.path} && harbor run --registry-path registry.json -d {self.dataset}@{version} -a oracle"
            ),
        }


class Uniqueness:
    """What accepted tasks look like, to refuse a new task that repeats or nearly repeats one."""

    def __init__(self, skeleton_cap: int = DEFAULT_SKELETON_CAP) -> None:
        self.content: set[str] = set()
        self.instructions: set[str] = set()
        self.names: set[str] = set()
        self.near = dedup.NearDuplicateIndex()
        self.skeleton_cap = skeleton_cap
        self.instruction_skeletons: Counter = Counter()
        self.solution_skeletons: Counter = Counter()

    def over_cap(self, task: Written) -> bool:
        """Its instruction or solution skeleton is already held by skeleton_cap accepted tasks."""
        return (
            self.instruction_skeletons[task.instruction_skeleton] >= self.skeleton_cap
            or self.solution_skeletons[task.solution_skeleton] >= self.skeleton_cap
        )

    def accepts(self, task: Written) -> bool:
        if task.content_key in self.content or task.instruction_key in self.instructions or task.name in self.names:
            return False
        return self.near.find(task.family, task.normalised, task.signature) is None

    def add(self, task: Written) -> None:
        self.content.add(task.content_key)
        self.instructions.add(task.instruction_key)
        self.names.add(task.name)
        self.near.add(task.family, task.normalised, task.signature)
        self.instruction_skeletons[task.instruction_skeleton] += 1
        self.solution_skeletons[task.solution_skeleton] += 1


@dataclass
class Tally:
    """Counts of one run's redraws, and the distinct skeletons of each family."""

    redrawn: int = 0  # redraws of duplicates
    redrawn_over_cap: int = 0
    over_cap: int = 0  # tasks kept although a skeleton of theirs was at the cap
    cells_giving_up: Counter = field(default_factory=Counter)  # (family, difficulty) -> over-cap ends in a row
    programs: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)


def _settle(task: Written, seen: Uniqueness, tally: Tally, job) -> Written:
    """The draw for task.index that the uniqueness rules accept (redrawn as needed), written to disk.

    The first draw was written by a worker; redraws are built here and only the accepted one is written.
    """
    spec = None
    cap_redraws = 0
    cell = (task.family, task.difficulty)
    while True:
        if not seen.accepts(task):
            tally.redrawn += 1
        elif seen.over_cap(task) and cap_redraws < SKELETON_CAP_REDRAWS and tally.cells_giving_up[cell] < CELL_GIVES_UP:
            cap_redraws += 1
            tally.redrawn_over_cap += 1
        else:
            break
        if spec is None and task.name not in seen.names:  # the worker's folder, not an accepted task's
            shutil.rmtree(Path(task.set_dir) / task.dir_name, ignore_errors=True)
        if task.attempt + 1 >= MAX_ATTEMPTS:
            raise GenerateError(
                f"{task.family}/{task.difficulty}: {MAX_ATTEMPTS} draws in a row repeated earlier tasks; "
                "the family's parameter space is too small for this --n (lower --n or widen the family)"
            )
        task, spec = build(job(task.index, task.attempt + 1))
    if seen.over_cap(task):
        tally.over_cap += 1
        tally.cells_giving_up[cell] += 1
    elif cap_redraws:
        tally.cells_giving_up[cell] = 0  # a redraw found a new program: the cell is not exhausted
    if spec is not None:
        write_task(spec, Path(task.set_dir) / task.dir_name)
    return task


def symptom_share(styles: Counter) -> float | None:
    """The share of medium and hard tasks whose instruction states a symptom or goal ([metadata] style =
    "symptom") instead of a full spec; None when the set has no medium or hard task."""
    medium_hard = {key: c for key, c in styles.items() if key[0] in ("medium", "hard")}
    total = sum(medium_hard.values())
    symptom = sum(c for (_, style), c in medium_hard.items() if style == "symptom")
    return round(symptom / total, 4) if total else None


def _check_arguments(n: int, families: list[str], difficulties: list[str]) -> None:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise GenerateError(f"unknown families {unknown}; known: {', '.join(sorted(FAMILIES))}")
    bad = [d for d in difficulties if d not in DIFFICULTIES]
    if bad:
        raise GenerateError(f"unknown difficulties {bad}; use {', '.join(DIFFICULTIES)}")
    if n <= 0:
        raise GenerateError("--n must be at least 1")


def _prepare(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise GenerateError(f"{out_dir} is not empty; choose another --out or pass --force to replace it")
        looks_generated = any(
            (out_dir / marker).exists() for marker in ("summary.json", "manifest.jsonl", "train/manifest.jsonl")
        )
        if not looks_generated:
            raise GenerateError(
                f"{out_dir} holds files that `generate` did not write; --force only replaces an earlier output"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def generate(
    n: int,
    seed: int,
    out_dir: Path,
    families: Sequence[str] | None = None,
    difficulties: Sequence[str] | None = None,
    val: int = 0,
    *,
    jobs: int = 2,
    force: bool = False,
    progress: bool = True,
    skeleton_cap: int = DEFAULT_SKELETON_CAP,
) -> dict:
    """Writes n tasks under out_dir (layout in the module docstring) and returns a summary.

    skeleton_cap: how many tasks may share one instruction or solution skeleton before a task that
    would exceed it is redrawn (bounded; see the module docstring).
    """
    started = time.monotonic()
    families = list(families) if families else list(FAMILIES)
    difficulties = list(difficulties) if difficulties else list(DIFFICULTIES)
    _check_arguments(n, families, difficulties)
    if skeleton_cap < 1:
        raise GenerateError(f"--skeleton-cap must be at least 1, not {skeleton_cap}")
    out_dir = Path(out_dir)
    _prepare(out_dir, force)

    plan = schedule(n, families, difficulties)
    held_out = val_indices(plan, val)
    if held_out:
        sets = {"train": TaskSet(out_dir / "train", "train"), "val": TaskSet(out_dir / "val", "val")}
        split_of = ["val" if i in held_out else "train" for i in range(n)]
    else:
        sets = {"all": TaskSet(out_dir, None)}
        split_of = ["all"] * n
    set_dirs = [str(sets[split].path) for split in split_of]

    def job(index: int, attempt: int) -> Job:
        family, difficulty = plan[index]
        return Job(index, attempt, family, difficulty, task_seed(seed, index, attempt), set_dirs[index])

    seen = Uniqueness(skeleton_cap)
    tally = Tally()
    counts: Counter = Counter()
    styles: Counter = Counter()  # (difficulty, style) -> tasks
    bar = _progress(progress)
    pool = _pool(jobs)
    try:
        with bar:
            bar_id = bar.add_task("generate", total=n, rate="")
            first_draws = (job(i, 0) for i in range(n))
            results = (
                pool.imap(build_and_write, first_draws, chunksize=8) if pool else map(build_and_write, first_draws)
            )
            for task in results:  # in index order, whatever the number of workers
                task = _settle(task, seen, tally, job)
                seen.add(task)
                sets[split_of[task.index]].add(task)
                counts[(task.family, task.difficulty)] += 1
                styles[(task.difficulty, task.style)] += 1
                tally.programs.setdefault(task.family, (set(), set()))
                tally.programs[task.family][0].add(task.instruction_skeleton)
                tally.programs[task.family][1].add(task.solution_skeleton)
                bar.advance(bar_id)
                bar.update(bar_id, rate=f"{bar.tasks[0].completed / max(time.monotonic() - started, 1e-6):.0f} tasks/s")
    finally:
        for task_set in sets.values():
            task_set.close()
        if pool:
            pool.terminate()
            pool.join()

    written = {name: task_set.finish(seed, n) for name, task_set in sets.items()}
    by_family: Counter = Counter()
    by_difficulty: Counter = Counter()
    for (family, difficulty), c in counts.items():
        by_family[family] += c
        by_difficulty[difficulty] += c
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "val": len(held_out),
        "families": families,
        "difficulties": difficulties,
        "redrawn": tally.redrawn,
        "skeletons": {
            "cap": skeleton_cap,
            "instruction": len(seen.instruction_skeletons),
            "solution": len(seen.solution_skeletons),
            "redrawn_over_cap": tally.redrawn_over_cap,
            "over_cap": tally.over_cap,
            "by_family": {
                f: {"instruction": len(i), "solution": len(s)} for f, (i, s) in sorted(tally.programs.items())
            },
        },
        "by_family": dict(sorted(by_family.items())),
        "by_difficulty": {d: by_difficulty[d] for d in difficulties},
        "symptom_share_medium_hard": symptom_share(styles),
        "sets": {
            k: {"tasks": v["tasks"], "dataset": v["dataset"], "path": os.path.relpath(v["path"], out_dir)}
            for k, v in written.items()
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    seconds = time.monotonic() - started
    return {
        **summary,
        "sets": written,
        "out_dir": str(out_dir),
        "seconds": round(seconds, 3),
        "tasks_per_sec": round(n / seconds, 1),
    }
