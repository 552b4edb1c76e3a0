"""Docker sandbox: one container per trial, talking to the engine through the docker SDK.

Speed matters (validation and RL rollouts start thousands of containers), so a trial costs one
create+start, one exec per command and one forced remove. Every exec has a host-side deadline: a
command that stops its own wrapper (`kill -STOP $PPID`) cannot hang a trial. Every container
carries labels naming the process that owns it; containers of a process that died (kill -9, a
crash) are reaped the next time any taskforge process opens the engine (`prepare_run`).

A command that breaks its sandbox is named, from the container's cgroup counters and state: a fork
bomb at the pids limit, an OOM kill, `kill -9 -1` (SandboxLimitError: the container stopped). The
writable layer is bounded by the engine's quota where it has one (overlay2 on xfs with pquota),
else by `ulimit -f` and a throttled measure of the layer after execs (SandboxLimitError).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import re
import secrets
import signal
import socket
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from taskforge.sandbox.base import ExecResult, ImageBuildError, Resources, Sandbox, SandboxError, SandboxLimitError

LABEL = "taskforge"
LABEL_OWNER_PID = "taskforge.owner_pid"
LABEL_OWNER_HOST = "taskforge.owner_host"
IMAGE_REPO = "taskforge-env"

# Terminal output cap (the paper truncates at 50,000 characters): keep the head and the tail.
DEFAULT_HEAD_BYTES = 25_000
DEFAULT_TAIL_BYTES = 25_000

# The wrapper's GNU timeout kills a command at timeout_sec (SIGKILL 2 s later), so an exec still
# running this long after its timeout has had its wrapper stopped: the host kills it (_kill_exec).
EXEC_GRACE_SEC = 5.0
# The host-side deadline of the sandbox's own short execs (reading files, killing leftovers).
RAW_EXEC_DEADLINE_SEC = 120.0
# How long the diagnosis of a broken exec waits for its own exec (the pids limit may still be used up).
DIAGNOSE_EXEC_DEADLINE_SEC = 5.0
# Without the engine's disk quota the writable layer is measured after execs, at most this share of
# the time (the engine walks the layer: ~1 ms for a fresh one, ~60 ms for 20,000 files).
DISK_CHECK_SHARE = 0.1
# A command killed by SIGXFSZ wrote a file past the `ulimit -f` the wrapper sets at the disk limit.
EXIT_FILE_TOO_LARGE = 128 + signal.SIGXFSZ

# Sets `refused` (forks refused at the pids limit), `ooms` (processes the OOM killer killed) and
# `pids` (processes in the container), all so far, from the container's cgroup (v1 or v2). Bash
# builtins only: no fork, so it costs nothing and works at the pids limit.
_CGROUP_COUNTERS = r"""
_tf_counters() {
  local key value f
  refused=0 ooms=0 pids=0
  for f in /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do
    [ -r "$f" ] && read -r key refused <"$f" && break
  done
  for f in /sys/fs/cgroup/pids/pids.current /sys/fs/cgroup/pids.current; do
    [ -r "$f" ] && read -r pids <"$f" && break
  done
  for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do
    [ -r "$f" ] || continue
    while read -r key value; do [ "$key" = oom_kill ] && ooms=$value; done <"$f"
    break
  done
} 2>/dev/null
"""
_PRINT_COUNTERS = r"""
_tf_counters; printf 'C %s %s %s\n' "$refused" "$ooms" "$pids"
"""

# Prints "rc size\n" and the capped contents of $out, then removes it.
_PRINT_OUTPUT = r"""
size=$(wc -c <"$out")
printf '%s %s\n' "$rc" "$size"
if [ "$size" -le $((TF_HEAD + TF_TAIL)) ]; then
  cat "$out"
else
  head -c "$TF_HEAD" "$out"; tail -c "$TF_TAIL" "$out"
fi
rm -f "$out"
"""

# Runs a command in its own process group under GNU timeout (which signals the whole group, so
# background children die with it), writes its output to a file rather than the exec stream (a
# background process holding the stream would block the exec), then prints "rc size\n" and the
# capped output; then "C refused ooms pids\n", the cgroup's counters, read last so that a fork
# bomb the command left running has had time to hit the pids limit; then, when asked, the files
# named in TF_COLLECT (saves an exec per trial). $1, when set, is `ulimit -f` (KiB): without the
# engine's disk quota no single file may outgrow the disk limit. The `{ } 2>/dev/null` keeps
# bash's job report ("Killed ...") out of the stream, ahead of the header.
_EXEC_WRAPPER = (
    _CGROUP_COUNTERS
    + r"""
d=/tmp/.taskforge; mkdir -p "$d" 2>/dev/null; out="$d/out.$$"
if [ -n "${1:-}" ]; then ulimit -f "$1"; fi
if command -v timeout >/dev/null 2>&1; then
  { timeout -k 2 "$TF_TIMEOUT" bash -c "$TF_CMD" >"$out" 2>&1 </dev/null; } 2>/dev/null
else
  { bash -c "$TF_CMD" >"$out" 2>&1 </dev/null; } 2>/dev/null
fi
rc=$?
"""
    + _PRINT_OUTPUT
    + _PRINT_COUNTERS
    + r"""
if [ -n "${TF_COLLECT:-}" ]; then
  IFS=: read -r -a collect <<<"$TF_COLLECT"
  for f in "${collect[@]}"; do
    if [ -f "$f" ]; then
      n=$(head -c "$TF_COLLECT_MAX" "$f" | wc -c); printf 'Y %s\n' "$n"; head -c "$TF_COLLECT_MAX" "$f"
    else
      printf 'N 0\n'
    fi
  done
fi
"""
)

# Kills every process except PID 1 (docker-init), its `sleep infinity` child (the lowest-numbered
# child of PID 1: it started first) and that child's descendants, docker exec sessions (parent
# outside the namespace) and this shell, in a few passes so processes forked meanwhile die too.
# Run before the verifier so nothing the agent left behind can rewrite the reward file. The
# keep-alive's descendants are the environment's own services: an image ENTRYPOINT starts them
# before it execs the keep-alive (see forge/families/services.py); the agent's processes descend
# from exec sessions or, orphaned, from PID 1, never from the keep-alive.
_KILL_LEFTOVERS = r"""
keep=""  # the keep-alive `sleep infinity`: the first child PID 1 started
for d in /proc/[0-9]*; do
  p=${d#/proc/}; read -r stat <"$d/stat" 2>/dev/null || continue
  rest=${stat##*) }; rest=${rest#* }; ppid=${rest%% *}
  if [ "$ppid" = 1 ] && { [ -z "$keep" ] || [ "$p" -lt "$keep" ]; }; then keep=$p; fi
done
_tf_under_keep() {  # is process $1 the keep-alive or one of its descendants?
  local q=$1 stat rest
  while [ -n "$keep" ] && [ "$q" -gt 1 ] 2>/dev/null; do
    [ "$q" = "$keep" ] && return 0
    read -r stat <"/proc/$q/stat" 2>/dev/null || return 1
    rest=${stat##*) }; rest=${rest#* }; q=${rest%% *}
  done
  return 1
}
# Each pass stops every process it finds before killing any, so none forks while the pass runs
# (a fork bomb out-forked five kill-only passes on a loaded machine); what was forked before its
# parent stopped is found by the next pass.
for pass in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  found=""
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    if [ "$p" = 1 ] || [ "$p" = $$ ]; then continue; fi
    read -r stat <"$d/stat" 2>/dev/null || continue
    rest=${stat##*) }; rest=${rest#* }; ppid=${rest%% *}
    if [ "$ppid" = 0 ] || _tf_under_keep "$p"; then continue; fi
    kill -STOP "$p" 2>/dev/null && found="$found $p"
  done
  [ -z "$found" ] && break
  kill -9 $found 2>/dev/null
done
true
"""

# Kills one exec that stopped answering: its wrapper (started with $0 = $1, as are the wrapper's
# subshells) and every process under it. All are stopped first, so none can fork away while the
# tree is read; then killed. Prints what the command had written in the wrapper's format (exit
# code 137), so its output is not lost. Only bash builtins in the loop: the container may be near
# its pids limit.
_KILL_EXEC = (
    r"""
exec 2>/dev/null
tree=" "
while :; do
  grew=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$tree" in *" $p "*) continue ;; esac
    read -r stat <"$d/stat" || continue
    rest=${stat##*) }; rest=${rest#* }; ppid=${rest%% *}
    mapfile -d '' -t argv <"$d/cmdline"
    if [ "${argv[3]:-}" = "$1" ] || [[ "$tree" == *" $ppid "* ]]; then
      kill -STOP "$p"; tree="$tree$p "; grew=1
    fi
  done
  [ "$grew" = 0 ] && break
done
[ "$tree" = " " ] && exit 0
kill -KILL $tree
out=""
for p in $tree; do
  if [ -f "/tmp/.taskforge/out.$p" ]; then out=/tmp/.taskforge/out.$p; break; fi
done
[ -n "$out" ] || exit 0
rc=137
"""
    + _PRINT_OUTPUT
)

_client: docker.DockerClient | None = None
# Whether the engine bounds a container's writable layer (storage_opt size: overlay2 on xfs with
# pquota); None until the first container of this process tries it.
_storage_opt_supported: bool | None = None
_client_lock = threading.Lock()
_live_containers: dict[str, Container] = {}
_live_lock = threading.Lock()
_build_locks: dict[str, threading.Lock] = {}
_pending_removals: set[Future] = set()
_remover: ThreadPoolExecutor | None = None


def docker_client() -> docker.DockerClient:
    """The process-wide Docker client; reaps containers of dead taskforge processes on first use."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                client = docker.from_env(timeout=600)
                client.ping()
            except docker.errors.DockerException as exc:
                raise SandboxError(
                    "No Docker engine answers. Start it (or run `bash setup.sh env`, which installs and "
                    f"starts one): {exc}"
                ) from exc
            _client = client
            reap_orphans(client)
            atexit.register(remove_all_live_containers)
            _install_signal_handlers()
        return _client


def prepare_run() -> None:
    """Call from the main thread when a run starts (every command that runs trials passes through
    runner.run_concurrently, which calls it). SIGTERM and SIGHUP then remove this process's
    containers as Ctrl-C does: the client is often first made in a worker thread, where no signal
    handler can be installed. And containers of killed taskforge processes are reaped now, even
    when this run starts none (one served from its ledger). Cheap after the first call."""
    _install_signal_handlers()
    try:
        docker_client()  # reaps on first use: one list call when there is nothing to reap
    except SandboxError:
        pass  # no engine: a run served from its ledger needs none, and one that starts a container says so


def started_docker_client() -> docker.DockerClient | None:
    """The process's Docker client if one was made, without making one (for clean-up paths)."""
    return _client


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(client: docker.DockerClient) -> int:
    """Removes containers left by taskforge processes on this host that no longer exist."""
    removed = 0
    host = socket.gethostname()
    # The low-level list returns labels inline: the high-level one fetches each container again
    # and fails when another process removes one in between.
    for summary in client.api.containers(all=True, filters={"label": LABEL}):
        labels = summary.get("Labels") or {}
        if labels.get(LABEL_OWNER_HOST) != host:
            continue
        pid = int(labels.get(LABEL_OWNER_PID, "0") or 0)
        if pid == os.getpid() or (pid and _pid_alive(pid)):
            continue
        try:
            client.api.remove_container(summary["Id"], force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
    return removed


def remove_all_live_containers() -> None:
    """Removes every container this process still has (atexit, Ctrl-C, crash handling)."""
    wait_for_removals()
    with _live_lock:
        containers = list(_live_containers.values())
        _live_containers.clear()
    for container in containers:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP become SystemExit so `finally` blocks and atexit remove containers."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit)


def hash_directory(directory: Path) -> str:
    """Content hash of an environment/ folder for its image tag: names and bytes (dirhash) plus
    executable bits, which Docker's build context keeps and dirhash does not look at."""
    from dirhash import dirhash

    modes = "".join(
        f"{p.relative_to(directory).as_posix()}\0{os.access(p, os.X_OK):d}\n"
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    )
    return hashlib.sha256(f"{dirhash(directory, 'sha256')}\n{modes}".encode()).hexdigest()[:16]


def ensure_image(environment_dir: Path, build_timeout_sec: float = 600.0) -> str:
    """Builds the image of a task's environment/ once per content hash; returns its tag."""
    client = docker_client()
    tag = f"{IMAGE_REPO}:{hash_directory(environment_dir)}"
    lock = _build_locks.setdefault(tag, threading.Lock())
    with lock:
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        log_lines: list[str] = []
        started = time.monotonic()
        try:
            for chunk in client.api.build(
                path=str(environment_dir), tag=tag, rm=True, forcerm=True, decode=True, timeout=build_timeout_sec
            ):
                if "stream" in chunk:
                    log_lines.extend(chunk["stream"].rstrip("\n").splitlines())
                if "error" in chunk:
                    log_lines.append(chunk["error"].strip())
                    raise ImageBuildError(_build_failure_message(environment_dir, log_lines))
                if time.monotonic() - started > build_timeout_sec:
                    raise ImageBuildError(f"{environment_dir}: build exceeded build_timeout_sec={build_timeout_sec:g}")
        except docker.errors.APIError as exc:
            log_lines.append(str(exc))
            raise ImageBuildError(_build_failure_message(environment_dir, log_lines)) from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageBuildError(f"{environment_dir}: build failed: {exc}") from exc
        return tag


_BUILD_STEP = re.compile(r"^Step \d+/\d+ : (\S+)\s*(.*)$")
_MISSING_SOURCE = re.compile(r"stat (\S+?): file does not exist|(\S+?): no such file or directory")


def _build_failure_message(environment_dir: Path, log_lines: list[str]) -> str:
    tail = "\n".join(log_lines[-15:])
    error_line = log_lines[-1] if log_lines else "no build output"
    hint = _build_failure_hint(log_lines)
    hint = f"\nhint: {hint}" if hint else ""
    return f"{environment_dir / 'Dockerfile'} failed to build: {error_line}{hint}\nbuild log (tail):\n{tail}"


def _build_failure_hint(log_lines: list[str]) -> str:
    """Names what failed when the failing step says it: the FROM image that could not be found or
    pulled, or a COPY/ADD source that is not in environment/ (both print "not found"-type errors)."""
    step = None  # the last step the builder started, and whether it got past it (" ---> ")
    finished = False
    for line in log_lines:
        match = _BUILD_STEP.match(line.strip())
        if match:
            step, finished = (match.group(1).upper(), match.group(2)), False
        elif line.strip().startswith("--->"):
            finished = True
    error = log_lines[-1] if log_lines else ""
    if step is None:  # no step started: only a failed pull says which image
        pull_failed = any(
            text in error for text in ("pull access denied", "repository does not exist", "manifest unknown")
        )
        return _missing_image_hint(None) if pull_failed else ""
    instruction, arguments = step
    if finished:
        return ""
    if instruction == "FROM":
        image = next((word for word in arguments.split() if not word.startswith("--")), None)
        return _missing_image_hint(image)
    if instruction in ("COPY", "ADD") and ("not found" in error or "no such file" in error.lower()):
        match = _MISSING_SOURCE.search(error)
        sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
        missing = (match.group(1) or match.group(2)) if match else ", ".join(sources)
        return (
            f"{instruction} source {missing} is not in environment/ (the build context): "
            "add the file there or fix the path in the Dockerfile"
        )
    return ""


def _missing_image_hint(image: str | None) -> str:
    from taskforge import BASE_IMAGE

    if image is None or image == BASE_IMAGE or image.split(":")[0] == BASE_IMAGE.split(":")[0]:
        return (
            f"the base image is missing; build it with `bash envs/build-base.sh {BASE_IMAGE}` (or `bash setup.sh env`)."
        )
    return (
        f"the FROM image {image} could not be found or pulled: check its name and that the engine can reach "
        "its registry."
    )


def _parse_collected(raw: bytes, container_paths: list[str]) -> dict[str, bytes | None]:
    """Parses 'Y <n>\\n<n bytes>' / 'N 0\\n' records, one per path, in order."""
    result: dict[str, bytes | None] = {}
    offset = 0
    for path in container_paths:
        newline = raw.find(b"\n", offset)
        if newline < 0:
            result[path] = None
            continue
        header = raw[offset:newline].split()
        if len(header) != 2 or header[0] not in (b"Y", b"N") or not header[1].isdigit():
            # The wrapper could not finish reading (a fork bomb's leftovers at the pids limit print
            # "fork: retry" into the stream): what is not readable counts as not there.
            result.update(dict.fromkeys(container_paths[len(result) :]))
            break
        flag, size = header
        offset = newline + 1
        if flag == b"Y":
            result[path] = raw[offset : offset + int(size)]
            offset += int(size)
        else:
            result[path] = None
    return result


def _tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        made_dirs: set[str] = set()
        for name, (data, mode) in sorted(files.items()):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory and directory not in made_dirs:
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    made_dirs.add(directory)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


SIGNAL_CHECK_SEC = 0.2  # how soon a waiting exec notices Ctrl-C / SIGTERM delivered to another thread


class _ExecStart:
    """One exec's output, read in a daemon thread: the docker client reads exec streams with no
    socket timeout, so only a thread the caller can stop waiting for bounds an exec."""

    def __init__(self, api: docker.APIClient, exec_id: str):
        self._output = b""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(api, exec_id), name="taskforge-exec", daemon=True)
        self._thread.start()

    def _read(self, api: docker.APIClient, exec_id: str) -> None:
        try:
            self._output = api.exec_start(exec_id, stream=False, demux=False) or b""
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by result()
            self._error = exc

    def wait(self, seconds: float) -> bool:
        """True once the exec has returned; False when it has not within `seconds`. Waits in short
        slices: a Ctrl-C the kernel delivers to the reader thread only interrupts the main thread's
        wait when that wait returns, so one long join would hold it until the command ended."""
        deadline = time.monotonic() + seconds
        while self._thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            self._thread.join(min(left, SIGNAL_CHECK_SEC))
        return not self._thread.is_alive()

    def result(self) -> bytes:
        if self._error is not None:
            raise self._error
        return self._output


class DockerSandbox(Sandbox):
    """A running container for one trial (the `Sandbox` backend). Use as a context manager: it is always removed."""

    def __init__(
        self,
        image: str,
        resources: Resources = Resources(),
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        head_bytes: int = DEFAULT_HEAD_BYTES,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ):
        self.image = image
        self.resources = resources
        self.env = dict(env or {})
        self.workdir = workdir
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.container: Container | None = None
        # Without the engine's disk quota: the wrapper's `ulimit -f` and a measure of the writable
        # layer after execs (throttled to DISK_CHECK_SHARE of the time) stand in for it.
        self.watch_disk = False
        self._disk_checked_at = 0.0
        self._disk_check_sec = 0.0
        # The cgroup's counters (forks refused at the pids limit, OOM kills) as of the last exec:
        # what grew since is what the next command did.
        self._forks_refused_seen = 0
        self._oom_kills_seen = 0

    def __enter__(self) -> DockerSandbox:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        global _storage_opt_supported
        client = docker_client()
        labels = {LABEL: "1", LABEL_OWNER_PID: str(os.getpid()), LABEL_OWNER_HOST: socket.gethostname()}
        settings = dict(
            command=["sleep", "infinity"],
            init=True,
            detach=True,
            labels=labels,
            environment=self.env,
            working_dir=self.workdir,
            network_mode="bridge" if self.resources.network else "none",
            mem_limit=f"{self.resources.memory_mb}m",
            memswap_limit=f"{self.resources.memory_mb}m",
            pids_limit=self.resources.pids_limit,
        )
        if self.resources.cpus:
            settings["nano_cpus"] = int(self.resources.cpus * 1e9)
        bounded = _storage_opt_supported is not False  # ask the engine for a disk quota
        try:
            try:
                # The first container of the process finds out whether the engine can bound its
                # disk: one refused create (~0.1 s) when it cannot.
                storage_opt = {"size": f"{self.resources.storage_mb}M"} if bounded else None
                container = client.containers.create(self.image, **settings, storage_opt=storage_opt)
                _storage_opt_supported = _storage_opt_supported or bounded
            except docker.errors.APIError as exc:
                if not bounded or not _refuses_storage_opt(exc):
                    raise
                _storage_opt_supported = bounded = False
                container = client.containers.create(self.image, **settings)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"image {self.image} is not built: {exc}") from exc
        except docker.errors.APIError as exc:
            raise SandboxError(f"could not create a container from {self.image}: {exc}") from exc
        self.watch_disk = not bounded
        with _live_lock:
            _live_containers[container.id] = container
        self.container = container
        try:
            container.start()
        except docker.errors.APIError as exc:
            self.stop()
            raise SandboxError(f"could not start a container from {self.image}: {exc}") from exc

    def _require(self) -> Container:
        if self.container is None:
            raise SandboxError("sandbox is not started")
        return self.container

    def _run_exec(
        self,
        script: str,
        args: tuple[str, ...] = (),
        *,
        deadline_sec: float,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> tuple[bytes, bool]:
        """Runs `bash -c script args` in the container: (its output, False). If it has not
        returned within deadline_sec, the host kills it: (the output recovered from it, True)."""
        container = self._require()
        api = container.client.api
        marker = f"taskforge-exec-{secrets.token_hex(8)}"  # the script's $0: how _kill_exec finds it
        try:
            exec_id = api.exec_create(
                container.id,
                ["bash", "-c", script, marker, *args],
                stdout=True,
                stderr=True,
                environment=env,
                workdir=workdir,
                user=user or "",
            )["Id"]
            started = _ExecStart(api, exec_id)
            if started.wait(deadline_sec):
                return started.result(), False
        except docker.errors.APIError as exc:
            # A command stopped the container, or left a fork bomb running: say so, rather than
            # the engine's "is not running" or "OCI runtime exec failed".
            stopped = self._why_stopped()
            if stopped:
                raise SandboxLimitError(f"exec failed in {container.short_id}: {stopped}") from exc
            pids, limit = self._pids_in_use(), self.resources.pids_limit
            if pids is not None and pids >= limit - 2:
                raise SandboxLimitError(f"exec failed in {container.short_id}: {_pids_used_up(pids, limit)}") from exc
            raise SandboxError(f"exec failed in {container.short_id}: {exc.explanation or exc}") from exc
        return self._kill_exec(marker, started), True

    def _is_live(self) -> bool:
        """False once this process is removing the container (stop, Ctrl-C, SIGTERM)."""
        with _live_lock:
            return self.container is not None and self.container.id in _live_containers

    def _why_stopped(self) -> str | None:
        """In plain words, why the container stopped running; None while it runs (or is being
        removed or gone, which is this process's doing, not a command's)."""
        container = self.container
        if container is None or not self._is_live():
            return None
        try:
            state = container.client.api.inspect_container(container.id)["State"]
        except docker.errors.APIError:
            return None
        if state.get("Running") or state.get("Status") in ("removing", "dead"):
            return None
        exit_code = state.get("ExitCode")
        if state.get("OOMKilled"):
            return f"the container ran out of memory (OOM-killed; its limit is {self.resources.memory_mb} MB)"
        if exit_code in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
            return (
                "the command killed every process in the container (kill -9 -1?): "
                f"the container stopped (exit code {exit_code})"
            )
        return f"the container stopped (exit code {exit_code})"

    def _read_counters(self) -> tuple[int, int, int] | None:
        """The cgroup's (forks refused, OOM kills, pids) from a short exec; None when no exec
        starts (the pids limit is used up, or every process is dying)."""
        try:
            raw, killed = self._run_exec(
                _CGROUP_COUNTERS + _PRINT_COUNTERS,
                deadline_sec=DIAGNOSE_EXEC_DEADLINE_SEC,
                user="0",
            )
            refused, ooms, pids = (int(n) for n in raw.split()[1:4])
        except (SandboxError, ValueError):
            return None
        return None if killed else (refused, ooms, pids)

    def _limit_notices(self, forks_refused: int, oom_kills: int, pids: int) -> list[str]:
        """Names the limits the cgroup's counters say were hit since the last exec."""
        notices = []
        limit = self.resources.pids_limit
        new_refusals = forks_refused - self._forks_refused_seen
        if new_refusals > 0 or pids >= limit - 2:
            notices.append(_pids_used_up(pids, limit, max(new_refusals, 0)))
        if oom_kills > self._oom_kills_seen:
            notices.append(_out_of_memory(self.resources.memory_mb, oom_kills - self._oom_kills_seen))
        self._forks_refused_seen = max(self._forks_refused_seen, forks_refused)
        self._oom_kills_seen = max(self._oom_kills_seen, oom_kills)
        return notices

    def _why_the_exec_broke(self) -> tuple[list[str], bool]:
        """For an exec whose wrapper did not finish or was killed by the host: (the causes in
        plain words, whether the container has stopped). Asks the engine for the container's
        state, then the cgroup's counters (from an exec, or the engine's stats when none starts)."""
        stopped = self._why_stopped()
        if stopped:
            return [stopped], True
        counters = self._read_counters()
        if counters is None and self._is_live():
            for _ in range(10):  # kill -9 -1 stops the container a moment later
                time.sleep(0.2)
                stopped = self._why_stopped()
                if stopped:
                    return [stopped], True
            pids, limit = self._pids_in_use(), self.resources.pids_limit
            if pids is not None and pids >= limit - 2:
                return [_pids_used_up(pids, limit)], False
            return ["the sandbox could not run the command to completion (no process could start in it)"], False
        if counters is None:
            return ["the sandbox was removed while the command ran"], False
        return self._limit_notices(*counters), False

    def _pids_in_use(self) -> int | None:
        container = self._require()
        try:
            stats = container.client.api.stats(container.id, stream=False, one_shot=True)
            return int(stats["pids_stats"]["current"])
        except (docker.errors.APIError, KeyError, TypeError, ValueError):
            return None

    def _kill_exec(self, marker: str, started: _ExecStart) -> bytes:
        """Kills the processes of the exec whose script runs as `marker`, from a second exec (as
        root, so none is out of reach); returns the output recovered from the killed command, or
        b"". Waits a bounded time for each exec: if even the killer cannot run (the pids limit is
        used up), the stuck exec is left to end when the container is removed."""
        container = self._require()
        api = container.client.api
        recovered = b""
        try:
            exec_id = api.exec_create(
                container.id,
                ["bash", "-c", _KILL_EXEC, "taskforge-kill", marker],
                stdout=True,
                stderr=True,
                environment={"TF_HEAD": str(self.head_bytes), "TF_TAIL": str(self.tail_bytes)},
                user="0",
            )["Id"]
            killer = _ExecStart(api, exec_id)
            if killer.wait(EXEC_GRACE_SEC):
                recovered = killer.result()
        except docker.errors.APIError:
            pass  # the caller reports the command as timed out all the same
        started.wait(EXEC_GRACE_SEC)  # lets the killed exec's thread finish
        return recovered

    def _raw_exec(self, script: str, *args: str, env: dict[str, str] | None = None) -> bytes:
        """`bash -c script args` for the sandbox's own short jobs (reading files, killing leftovers)."""
        output, killed = self._run_exec(script, args, deadline_sec=RAW_EXEC_DEADLINE_SEC, env=env)
        if killed:
            raise SandboxError(
                f"an exec in {self._require().short_id} stopped answering and was killed by the host "
                f"after {RAW_EXEC_DEADLINE_SEC:g} s"
            )
        return output

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
    ) -> ExecResult:
        """Runs `command` with bash; kills its whole process group after `timeout_sec`. An exec
        still running EXEC_GRACE_SEC later (the command stopped its own wrapper) is killed by the
        host and reported as timed out, with a notice saying so.

        `collect_files` are read right after the command in the same exec (ExecResult.files).
        With mark_truncation=False a truncated output is head + tail bytes with no marker line
        between them (for callers that report the cut in a field of their own).
        """
        started = time.monotonic()
        wrapper_env = {
            **(env or {}),
            "TF_CMD": command,
            "TF_TIMEOUT": f"{max(timeout_sec, 0.1):.3f}",
            "TF_HEAD": str(self.head_bytes),
            "TF_TAIL": str(self.tail_bytes),
        }
        if collect_files:
            wrapper_env["TF_COLLECT"] = ":".join(collect_files)
            wrapper_env["TF_COLLECT_MAX"] = str(collect_max_bytes)
        file_size_limit_kib = str(self.resources.storage_mb * 1024) if self.watch_disk else ""
        raw, killed = self._run_exec(
            _EXEC_WRAPPER,
            (file_size_limit_kib,),
            deadline_sec=max(timeout_sec, 0.1) + EXEC_GRACE_SEC,
            env=wrapper_env,
            workdir=workdir,
            user=user,
        )
        seconds = time.monotonic() - started
        header, _, body = raw.partition(b"\n")
        try:
            exit_code_text, size_text = header.split()
            exit_code, size = int(exit_code_text), int(size_text)
        except ValueError:
            if killed:  # the host killed the command (see _kill_exec) and recovered none of its output
                exit_code, size, body = 137, 0, b""
            else:
                # The wrapper itself could not run to the end (a fork bomb used up the pids limit,
                # the command killed every process): name the cause. A stopped container ends the trial.
                causes, stopped = self._why_the_exec_broke()
                if stopped:
                    raise SandboxLimitError(causes[0]) from None
                return ExecResult(
                    exit_code=-1,
                    output_bytes=raw[-(self.head_bytes + self.tail_bytes) :],
                    seconds=seconds,
                    notices=causes or ["the sandbox could not run the command to completion (its wrapper was killed)"],
                )
        if self.watch_disk:
            self._check_disk(exit_code)
        timed_out = killed or (exit_code in (124, 137) and seconds >= timeout_sec * 0.95)
        truncated = size > self.head_bytes + self.tail_bytes
        shown = min(size, self.head_bytes + self.tail_bytes)
        body, rest = body[:shown], body[shown:]
        limit_notices = []
        if rest.startswith(b"C "):  # absent when the host killed the command
            counters, _, rest = rest.partition(b"\n")
            try:
                limit_notices = self._limit_notices(*(int(n) for n in counters.split()[1:4]))
            except (TypeError, ValueError):
                pass  # the wrapper could not read the cgroup
        elif killed:  # a fork bomb can keep the wrapper from finishing: ask the cgroup
            limit_notices, stopped = self._why_the_exec_broke()
            if stopped:
                raise SandboxLimitError(limit_notices[0])
        files = _parse_collected(rest, collect_files) if collect_files else {}
        notices = []
        if truncated:
            omitted = size - self.head_bytes - self.tail_bytes
            if mark_truncation:
                marker = f"\n[... output truncated: {omitted} of {size} bytes omitted ...]\n".encode()
                body = body[: self.head_bytes] + marker + body[self.head_bytes :]
            notices.append(
                f"output truncated: showing the first {self.head_bytes} and last {self.tail_bytes} of {size} bytes"
            )
        if killed:
            notices.append(
                f"command stopped answering after its {timeout_sec:g} s timeout and was killed by the host "
                f"after {seconds:.1f} s"
            )
        elif timed_out:
            notices.append(f"command timed out after {timeout_sec:g} s and was killed")
        notices.extend(limit_notices)
        return ExecResult(
            exit_code=exit_code,
            output_bytes=body,
            timed_out=timed_out,
            truncated=truncated,
            original_size=size,
            seconds=seconds,
            notices=notices,
            files=files,
        )

    def _check_disk(self, exit_code: int) -> None:
        """Without the engine's quota: ends the trial (SandboxLimitError) when the command wrote a
        file past the disk limit (the wrapper's `ulimit -f` killed it) or the writable layer has
        outgrown the limit. The layer is measured at most DISK_CHECK_SHARE of the time."""
        limit_bytes = self.resources.storage_mb << 20
        if exit_code == EXIT_FILE_TOO_LARGE:
            raise SandboxLimitError(
                f"the command tried to write a file over the container's disk limit of {_size(limit_bytes)} "
                "(killed by SIGXFSZ)"
            )
        now = time.monotonic()
        if self._disk_checked_at and now - self._disk_checked_at < self._disk_check_sec / DISK_CHECK_SHARE:
            return
        used = self.writable_layer_bytes()
        self._disk_checked_at = time.monotonic()
        self._disk_check_sec = self._disk_checked_at - now
        if used > limit_bytes:
            raise SandboxLimitError(
                f"the task's container wrote {_size(used)}, over its disk limit of {_size(limit_bytes)}"
            )

    def writable_layer_bytes(self) -> int:
        """The size of the files the container added or changed (the engine walks its writable
        layer; it counts apparent sizes, so a sparse file counts whole)."""
        container = self._require()
        try:
            listed = container.client.api.containers(all=True, filters={"id": container.id}, size=True)
        except docker.errors.APIError as exc:
            raise SandboxError(f"could not measure the container's disk use: {exc.explanation or exc}") from exc
        return int(listed[0].get("SizeRw") or 0) if listed else 0

    def upload_files(self, files: dict[str, bytes | tuple[bytes, int]], container_dir: str) -> None:
        """Writes files (relative path -> bytes, or (bytes, mode)) under container_dir."""
        container = self._require()
        base = container_dir.strip("/")
        entries = {}
        for name, value in files.items():
            data, mode = value if isinstance(value, tuple) else (value, 0o644)
            entries[f"{base}/{name}" if base else name] = (data, mode)
        try:
            container.put_archive("/", _tar_of(entries))
        except docker.errors.APIError as exc:
            raise SandboxError(f"upload to {container_dir} failed: {exc}") from exc

    def upload_dir(self, local_dir: Path, container_dir: str) -> None:
        files = {}
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            mode = 0o755 if os.access(path, os.X_OK) or path.suffix == ".sh" else 0o644
            files[path.relative_to(local_dir).as_posix()] = (path.read_bytes(), mode)
        self.upload_files(files, container_dir)

    def read_file(self, container_path: str, max_bytes: int = 1 << 20) -> bytes | None:
        """The file's bytes (at most max_bytes), or None when it does not exist."""
        raw = self._raw_exec(
            'if [ -f "$1" ]; then printf Y; head -c "$2" "$1"; else printf N; fi', container_path, str(max_bytes)
        )
        if not raw.startswith(b"Y"):
            return None
        return raw[1:]

    def read_files(self, container_paths: list[str], max_bytes: int = 1 << 20) -> dict[str, bytes | None]:
        """Several files in one exec: path -> bytes (at most max_bytes), or None when absent."""
        script = (
            'for f in "$@"; do if [ -f "$f" ]; then n=$(head -c "$TF_MAX" "$f" | wc -c); printf "Y %s\\n" "$n"; '
            'head -c "$TF_MAX" "$f"; else printf "N 0\\n"; fi; done'
        )
        raw = self._raw_exec(script, *container_paths, env={"TF_MAX": str(max_bytes)})
        return _parse_collected(raw, container_paths)

    def kill_leftovers(self, then: str = "") -> bytes:
        """Kills every process the agent left running (daemons, background jobs), then runs
        `then` in the same exec (saves a round trip); returns that exec's output."""
        try:
            raw = self._raw_exec(_CGROUP_COUNTERS + _KILL_LEFTOVERS + _PRINT_COUNTERS + then)
        except SandboxError:
            if then:
                raise
            return b""  # the container may be at its pids limit; removal kills everything anyway
        counters, _, output = raw.partition(b"\n")
        try:  # what the leftovers did is not the next command's doing: no notice for it
            self._limit_notices(*(int(n) for n in counters.split()[1:4]))
        except (TypeError, ValueError):
            return raw
        return output

    def changed_paths(self) -> list[str]:
        """Every path added, changed or deleted in the container since its image; the verifier
        checks them for a tampered toolchain. Read from the writable layer's directory on this host
        when the engine's overlay2 diff is that directory (its native diff, and the directory is
        readable here, no directory deleted and made again): the same paths as the engine's diff at
        ~1 ms instead of the 1-2.5 s the engine takes per call on this machine's Docker 20.10
        (most of a verifier's time). Else the engine's diff."""
        container = self._require()
        upper = _readable_upper_dir(container)
        if upper is not None:
            try:
                paths = _walk_upper_dir(upper)
            except OSError:
                paths = None  # the layer went away or turned unreadable: ask the engine
            if paths is not None:
                return paths
        try:
            return [change["Path"] for change in container.diff() or []]
        except docker.errors.APIError as exc:
            raise SandboxError(f"could not list the container's file changes: {exc.explanation or exc}") from exc

    def stop(self, wait: bool = False) -> None:
        """Removes the container. By default in the background (it does not change the trial's
        outcome, and removal costs ~50 ms per trial); `wait_for_removals()` or process exit
        waits for it."""
        container, self.container = self.container, None
        if container is None:
            return
        future = _removal_pool().submit(_remove_container, container)
        with _live_lock:
            _pending_removals.add(future)
        future.add_done_callback(lambda f: _discard_pending(f))
        if wait:
            future.result()


# Whether the engine's overlay2 diff is its upper directory as is ("Native Overlay Diff: true":
# no redirect_dir, whiteouts as 0/0 character devices); None until asked.
_native_overlay_diff: bool | None = None


def _engine_diffs_upper_dir() -> bool:
    global _native_overlay_diff
    if _native_overlay_diff is None:
        try:
            info = docker_client().info()
        except docker.errors.DockerException:
            return False
        status = {key: value for key, value in info.get("DriverStatus") or []}
        _native_overlay_diff = info.get("Driver") == "overlay2" and status.get("Native Overlay Diff") == "true"
    return _native_overlay_diff


def _readable_upper_dir(container: Container) -> Path | None:
    """The container's overlay2 upper directory when this process can read it (a local engine in
    this mount namespace, run as root) and the engine's own diff is that directory; else None."""
    driver = (container.attrs or {}).get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper or not _engine_diffs_upper_dir():
        return None
    path = Path(upper)
    return path if path.is_dir() and os.access(path, os.R_OK | os.X_OK) else None


_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def _is_opaque(directory: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(directory, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass  # no such attribute (or not readable under that name)
    return False


def _walk_upper_dir(upper: Path) -> list[str] | None:
    """Every entry of an overlay2 upper directory as a container path: an added or changed file,
    a directory with a change inside it, or a whiteout (a deleted file): what the engine's native
    diff reports. None when a directory in it is opaque (deleted and made again: the engine then
    also names the image's entries it hides, which are not in this directory). Raises OSError when
    a directory cannot be read (never a silent partial list)."""

    def fail(error: OSError) -> None:
        raise error

    paths = []
    for root, dirs, files in os.walk(upper, onerror=fail):
        relative = os.path.relpath(root, upper)
        if relative != "." and _is_opaque(root):
            return None
        prefix = "/" if relative == "." else f"/{relative}/"
        paths.extend(prefix + name for name in dirs + files)
    return paths


def _refuses_storage_opt(exc: docker.errors.APIError) -> bool:
    """The engine's answer to a storage_opt it cannot honour (overlay2 on xfs without pquota,
    other storage drivers)."""
    text = str(exc).lower()
    return any(words in text for words in ("storage-opt", "storage opt", "storage_opt", "storageopt"))


def _pids_used_up(pids: int, limit: int, forks_refused: int = 0) -> str:
    refused = f"; {forks_refused} forks refused" if forks_refused else ""
    return f"the container's processes used up its process limit ({pids} of {limit} pids{refused}): a fork bomb?"


def _out_of_memory(memory_mb: int, oom_kills: int = 0) -> str:
    killed = f"{oom_kills} process(es)" if oom_kills else "processes"
    return f"the container ran out of memory (OOM-killed: the kernel killed {killed} at its {memory_mb} MB limit)"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 30):.1f} GB" if n_bytes >= 1 << 30 else f"{n_bytes / (1 << 20):.0f} MB"


def _removal_pool() -> ThreadPoolExecutor:
    global _remover
    with _live_lock:
        if _remover is None:
            _remover = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taskforge-remove")
        return _remover


def _discard_pending(future: Future) -> None:
    with _live_lock:
        _pending_removals.discard(future)


def _remove_container(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc) and "is already" not in str(exc):
            raise SandboxError(f"could not remove container {container.short_id}: {exc}") from exc
    finally:
        with _live_lock:
            _live_containers.pop(container.id, None)


def wait_for_removals() -> None:
    """Blocks until every container handed to the background remover is gone."""
    while True:
        with _live_lock:
            pending = list(_pending_removals)
        if not pending:
            return
        for future in pending:
            try:
                future.result()
            except SandboxError:
                pass
