"""The sandbox contract every backend honours: start, exec, upload, download, stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Resources:
    """Container limits, read from a task's [environment] table."""

    cpus: float | None = None  # None: no CPU quota, as Harbor when task.toml sets none
    memory_mb: int = 2048
    pids_limit: int = 512
    network: bool = False  # no network unless the task asks for it
    storage_mb: int = 10240  # the container's writable layer (task.toml's storage_mb)


@dataclass
class ExecResult:
    """What one command did. `output` is stdout and stderr interleaved, capped head + tail.

    `output_bytes` keeps the raw bytes (non-UTF-8 included); `output` is their text with
    undecodable bytes shown as \\xNN escapes, so nothing is silently lost.
    """

    exit_code: int
    output_bytes: bytes
    timed_out: bool = False
    truncated: bool = False
    original_size: int = 0
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    files: dict[str, bytes | None] = field(default_factory=dict)  # collect_files, read after the command

    @property
    def output(self) -> str:
        return self.output_bytes.decode("utf-8", errors="backslashreplace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the command run inside it)."""


class SandboxLimitError(SandboxError):
    """A command went past a limit of its sandbox (its disk), or broke the sandbox (killed every
    process in it): the task's or the agent's doing, not the infrastructure's, so the trial is
    recorded with this error rather than retried. The message names the cause."""


class ImageBuildError(SandboxError):
    """The task's environment did not build. The message carries the build log's tail."""


@runtime_checkable
class Sandbox(Protocol):
    """A running environment for one trial. `DockerSandbox` is the backend; the agent loop, the
    scripted players and the verifier see only this."""

    head_bytes: int  # how much of a long output exec keeps from its start ...
    tail_bytes: int  # ... and from its end

    def start(self) -> None: ...

    def exec(
        self,
        command: str,
        timeout_sec: float,
        *,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        collect_files: list[str] | None = None,
        collect_max_bytes: int = 1 << 20,
        mark_truncation: bool = True,
    ) -> ExecResult: ...

    def upload_dir(self, local_dir: Path, container_dir: str) -> None: ...

    def upload_files(self, files: dict[str, bytes | tuple[bytes, int]], container_dir: str) -> None: ...

    def read_file(self, container_path: str, max_bytes: int = 1 << 20) -> bytes | None: ...

    def read_files(self, container_paths: list[str], max_bytes: int = 1 << 20) -> dict[str, bytes | None]: ...

    def kill_leftovers(self, then: str = "") -> bytes: ...

    def stop(self, wait: bool = False) -> None: ...
