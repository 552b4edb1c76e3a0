"""Harbor itself runs the tasks taskforge writes: `harbor run` with oracle scores 1.0, nop 0.0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

HARBOR = Path(sys.executable).parent / "harbor"
FAST_OVERLAY = REPO_ROOT / "envs" / "harbor-fast.yaml"


def harbor_run(task_dir: Path, agent: str, jobs_dir: Path, job_name: str) -> list[dict]:
    """Runs the real harbor CLI on one task; returns the trials' result.json contents."""
    env = {**os.environ, "HARBOR_TELEMETRY": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    completed = subprocess.run(
        [
            str(HARBOR),
            "run",
            "-p",
            str(task_dir),
            "-a",
            agent,
            "-o",
            str(jobs_dir),
            "--job-name",
            job_name,
            "-y",
            "--extra-docker-compose",
            str(FAST_OVERLAY),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    trial_results = [json.loads(p.read_text()) for p in (jobs_dir / job_name).glob("*/result.json")]
    assert trial_results, f"harbor wrote no trial result: {completed.stdout[-2000:]}"
    return trial_results


@pytest.mark.harbor
@pytest.mark.parametrize(("agent", "expected"), [("oracle", 1.0), ("nop", 0.0)])
def test_harbor_runs_a_task_taskforge_wrote(write_hello, base_image, tmp_path, agent, expected):
    task_dir = write_hello("forged")
    (trial,) = harbor_run(task_dir, agent, tmp_path / "jobs", f"tf-{agent}")
    assert trial["exception_info"] is None, trial["exception_info"]
    assert trial["verifier_result"]["rewards"] == {"reward": expected}
