"""One trial: environment up, an agent acts, the verifier grades, everything is written down.

Results are written in Harbor's TrialResult shape (trial_dir/result.json, agent/, verifier/) so
Harbor's tooling and ours read the same files. A policy (a model, or a scripted player) becomes a
trial's agent through `EpisodeAgent`, the one adapter from the agent loop to a trial; its episode
is written beside result.json as transcript.json.
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from harbor.models.agent.context import AgentContext
from harbor.models.task.id import LocalTaskId
from harbor.models.trial.config import AgentConfig as HarborAgentConfig
from harbor.models.trial.config import TaskConfig as HarborTaskRef
from harbor.models.trial.config import TrialConfig
from harbor.models.trial.result import AgentInfo, ExceptionInfo, ModelInfo, TimingInfo, TrialResult
from harbor.models.verifier.result import VerifierResult
from pydantic import BaseModel
from rich.markup import escape

from taskforge import __version__
from taskforge.agent.base import Agent, AgentOutcome, AgentTimeoutError
from taskforge.agent.episode import Episode, EpisodeConfig
from taskforge.agent.loop import run_episode
from taskforge.agent.policy import Policy
from taskforge.runner import Ledger, console
from taskforge.sandbox.base import ImageBuildError, Resources, Sandbox, SandboxError
from taskforge.sandbox.docker import DockerSandbox, ensure_image
from taskforge.tasks import Task, task_checksum
from taskforge.verify import (
    GradingToolchainChangedError,
    InvalidRewardError,
    RewardFileEmptyError,
    RewardFileNotFoundError,
    VerifierError,
    VerifierShellBrokenError,
    VerifierTimeoutError,
    run_verifier,
    scalar_reward,
)

TRANSCRIPT_FILE = "transcript.json"

# What a recorded error type means. Trial records carry exception class names (ours, or Harbor's
# from its result.json, which uses the same names); the groups are built from the classes, so a
# renamed exception cannot silently fall out of its group.
ErrorKind = Literal["agent_timeout", "verifier_timeout", "build_failed", "sandbox_error", "verifier_error", "other"]
_ERROR_KINDS: dict[str, ErrorKind] = {
    AgentTimeoutError.__name__: "agent_timeout",
    VerifierTimeoutError.__name__: "verifier_timeout",
    ImageBuildError.__name__: "build_failed",
    SandboxError.__name__: "sandbox_error",
    **{
        cls.__name__: "verifier_error"
        for cls in (
            VerifierError,
            RewardFileNotFoundError,
            RewardFileEmptyError,
            InvalidRewardError,
            GradingToolchainChangedError,
            VerifierShellBrokenError,
        )
    },
}


def error_kind(error_type: str | None) -> ErrorKind | None:
    """The kind of a recorded error type (None when the trial had no error)."""
    if error_type is None:
        return None
    return _ERROR_KINDS.get(error_type, "other")


class TrialRecord(BaseModel):
    """One line of a run's ledger: the outcome of one trial."""

    task_name: str
    task_path: str
    trial_name: str
    agent: str
    attempt: int = 0
    # The task's content when the trial ran (tasks.task_checksum); a verdict holds only for that content.
    # None in ledgers written before it was recorded: such a verdict is not trusted.
    task_checksum: str | None = None
    reward: float | None = None
    rewards: dict[str, float] | None = None
    error_type: str | None = None
    error_message: str | None = None
    agent_timed_out: bool = False
    n_input_tokens: int | None = None
    n_output_tokens: int | None = None
    stop_reason: str | None = None
    n_turns: int | None = None
    notices: list[str] = []  # what the sandbox said about the agent's commands (process limit, OOM, disk)
    seconds: float = 0.0
    trial_dir: str
    finished_at: str

    @property
    def passed(self) -> bool:
        return self.reward is not None and self.reward >= 1.0

    @property
    def error_kind(self) -> ErrorKind | None:
        return error_kind(self.error_type)


def retire_changed_tasks(ledger: Ledger[TrialRecord], task_paths: Iterable[Path]) -> list[str]:
    """A finished trial counts only for the task content it ran: the ledger's records of these tasks
    that ran other content (the task was edited since) are retired, so resuming runs them again.
    Says so on the console; returns the names of the changed tasks."""
    checksums = {str(path.resolve()): task_checksum(path.resolve()) for path in task_paths}
    retired = ledger.retire(
        lambda record: record.task_path in checksums and record.task_checksum != checksums[record.task_path]
    )
    changed = sorted({record.task_name for record in retired})
    if changed:
        shown = ", ".join(changed[:10]) + (", ..." if len(changed) > 10 else "")
        console.print(
            escape(f"{len(changed)} task(s) changed since the last run: run again ({shown})"), highlight=False
        )
    return changed


def _now() -> datetime:
    return datetime.now(UTC)


def resources_for(task: Task) -> Resources:
    env = task.config.environment
    return Resources(
        # No CPU quota unless the task sets one, as Harbor: a 1-CPU quota throttles tools that size
        # their thread pools to the host's cores (a Go build and bisect ran 6x slower than in Harbor).
        cpus=float(env.cpus) if env.cpus else None,
        memory_mb=int(env.memory_mb or 2048),
        storage_mb=int(env.storage_mb or Resources.storage_mb),
        network=task.wants_network,
    )


def image_for(task: Task) -> str:
    """The task's image: its prebuilt docker_image, or environment/ built once per content hash."""
    env = task.config.environment
    if env.docker_image:
        return env.docker_image
    return ensure_image(task.environment_dir, env.build_timeout_sec)


def run_trial(task: Task, agent: Agent, trial_dir: Path, *, attempt: int = 0) -> TrialRecord:
    """Runs one trial and writes trial_dir/result.json; never raises for a failing task."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    checksum = task_checksum(task.path)  # what this trial runs, before anything can change it
    timings: dict[str, TimingInfo] = {}
    outcome = AgentOutcome()
    rewards: dict[str, float] | None = None
    error: BaseException | None = None
    agent_timed_out = False
    agent_timeout = task.agent_timeout_sec

    phase_start = _now()
    try:
        image = image_for(task)
        with DockerSandbox(
            image, resources_for(task), env=dict(task.config.environment.env), workdir=task.config.environment.workdir
        ) as sandbox:
            timings["environment_setup"] = TimingInfo(started_at=phase_start, finished_at=_now())
            phase_start = _now()
            try:
                outcome = agent.run(task, sandbox, trial_dir / "agent", agent_timeout)
            except AgentTimeoutError:
                agent_timed_out = True  # Harbor grades a timed-out agent all the same
            agent_timed_out = agent_timed_out or outcome.timed_out
            timings["agent_execution"] = TimingInfo(started_at=phase_start, finished_at=_now())
            phase_start = _now()
            verified = run_verifier(
                sandbox, task.tests_dir, task.config.verifier.timeout_sec, workdir=task.config.environment.workdir
            )
            timings["verifier"] = TimingInfo(started_at=phase_start, finished_at=_now())
            _write_verifier_files(trial_dir, verified.files)
            rewards, error = verified.rewards, verified.error
    except (ImageBuildError, SandboxError, VerifierError) as exc:
        error = exc
    if error is None and agent_timed_out:
        error_type, error_message = AgentTimeoutError.__name__, f"agent ran past {agent_timeout:g} s"
    elif error is not None:
        error_type, error_message = type(error).__name__, str(error)
    else:
        error_type = error_message = None

    finished = _now()
    record = TrialRecord(
        task_name=task.name,
        task_path=str(task.path),
        trial_name=trial_dir.name,
        agent=agent.name,
        attempt=attempt,
        task_checksum=checksum,
        reward=None if rewards is None else scalar_reward(rewards),
        rewards=rewards,
        error_type=error_type,
        error_message=error_message,
        agent_timed_out=agent_timed_out,
        n_input_tokens=outcome.n_input_tokens,
        n_output_tokens=outcome.n_output_tokens,
        stop_reason=outcome.stop_reason,
        n_turns=outcome.n_turns,
        notices=outcome.notices,
        seconds=(finished - started).total_seconds(),
        trial_dir=str(trial_dir),
        finished_at=finished.isoformat(),
    )
    _write_harbor_result(task, agent, trial_dir, record, outcome, timings, error, started, finished)
    return record


def _write_verifier_files(trial_dir: Path, files: dict[str, bytes]) -> None:
    verifier_dir = trial_dir / "verifier"
    verifier_dir.mkdir(parents=True, exist_ok=True)
    for container_path, data in files.items():
        (verifier_dir / Path(container_path).name).write_bytes(data)


def _model_info(agent) -> ModelInfo | None:
    """Agents driven by a model name it in `model_name` (and optionally `model_provider`)."""
    model_name = getattr(agent, "model_name", None)
    if not model_name:
        return None
    return ModelInfo(name=model_name, provider=getattr(agent, "model_provider", None))


def _write_harbor_result(task, agent, trial_dir, record, outcome, timings, error, started, finished) -> None:
    exception_info = None
    if record.error_type is not None:
        exception_info = ExceptionInfo(
            exception_type=record.error_type,
            exception_message=record.error_message or "",
            exception_traceback="".join(traceback.format_exception(error)) if error is not None else "",
            occurred_at=finished,
        )
    result = TrialResult(
        task_name=task.name,
        trial_name=trial_dir.name,
        trial_uri=trial_dir.resolve().as_uri(),
        task_id=LocalTaskId(path=task.path),
        task_checksum=record.task_checksum,
        config=TrialConfig(
            task=HarborTaskRef(path=task.path),
            trial_name=trial_dir.name,
            trials_dir=trial_dir.parent,
            agent=HarborAgentConfig(name=agent.name, model_name=getattr(agent, "model_name", None)),
        ),
        agent_info=AgentInfo(name=agent.name, version=agent.version, model_info=_model_info(agent)),
        agent_result=AgentContext(
            n_input_tokens=outcome.n_input_tokens,
            n_output_tokens=outcome.n_output_tokens,
            n_cache_tokens=outcome.n_cache_tokens,
            cost_usd=outcome.cost_usd,
            metadata=outcome.metadata or None,
        ),
        verifier_result=VerifierResult(rewards=record.rewards) if record.rewards is not None else None,
        exception_info=exception_info,
        started_at=started,
        finished_at=finished,
        **timings,
    )
    (trial_dir / "result.json").write_text(result.model_dump_json(indent=2))


# ---------------------------------------------------------------------------------------------
# A policy's episode as a trial


class EpisodeAgent:
    """Runs a policy through the agent loop as a trial's agent; keeps the Episode in `.episode`."""

    version = __version__

    def __init__(self, policy: Policy, config: EpisodeConfig | None = None):
        self.policy = policy
        self.config = config or EpisodeConfig()
        self.name = policy.name
        self.model_name = getattr(policy, "model_name", None)
        self.model_provider = getattr(policy, "model_provider", None)
        self.episode: Episode | None = None

    def run(self, task: Task, sandbox: Sandbox, logs_dir: Path, timeout_sec: float) -> AgentOutcome:
        self.episode = episode = run_episode(task, sandbox, self.policy, self.config, timeout_sec=timeout_sec)
        usage = episode.usage
        return AgentOutcome(
            n_input_tokens=usage.input_tokens,
            n_output_tokens=usage.output_tokens,
            n_cache_tokens=usage.cached_tokens,
            timed_out=episode.stop_reason == "agent_timeout",
            stop_reason=episode.stop_reason,
            n_turns=len(episode.turns),
            metadata={
                "stop_reason": episode.stop_reason,
                "n_turns": len(episode.turns),
                "policy_seconds": round(episode.policy_seconds, 3),
                "error_type": episode.error_type,
                "error_message": episode.error_message,
            },
        )


def run_episode_trial(
    task: Task, policy: Policy, trial_dir: Path, config: EpisodeConfig | None = None, *, attempt: int = 0
) -> tuple[TrialRecord, Episode | None]:
    """One full trial (sandbox, episode, verifier) written to trial_dir: result.json in Harbor's
    shape and transcript.json (the Episode, reward included). Episode is None when the agent
    never ran (the image did not build, the sandbox did not start)."""
    if trial_dir.exists():
        shutil.rmtree(trial_dir)  # what an interrupted earlier try of this trial left
    agent = EpisodeAgent(policy, config)
    record = run_trial(task, agent, trial_dir, attempt=attempt)
    episode = agent.episode
    if episode is not None:
        episode.reward, episode.rewards = record.reward, record.rewards
        write_transcript(trial_dir / TRANSCRIPT_FILE, episode)
    return record, episode


def write_transcript(path: Path, episode: Episode) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(episode.model_dump_json(indent=2))
    tmp.replace(path)


def read_transcript(path: Path) -> Episode:
    return Episode.model_validate_json(path.read_text())
