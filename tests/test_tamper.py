"""The verifier runs in the agent's container (as in Harbor's): an agent that replaces or shadows
the interpreter the tests run with would score 1.0 without doing the task. The container's file
changes against its image are checked before the verifier runs. Real Docker, real validate."""

from __future__ import annotations

import pytest

from taskforge.validate import validate_tasks

pytestmark = pytest.mark.docker

EXIT_0 = "printf '#!/bin/sh\\nexit 0\\n' > {path} && chmod +x {path}"


@pytest.mark.parametrize("path", ["/usr/bin/python3", "/usr/local/bin/python3"], ids=["replaced", "shadowed"])
def test_an_oracle_that_fakes_python3_is_not_scored(write_hello, base_image, tmp_path, path):
    task_dir = write_hello("tamper", solution=EXIT_0.format(path=path))  # the task itself is not done
    (result,) = validate_tasks([task_dir], tmp_path / "run", jobs=1)
    assert result.status == "verifier_error", result
    assert "changed the verifier's toolchain" in result.detail and path.split("/")[-1] in result.detail


def test_a_solution_that_installs_its_own_command_still_passes(write_hello, base_image, tmp_path):
    solution = "echo forged > /app/out.txt && " + EXIT_0.format(path="/usr/local/bin/mytool")
    (result,) = validate_tasks([write_hello("tool", solution=solution)], tmp_path / "run", jobs=1)
    assert result.passed, result
