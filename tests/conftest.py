"""Shared fixtures. Integration tests use the real Docker engine: no engine is a failure, not a skip."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HARBOR_TELEMETRY", "0")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = REPO_ROOT / "tasks" / "sample"
# Fixture task dirs hold tests/test_*.py that run inside task containers, not in this suite.
collect_ignore = ["fixtures"]


@pytest.fixture(scope="session")
def docker_engine():
    """The process-wide client; fails the test (not skips) when no engine answers."""
    from taskforge.sandbox.docker import docker_client

    return docker_client()


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    from taskforge import BASE_IMAGE

    try:
        docker_engine.images.get(BASE_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any failure here means setup was not run
        pytest.fail(f"base image {BASE_IMAGE} missing: run `bash setup.sh env` first ({exc})")
    return BASE_IMAGE


def sample_task_dirs() -> dict[str, Path]:
    """family -> the first task of that family in the committed sample (tasks/sample/manifest.jsonl)."""
    first: dict[str, Path] = {}
    for line in (SAMPLE / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        first.setdefault(row["family"], SAMPLE / row["path"])
    return first


@pytest.fixture(scope="session")
def family_validation(tmp_path_factory, base_image) -> dict:
    """family -> TaskValidation: one `validate` call (oracle, nop, every near-miss) over one sample
    task per family, once per session. test_forge_docker, test_services and test_diagnosis all read
    it, so each family's image is built and its trials run once, not once per test file."""
    from taskforge.forge.families import FAMILIES
    from taskforge.tasks import load_task
    from taskforge.validate import validate_tasks

    dirs = sample_task_dirs()
    # The service tasks mostly wait on their services' timers: started first, beside the CPU-bound rest.
    order = sorted(FAMILIES, key=lambda name: not FAMILIES[name].__module__.endswith(".services"))
    results = validate_tasks([dirs[name] for name in order], tmp_path_factory.mktemp("families") / "run", jobs=3)
    return {load_task(Path(r.task_path)).metadata["family"]: r for r in results}


def our_containers() -> list[str]:
    """Full IDs of taskforge containers owned by this process or by processes that are gone
    (containers of other live taskforge processes on the machine are theirs to clean)."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=taskforge",
            "--format",
            '{{.ID}} {{.Label "taskforge.owner_pid"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ids = []
    for line in out.stdout.splitlines():
        container_id, _, pid = line.partition(" ")
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            ids.append(container_id)
    return ids


def container_exists(container_id: str) -> bool:
    return subprocess.run(["docker", "inspect", container_id], capture_output=True).returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a killed child not yet waited for) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def no_containers_left_behind():
    """After the suite, `docker ps -a` shows none of our containers."""
    yield
    from taskforge.sandbox import docker as sandbox_docker

    client = sandbox_docker.started_docker_client()
    if client is None:
        return
    sandbox_docker.wait_for_removals()
    sandbox_docker.reap_orphans(client)
    left = our_containers()
    assert not left, f"containers left behind after the suite: {left}"


def hello_spec(**overrides):
    """A small, valid TaskSpec: write a line to a file. Tests mutate it into bad variants."""
    from taskforge.tasks import TaskMetadata, TaskSpec

    fields = dict(
        name="taskforge-tests/hello",
        instruction="Write the word `forged` followed by a newline to /app/out.txt.",
        dockerfile_steps=["RUN mkdir -p /app"],
        workdir="/app",
        tests={
            "test_outputs.py": (
                "from pathlib import Path\n\n\n"
                "def test_output_file():\n"
                "    assert Path('/app/out.txt').read_text().strip() == 'forged'\n"
            )
        },
        solution="echo forged > /app/out.txt",
        metadata=TaskMetadata(
            family="hello", domain="data_processing", difficulty="easy", seed=0, generator_version="test"
        ),
        agent_timeout_sec=60.0,
        verifier_timeout_sec=60.0,
    )
    fields.update(overrides)
    return TaskSpec(**fields)


@pytest.fixture
def write_hello(tmp_path):
    """Writes hello_spec(**overrides) to tmp_path/<dirname> and returns the directory."""
    from taskforge.tasks import write_task

    def _write(dirname: str = "hello", **overrides) -> Path:
        return write_task(hello_spec(**overrides), tmp_path / dirname)

    return _write
