"""The Docker sandbox against the real engine: limits, timeouts, output caps, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from taskforge.sandbox.base import Resources
from taskforge.sandbox.docker import DockerSandbox, ensure_image, wait_for_removals

from .conftest import REPO_ROOT, container_exists, our_containers


@pytest.fixture
def sandbox(base_image):
    with DockerSandbox(base_image, Resources(cpus=1, memory_mb=512, pids_limit=64)) as sb:
        yield sb


def test_exec_captures_exit_code_and_interleaved_output(sandbox):
    result = sandbox.exec("echo out; echo err >&2; exit 3", 10)
    assert result.exit_code == 3
    assert result.output == "out\nerr\n"
    assert not result.timed_out and not result.truncated


def test_bytes_that_are_not_utf8_survive(sandbox):
    result = sandbox.exec(r"printf 'ok \xff\xfe end'", 10)
    assert result.output_bytes == b"ok \xff\xfe end"
    assert result.output == "ok \\xff\\xfe end"


def test_a_command_printing_100_mb_is_capped_head_and_tail(sandbox):
    started = time.monotonic()
    result = sandbox.exec("printf 'HEAD'; head -c 100000000 /dev/zero | tr '\\0' x; printf 'TAIL'", 60)
    assert time.monotonic() - started < 20
    assert result.exit_code == 0 and result.truncated
    assert result.original_size == 100_000_008
    assert result.output.startswith("HEADxxx") and result.output.endswith("xxxTAIL")
    assert "output truncated" in result.output
    assert len(result.output_bytes) < 60_000
    assert any("truncated" in notice for notice in result.notices)


def test_a_command_past_its_timeout_is_killed_with_its_children(sandbox):
    started = time.monotonic()
    result = sandbox.exec("sleep 300 & sleep 200; echo never", 1.5)
    assert time.monotonic() - started < 6
    assert result.timed_out
    assert "never" not in result.output
    assert any("timed out" in notice for notice in result.notices)
    left = sandbox.exec("ps -eo args | grep -c '^sleep [23]00' || true", 10)
    assert left.output.strip() == "0"


def test_a_background_process_does_not_block_exec_and_is_killed_before_verification(sandbox):
    started = time.monotonic()
    result = sandbox.exec("nohup sleep 300 >/dev/null 2>&1 & echo started", 10)
    assert result.output.strip() == "started"
    assert time.monotonic() - started < 3
    assert sandbox.exec("pgrep -c -f '[s]leep 300'", 10).output.strip() == "1"
    sandbox.kill_leftovers()
    assert sandbox.exec("pgrep -c -f '[s]leep 300' || true", 10).output.strip() == "0"
    assert sandbox.exec("echo still usable", 10).output.strip() == "still usable"


def test_a_fork_bomb_is_stopped_by_the_pids_limit(sandbox):
    started = time.monotonic()
    sandbox.exec(":(){ :|:& };:", 5)
    assert time.monotonic() - started < 30
    inspect = sandbox.container.client.api.inspect_container(sandbox.container.id)
    assert inspect["HostConfig"]["PidsLimit"] == 64
    assert inspect["State"]["Running"]
    sandbox.kill_leftovers()
    survivors = sandbox.exec("ls -d /proc/[0-9]* | wc -l", 10)
    assert survivors.exit_code == 0 and int(survivors.output) < 10


def test_limits_and_no_network_come_from_resources(sandbox):
    inspect = sandbox.container.client.api.inspect_container(sandbox.container.id)["HostConfig"]
    assert inspect["NanoCpus"] == 1_000_000_000
    assert inspect["Memory"] == 512 * 1024 * 1024
    assert inspect["NetworkMode"] == "none"
    interfaces = sandbox.exec("ls /sys/class/net", 10).output.split()
    assert interfaces == ["lo"]


def test_upload_and_read_files(sandbox):
    sandbox.upload_files({"a/run.sh": (b"#!/bin/bash\necho ran\n", 0o755), "data.bin": b"\x00\x01"}, "/srv/up")
    assert sandbox.exec("/srv/up/a/run.sh", 10).output == "ran\n"
    files = sandbox.read_files(["/srv/up/data.bin", "/srv/up/missing"])
    assert files == {"/srv/up/data.bin": b"\x00\x01", "/srv/up/missing": None}


def test_changed_paths_read_on_the_host_equal_the_engines_diff(sandbox):
    """The verifier's tamper check reads the writable layer's directory on this host instead of
    asking the engine for its diff (1-2.5 s per call here): both must name the same paths, for
    added, modified, deleted and replaced files and a symlink. A directory deleted and made again
    (opaque) hides image entries the layer does not list: then the engine's diff is used."""
    from taskforge.sandbox.docker import _engine_diffs_upper_dir, _readable_upper_dir, _walk_upper_dir

    if os.geteuid() != 0 or not _engine_diffs_upper_dir():
        pytest.skip("the engine's layer cannot be read here (not root, or no native overlay2 diff): diff used")

    def engine_diff() -> list[str]:
        return sorted(change["Path"] for change in sandbox.container.diff())

    changes = (
        "mkdir -p /srv/new/deep && echo a > /srv/new/deep/file",  # added, in new directories
        "echo changed >> /etc/debian_version",  # modified: copied up
        "rm /etc/issue.net",  # deleted: a whiteout
        "ln -s /srv/new /srv/link",
        "printf '#!/bin/sh\\nexit 0\\n' > /usr/local/bin/python3",  # what the tamper check looks for
    )
    for command in changes:
        assert sandbox.exec(command, 10).exit_code == 0, command
    upper = _readable_upper_dir(sandbox.container)
    assert upper is not None
    assert sorted(_walk_upper_dir(upper)) == sorted(sandbox.changed_paths()) == engine_diff()
    assert {"/srv/new/deep/file", "/etc/debian_version", "/etc/issue.net", "/srv/link"} <= set(engine_diff())
    assert "/usr/local/bin/python3" in engine_diff()

    remade = "rm -rf /usr/share/doc/bash && mkdir /usr/share/doc/bash && echo x > /usr/share/doc/bash/only"
    assert sandbox.exec(remade, 10).exit_code == 0
    assert _walk_upper_dir(upper) is None  # opaque: the layer alone does not say what it hides
    paths = sandbox.changed_paths()
    assert sorted(paths) == engine_diff() and "/usr/share/doc/bash/only" in paths
    assert any(path.startswith("/usr/share/doc/bash/") and path != "/usr/share/doc/bash/only" for path in paths)


def test_container_is_removed_when_the_block_raises(base_image):
    before = set(our_containers())
    with pytest.raises(RuntimeError):
        with DockerSandbox(base_image) as sb:
            container_id = sb.container.id
            raise RuntimeError("crash inside a trial")
    wait_for_removals()
    assert not container_exists(container_id)
    assert set(our_containers()) <= before


def test_images_are_built_once_per_content_hash(tmp_path, base_image):
    env_dir = tmp_path / "environment"
    env_dir.mkdir()
    (env_dir / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo built > /built.txt\n")
    first = ensure_image(env_dir)
    started = time.monotonic()
    assert ensure_image(env_dir) == first
    assert time.monotonic() - started < 1.0
    (env_dir / "extra.txt").write_text("changes the context\n")
    assert ensure_image(env_dir) != first


_CHILD = textwrap.dedent(
    """
    import sys, time
    from taskforge.sandbox.docker import DockerSandbox
    sb = DockerSandbox(sys.argv[1]); sb.start()
    print(sb.container.id, flush=True)
    try:
        sb.exec("sleep 120", 200)
    finally:
        sb.stop(wait=True)
    """
)


def _start_child(image: str) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, image], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    container_id = child.stdout.readline().strip()
    assert container_id, "child did not start a container"
    assert container_exists(container_id)
    time.sleep(0.5)
    return child, container_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_container_is_removed_after_ctrl_c_or_sigterm(base_image, signum):
    child, container_id = _start_child(base_image)
    child.send_signal(signum)
    child.wait(timeout=120)  # removal waits on the engine, which is slow when the machine is loaded
    assert not container_exists(container_id)


_CHILD_SIGNALLED_ON_THE_READER_THREAD = textwrap.dedent(
    """
    import signal, sys, threading, time
    from taskforge.sandbox.docker import DockerSandbox
    sb = DockerSandbox(sys.argv[1]); sb.start()

    def ctrl_c_on_the_reader_thread():
        # the kernel may hand a process's SIGINT to any thread: here, the one reading `sleep 600`
        # (a reader alive for 2 s; shorter execs come and go before it)
        first_seen = {}
        while True:
            for reader in [t for t in threading.enumerate() if t.name == "taskforge-exec" and t.is_alive()]:
                if time.monotonic() - first_seen.setdefault(reader.ident, time.monotonic()) > 2:
                    signal.pthread_kill(reader.ident, signal.SIGINT)
                    return
            time.sleep(0.1)

    threading.Thread(target=ctrl_c_on_the_reader_thread, daemon=True).start()
    print(sb.container.id, flush=True)
    try:
        sb.exec("sleep 600", 700)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        sb.stop(wait=True)
    """
)


def test_ctrl_c_delivered_to_the_exec_reader_thread_stops_a_running_command(base_image):
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SIGNALLED_ON_THE_READER_THREAD, base_image],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    container_id = child.stdout.readline().strip()
    assert container_id, "child did not start a container"
    # The command runs 600 s: the child ends long before unless Ctrl-C reached it while it ran.
    try:
        child.wait(timeout=300)
    finally:
        child.kill()  # a child that did not stop is not left running
    assert child.stdout.read().strip() == "interrupted"
    assert not container_exists(container_id)


def test_containers_of_a_killed_process_are_reaped_by_the_next_run(base_image):
    child, container_id = _start_child(base_image)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert container_exists(container_id)  # nothing could clean up after kill -9 ...
    subprocess.run(
        [sys.executable, "-c", "from taskforge.sandbox.docker import docker_client; docker_client()"],
        check=True,
        cwd=REPO_ROOT,
    )
    assert not container_exists(container_id)  # ... until the next taskforge process starts
