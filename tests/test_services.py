"""The service families against the real Docker engine: a service started by the image's ENTRYPOINT
runs in the task's container, survives the agent's session, and the tests probe it live.

The sample task of each family (tasks/sample) is validated once per session, in the shared
`family_validation` of tests/conftest.py (started first there: their trials mostly wait on the
services): the oracle scores 1, the nop agent 0, and so does each near-miss: a fix that is never
loaded (the config edited but the service not restarted; the site deployed or the report built by
hand, the service left broken).
"""

from __future__ import annotations

import random
import time

import pytest

from taskforge.forge.families import FAMILIES
from taskforge.forge.families.services import GitPushDeploy, SpoolWorker, TickScheduler, WebServiceRepair
from taskforge.sandbox.docker import DockerSandbox, ensure_image
from taskforge.tasks import lint_task, load_task

from .conftest import sample_task_dirs

SERVICE_FAMILIES = [cls.name for cls in (WebServiceRepair, SpoolWorker, GitPushDeploy, TickScheduler)]


@pytest.fixture(scope="module")
def service_tasks():
    """The sample task of each service family (conftest.family_validation validates them with the rest)."""
    dirs = sample_task_dirs()
    return [dirs[name] for name in SERVICE_FAMILIES]


def test_families_are_registered_and_start_a_service():
    assert set(SERVICE_FAMILIES) <= set(FAMILIES)
    for name in SERVICE_FAMILIES:
        for difficulty in ("easy", "medium", "hard"):
            spec = FAMILIES[name].sample(random.Random(3), difficulty, seed=3)
            assert spec.dockerfile_steps[-1] == 'ENTRYPOINT ["/usr/local/sbin/svc-entrypoint"]', spec.name
            assert spec.near_misses, f"{spec.name}: no near-miss solution"
            assert "svc status" in spec.instruction, spec.name


def test_service_tasks_lint_clean(service_tasks):
    assert len(service_tasks) == len(SERVICE_FAMILIES)
    for path in service_tasks:
        assert lint_task(path) == [], path


def test_validate_oracle_passes_nop_and_near_misses_fail(family_validation):
    results = [family_validation[name] for name in SERVICE_FAMILIES]
    for result in results:
        assert result.status == "passed", f"{result.task_name}: {result.status} {result.detail}"
        assert result.oracle_reward == 1.0 and result.nop_reward == 0.0, result.task_name
        assert result.near_miss_rewards and set(result.near_miss_rewards.values()) == {0.0}, result.task_name
    near_misses = {name for r in results for name in r.near_miss_rewards}
    assert {"config_not_reloaded", "deploys_by_hand", "runs_job_by_hand"} <= near_misses


def test_the_environments_service_survives_the_agents_leftovers_do_not(service_tasks):
    """Before the verifier the sandbox kills what the agent left running, but not the supervisor's
    tree: a web server the agent starts by hand is gone, the supervised worker still runs."""
    task = load_task(next(p for p in service_tasks if p.name.startswith("spool_worker")))
    image = ensure_image(task.path / "environment")
    with DockerSandbox(image) as box:
        deadline = time.monotonic() + 20
        while box.exec("svc status $(ls /etc/svc)", timeout_sec=10).exit_code != 0:
            assert time.monotonic() < deadline, "the supervised service never started"
            time.sleep(0.2)
        started = box.exec(
            "setsid python3 -m http.server 8765 >/dev/null 2>&1 & sleep 0.5; pgrep -f 'http[.]server'", 10
        )
        assert started.exit_code == 0 and started.output.strip()
        box.kill_leftovers()
        left = box.exec("pgrep -f 'http[.]server'; svc status $(ls /etc/svc)", timeout_sec=10)
        assert left.output.strip().splitlines()[-1].endswith(")"), left.output  # "<name>: running (pid N)"
        assert len(left.output.strip().splitlines()) == 1, f"the agent's server survived: {left.output}"
