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


class BreaksTheShell:
    """Deletes the library bash loads, then says DONE."""

    name = "breaks-the-shell"

    def __init__(self):
        self.turn = 0

    def next_action(self, messages):
        from taskforge.agent.policy import PolicyReply

        self.turn += 1
        if self.turn == 1:
            return PolicyReply(text="```bash\nrm -f /usr/lib/x86_64-linux-gnu/libtinfo.so.6*\n```")
        return PolicyReply(text="DONE")


def test_an_agent_that_breaks_the_shell_is_recorded_not_scored_and_does_not_stop_the_eval(
    write_hello, base_image, tmp_path
):
    """Deleting a library bash loads leaves a container whose shell cannot run the verifier: the
    attempt is recorded as a verifier error (not scored, counted failed), and the eval ends with its
    summary, instead of a harness failure that stops the whole eval or study (a rerun of the same
    episode would break it again)."""
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.evaluate import evaluate
    from taskforge.runner import Ledger
    from taskforge.tasks import load_task
    from taskforge.trial import TrialRecord

    task = load_task(write_hello("breaks-bash"))
    run_dir = tmp_path / "eval"
    summary, not_run = evaluate(
        [task], run_dir, BreaksTheShell, attempts=1, concurrency=1, episode=EpisodeConfig(max_turns=2)
    )
    assert not_run == [] and (run_dir / "eval.json").is_file()
    (record,) = Ledger(run_dir / "ledger.jsonl", TrialRecord).load()
    assert record.error_type == "VerifierShellBrokenError" and "libtinfo" in record.error_message, record
    assert summary.overall.pass_at_1 == 0.0 and summary.overall.error_rate == 1.0
