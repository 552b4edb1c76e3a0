"""Run directories, the crash-safe JSONL ledger and a concurrent work loop with a progress bar.

A run lives in runs/<run>/: ledger.jsonl (one line per finished trial, appended and fsynced
before the trial counts as done) and trials/<trial>/ in Harbor's layout. Re-running the same
command with the same run name reads the ledger and skips what is there, so a run killed at any
point (Ctrl-C, kill -9, a crash) loses at most the trials that were in flight. One process at a
time works in a run dir (`hold_run_dir`, an flock the kernel drops when the process dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from taskforge.sandbox.docker import prepare_run, remove_all_live_containers

console = Console(stderr=True)


def run_name(prefix: str, settings: dict) -> str:
    """The one run-name rule: <prefix>-<hash of the settings>. Same inputs and settings, same run,
    so running an interrupted command again resumes it."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def run_settings_mismatch(
    run_dir: Path, settings: dict, *, file: str = "run-settings.json", ignore: tuple[str, ...] = ()
) -> str | None:
    """A run resumes only with the settings it was started with: records them on first use;
    afterwards names what differs (keys in `ignore` may change), or returns None."""
    path = run_dir / file
    if not path.exists():
        write_json(path, settings)
        return None
    before = json.loads(path.read_text())
    keys = sorted((set(before) | set(settings)) - set(ignore))
    changed = [
        f"{key}: {before.get(key)!r} -> {settings.get(key)!r}" for key in keys if before.get(key) != settings.get(key)
    ]
    if not changed:
        write_json(path, settings)  # keeps ignored keys (e.g. a longer step count) current
    return "; ".join(changed) or None


RUN_LOCK_FILE = "run.lock"


class RunDirBusyError(RuntimeError):
    """Another process is working in the run directory."""


_held_run_dirs: dict[Path, int] = {}  # run dir -> nesting depth, for this process
_held_lock = threading.Lock()


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Holds run_dir/run.lock (flock) for the block, so two processes never run the same trials
    into one ledger. Re-entrant within a process (the stage and its attempt loop both hold it);
    raises RunDirBusyError when another process holds it. The kernel releases it if we die."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    with _held_lock:
        if key in _held_run_dirs:
            _held_run_dirs[key] += 1
            handle = None
        else:
            handle = (key / RUN_LOCK_FILE).open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RunDirBusyError(
                    f"{run_dir} is in use: another process (pid {holder}) holds {key / RUN_LOCK_FILE}. "
                    "Wait for it to finish, or pass --run NAME for a separate run."
                ) from None
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held_run_dirs[key] = 1
    try:
        yield
    finally:
        with _held_lock:
            _held_run_dirs[key] -= 1
            if not _held_run_dirs[key]:
                del _held_run_dirs[key]
                if handle is not None:
                    handle.close()  # closing the file releases the flock


def empty_run_dir(run_dir: Path) -> None:
    """Removes what an earlier run left in run_dir (for --fresh), holding it so no running process
    loses its files; raises RunDirBusyError when one holds it."""
    if not run_dir.exists():
        return
    with hold_run_dir(run_dir):
        for child in run_dir.iterdir():
            if child.name == RUN_LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def safe_name(name: str) -> str:
    """A task or trial name made safe as one path component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name).strip("_") or "task"


def trial_dir_name(task, agent: str, attempt: int | None = None) -> str:
    """<task dir name>-<hash of its path>__<agent>[__<attempt>]: unique even when two task
    directories share a name, readable in `ls`."""
    path_hash = hashlib.sha256(str(task.path).encode()).hexdigest()[:6]
    name = f"{safe_name(task.path.name)}-{path_hash}__{safe_name(agent)}"
    return name if attempt is None else f"{name}__{attempt}"


class Ledger[R: BaseModel]:
    """Append-only JSONL of records; a torn last line (a crash mid-write) is ignored on load."""

    def __init__(self, path: Path, model: type[R]):
        self.path = path
        self.model = model
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> list[R]:
        if not self.path.exists():
            return []
        records: list[R] = []
        for line_number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(self.model.model_validate_json(line))
            except ValidationError:
                # Only a torn final line is expected; anything else is a real problem to report.
                if line_number != len(self.path.read_text().splitlines()):
                    raise ValueError(f"{self.path}:{line_number}: unreadable ledger line; fix or delete it") from None
        return records

    def retire(self, stale: Callable[[R], bool]) -> list[R]:
        """Moves the records `stale` picks out of the ledger into <ledger>.retired.jsonl (kept for the
        record) and rewrites the ledger atomically, so every reader sees only current verdicts.
        Call it holding the run dir (hold_run_dir). Returns the retired records."""
        with self._lock:
            records = self.load()
            retired = [record for record in records if stale(record)]
            if not retired:
                return []
            retired_path = self.path.with_name(self.path.stem + ".retired.jsonl")
            for record in retired:
                append_line(retired_path, record.model_dump_json())
            kept = "".join(record.model_dump_json() + "\n" for record in records if not stale(record))
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            with tmp.open("w") as handle:
                handle.write(kept)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        return retired

    def append(self, record: R) -> None:
        with self._lock:
            self._repair_torn_tail()
            append_line(self.path, record.model_dump_json())

    def _repair_torn_tail(self) -> None:
        """After a crash mid-write the file may not end in a newline; start a fresh line."""
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    with self.path.open("a") as append_handle:
                        append_handle.write("\n")


def append_line(path: Path, line: str) -> None:
    """Appends one line and fsyncs it: once this returns, the line survives a crash."""
    with path.open("a") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def append_jsonl(path: Path, row: dict) -> None:
    """One JSON object as one durable line (metrics.jsonl and the like)."""
    append_line(path, json.dumps(row, default=str))


def write_json(path: Path, data) -> None:
    """Writes JSON atomically (temp file + rename) so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_concurrently[Item, Result](
    items: Iterable[Item],
    work: Callable[[Item], Result],
    *,
    jobs: int,
    description: str,
    total: int | None = None,
    on_done: Callable[[Result, Progress, int], None] | None = None,
) -> list[Result]:
    """Runs `work` over items on `jobs` threads with a progress bar; Ctrl-C stops cleanly.

    On Ctrl-C no new work starts, every container is removed (which ends work in flight) and
    KeyboardInterrupt propagates; what finished is already in the caller's ledger.
    """
    # On the main thread, before any worker: SIGTERM/SIGHUP clean up like Ctrl-C, and containers
    # of killed runs are reaped even when this run serves everything from its ledger.
    prepare_run()
    items = list(items)
    results: list[Result] = []
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not items,
    )
    with progress:
        bar = progress.add_task(description, total=total if total is not None else len(items), status="")
        executor = ThreadPoolExecutor(max_workers=max(1, jobs))
        pending: set[Future] = set()
        iterator = iter(items)
        try:
            for item in iterator:
                pending.add(executor.submit(work, item))
                if len(pending) >= max(1, jobs) * 2:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    record = future.result()
                    results.append(record)
                    progress.advance(bar)
                    if on_done is not None:
                        on_done(record, progress, bar)
                    next_item = next(iterator, None)
                    if next_item is not None:
                        pending.add(executor.submit(work, next_item))
        except BaseException:
            for future in pending:
                future.cancel()
            remove_all_live_containers()
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
    return results
