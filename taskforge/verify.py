"""The verifier and Harbor's reward contract.

After the agent: kill what it left running, replace /tests with the task's tests, run
`bash /tests/test.sh > /logs/verifier/test-stdout.txt 2>&1`, then read /logs/verifier/reward.json
(a flat dict of numbers; wins when both exist) or reward.txt (one number). A missing, empty or
non-numeric (NaN included) reward, or one outside [0, 1], is a named verifier error, never a silent
0 or a pass: `usable_reward` is the one rule, so validate, filter and eval read a reward alike.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import retry, retry_if_not_result, stop_after_attempt

from taskforge.sandbox.base import SandboxError

REWARD_JSON = "/logs/verifier/reward.json"
REWARD_TXT = "/logs/verifier/reward.txt"
TEST_STDOUT = "/logs/verifier/test-stdout.txt"

_PREPARE = "\nrm -rf /tests /logs/verifier && mkdir -p /logs/verifier /logs/agent /logs/artifacts"


def _is_prepared(output: bytes) -> bool:
    return b"TF_PREPARED" in output


# Under heavy load an exec has come back empty once in ~1,000 trials: ask again at once, 3 times in all.
# An exception is not retried; after the last attempt its output is returned, prepared or not.
@retry(
    stop=stop_after_attempt(3),
    retry=retry_if_not_result(_is_prepared),
    retry_error_callback=lambda state: state.outcome.result(),
)
def _prepare(sandbox) -> bytes:
    """Kills what the agent left running and empties /tests and /logs/verifier for the verifier."""
    return sandbox.kill_leftovers(then=_PREPARE + " && echo TF_PREPARED")


class VerifierError(RuntimeError):
    """The verifier did not produce a usable reward."""


class RewardFileNotFoundError(VerifierError):
    pass


class RewardFileEmptyError(VerifierError):
    pass


class InvalidRewardError(VerifierError):
    pass


class VerifierTimeoutError(VerifierError):
    pass


class VerifierShellBrokenError(VerifierError):
    """After the agent, the container's shell no longer runs (e.g. the agent deleted a library bash
    loads): the verifier cannot run there, so the trial is recorded as not scored instead of being
    retried as a harness failure (a rerun of the same episode would break it again)."""


class GradingToolchainChangedError(VerifierError):
    """The agent changed what the verifier runs through (its interpreter, test runner, loader or
    Python's start-up hooks): the tests' verdict cannot be trusted, so the trial is not scored."""


# The verifier runs in the agent's container (as in Harbor), so an agent could make every test pass
# by replacing the tools the tests run through. Checked against the image (the container's file
# changes) before the verifier runs; these names, on these PATH directories, are the toolchain.
_TOOLCHAIN_NAMES = frozenset({"bash", "sh", "dash", "env", "python", "python3", "pytest", "py.test", "uv", "uvx"})
_PATH_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/")
_PYTHON_LIB = re.compile(r"^/(usr/)?(local/)?lib/python3[^/]*/")
_PYTHON_HOOKS = re.compile(r"(^|/)(sitecustomize|usercustomize)\.py$|\.pth$|/_?pytest/|/pytest\.py$|/pluggy/")
_LOADER = re.compile(r"^/(usr/)?lib(64|32)?(/[^/]*-linux-gnu)?/(ld-linux[^/]*|libc\.so[^/]*)$")


def toolchain_changes(changed_paths: list[str]) -> list[str]:
    """The changed paths (added, modified or deleted since the image) that touch the grading toolchain."""
    hits = []
    for path in changed_paths:
        name = path.rsplit("/", 1)[-1]
        on_path = path[: len(path) - len(name)] in _PATH_DIRS
        if (
            (on_path and (name in _TOOLCHAIN_NAMES or re.fullmatch(r"python3\.\d+", name)))
            or path in ("/etc/ld.so.preload", "/conftest.py")
            or (_PYTHON_LIB.match(path) and _PYTHON_HOOKS.search(path))
            or _LOADER.match(path)
        ):
            hits.append(path)
    return hits


def usable_reward(value: object, where: str) -> float:
    """The one rule for a reward value: a finite number in [0, 1], else InvalidRewardError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRewardError(f"{where} is {value!r}, not a finite number")
    if not 0.0 <= value <= 1.0:
        raise InvalidRewardError(f"{where} is {value:g}, outside [0, 1]: a reward is a score between 0 and 1")
    return float(value)


def parse_reward(reward_json: bytes | None, reward_txt: bytes | None) -> dict[str, float]:
    """Applies Harbor's contract to the two reward files' contents (None: file absent)."""
    if reward_json is not None:
        return _parse_reward_json(reward_json)
    if reward_txt is not None:
        text = reward_txt.decode("utf-8", errors="replace").strip()
        if not text:
            raise RewardFileEmptyError(f"{REWARD_TXT} is empty")
        try:
            value = float(text)
        except ValueError:
            raise InvalidRewardError(f"{REWARD_TXT} holds {text[:80]!r}, not a number") from None
        return {"reward": usable_reward(value, REWARD_TXT)}
    raise RewardFileNotFoundError(f"test.sh wrote neither {REWARD_TXT} nor {REWARD_JSON}")


def _parse_reward_json(raw: bytes) -> dict[str, float]:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise RewardFileEmptyError(f"{REWARD_JSON} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRewardError(f"{REWARD_JSON} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise InvalidRewardError(f"{REWARD_JSON} must be a non-empty flat dict of numbers, got {text[:80]!r}")
    rewards = {}
    for key, value in data.items():
        rewards[str(key)] = usable_reward(value, f"{REWARD_JSON}: {key!r}")
    return rewards


def scalar_reward(rewards: dict[str, float]) -> float:
    """One number per trial: `reward` when present, else the mean of the keys."""
    if "reward" in rewards:
        return rewards["reward"]
    return sum(rewards.values()) / len(rewards)


@dataclass
class VerifierOutcome:
    rewards: dict[str, float] | None
    error: VerifierError | None
    test_stdout: bytes = b""
    seconds: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def reward(self) -> float | None:
        return None if self.rewards is None else scalar_reward(self.rewards)


def run_verifier(sandbox, tests_dir: Path, timeout_sec: float, workdir: str | None = None) -> VerifierOutcome:
    """Runs the task's verifier in `sandbox` (after the agent) and reads the reward."""
    started = time.monotonic()
    prepared = _prepare(sandbox)
    if not _is_prepared(prepared):
        if not prepared.strip():  # no answer at all: the harness failed, not the agent; the attempt is retried
            raise SandboxError(f"could not prepare /tests and /logs/verifier: {prepared[-500:]!r}")
        # The container answered, but its shell could not run our preparation: the agent broke it.
        error = VerifierShellBrokenError(
            "the container's shell failed after the agent ran, so the verifier could not run: "
            + prepared[-300:].decode(errors="replace").strip()
        )
        return VerifierOutcome(None, error, b"", time.monotonic() - started, {})
    changed_paths = getattr(sandbox, "changed_paths", None)
    tampered = toolchain_changes(changed_paths()) if changed_paths else []
    if tampered:
        shown = ", ".join(tampered[:5]) + (f" and {len(tampered) - 5} more" if len(tampered) > 5 else "")
        error = GradingToolchainChangedError(
            f"the agent changed the verifier's toolchain ({shown}): the tests were not run and the trial is not scored"
        )
        return VerifierOutcome(None, error, b"", time.monotonic() - started, {})
    sandbox.upload_dir(tests_dir, "/tests")
    run = sandbox.exec(
        f"bash /tests/test.sh > {TEST_STDOUT} 2>&1",
        timeout_sec,
        workdir=workdir,
        collect_files=[REWARD_JSON, REWARD_TXT, TEST_STDOUT],
    )
    files = run.files
    stdout = files.get(TEST_STDOUT) or b""
    seconds = time.monotonic() - started
    present = {k: v for k, v in files.items() if v is not None}
    if run.timed_out:
        error = VerifierTimeoutError(f"tests/test.sh ran past the verifier timeout of {timeout_sec:g} s")
        return VerifierOutcome(None, error, stdout, seconds, present)
    try:
        rewards = parse_reward(files.get(REWARD_JSON), files.get(REWARD_TXT))
    except VerifierError as error:
        return VerifierOutcome(None, error, stdout, seconds, present)
    return VerifierOutcome(rewards, None, stdout, seconds, present)
