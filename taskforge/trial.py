"""One trial: environment up, an agent acts, the verifier grades, everything is written down.

Results are written in Harbor's TrialResult shape (trial_dir/result.json, agent/, verifier/) so
Harbor's tooling and ours read the same files.
"""

from __future__ import annotations

import hashlib
import traceback
from datetime import datetime, timezone
from pathlib import Path

from harbor.models.agent.context import AgentContext
from harbor.models.task.id import LocalTaskId
from harbor.models.trial.config import AgentConfig as HarborAgentConfig
from harbor.models.trial.config import TaskConfig as HarborTaskRef
from harbor.models.trial.config import TrialConfig
from harbor.models.trial.result import AgentInfo, ExceptionInfo, ModelInfo, TimingInfo, TrialResult
from harbor.models.verifier.result import VerifierResult
from pydantic import BaseModel

from taskforge.agent.base import Agent, AgentOutcome, AgentTimeoutError
from taskforge.sandbox.base import ImageBuildError, Resources, SandboxError
from taskforge.sandbox.docker import DockerSandbox, ensure_image
from taskforge.tasks import Task
from taskforge.verify import VerifierError, run_verifier, scalar_reward

DEFAULT_AGENT_TIMEOUT_SEC = 600.0


class TrialRecord(BaseModel):
    """One line of a run's ledger: the outcome of one trial."""

    task_name: str
    task_path: str
    trial_name: str
    agent: str
    attempt: int = 0
    reward: float | None = None
    rewards: dict[str, float] | None = None
    error_type: str | None = None
    error_message: str | None = None
    agent_timed_out: bool = False
    n_input_tokens: int | None = None
    n_output_tokens: int | None = None
    stop_reason: str | None = None
    n_turns: int | None = None
    seconds: float = 0.0
    trial_dir: str
    finished_at: str

    @property
    def passed(self) -> bool:
        return self.reward is not None and self.reward >= 1.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def resources_for(task: Task) -> Resources:
    env = task.config.environment
    return Resources(cpus=float(env.cpus or 1), memory_mb=int(env.memory_mb or 2048), network=task.wants_network)


def image_for(task: Task) -> str:
    """The task's image: its prebuilt docker_image, or environment/ built once per content hash."""
    env = task.config.environment
    if env.docker_image:
        return env.docker_image
    return ensure_image(task.environment_dir, env.build_timeout_sec)


def task_checksum(task: Task) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in task.path.rglob("*") if p.is_file()):
        digest.update(path.relative_to(task.path).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_trial(task: Task, agent: Agent, trial_dir: Path, *, attempt: int = 0) -> TrialRecord:
    """Runs one trial and writes trial_dir/result.json; never raises for a failing task."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    timings: dict[str, TimingInfo] = {}
    outcome = AgentOutcome()
    rewards: dict[str, float] | None = None
    error: BaseException | None = None
    agent_timed_out = False
    agent_timeout = task.config.agent.timeout_sec or DEFAULT_AGENT_TIMEOUT_SEC

    phase_start = _now()
    try:
        image = image_for(task)
        with DockerSandbox(image, resources_for(task), env=dict(task.config.environment.env), workdir=task.config.environment.workdir) as sandbox:
            timings["environment_setup"] = TimingInfo(started_at=phase_start, finished_at=_now())
            phase_start = _now()
            try:
                outcome = agent.run(task, sandbox, trial_dir / "agent", agent_timeout)
            except AgentTimeoutError:
                agent_timed_out = True  # Harbor grades a timed-out agent all the same
            agent_timed_out = agent_timed_out or outcome.timed_out
            timings["agent_execution"] = TimingInfo(started_at=phase_start, finished_at=_now())
            phase_start = _now()
            verified = run_verifier(sandbox, task.tests_dir, task.config.verifier.timeout_sec, workdir=task.config.environment.workdir)
            timings["verifier"] = TimingInfo(started_at=phase_start, finished_at=_now())
            _write_verifier_files(trial_dir, verified.files)
            rewards, error = verified.rewards, verified.error
    except (ImageBuildError, SandboxError, VerifierError) as exc:
        error = exc
    if error is None and agent_timed_out:
        error_type, error_message = "AgentTimeoutError", f"agent ran past {agent_timeout:g} s"
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
        reward=None if rewards is None else scalar_reward(rewards),
        rewards=rewards,
        error_type=error_type,
        error_message=error_message,
        agent_timed_out=agent_timed_out,
        n_input_tokens=outcome.n_input_tokens,
        n_output_tokens=outcome.n_output_tokens,
        stop_reason=outcome.stop_reason,
        n_turns=outcome.n_turns,
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
        task_checksum=task_checksum(task),
        config=TrialConfig(task=HarborTaskRef(path=task.path), trial_name=trial_dir.name, trials_dir=trial_dir.parent, agent=HarborAgentConfig(name=agent.name, model_name=getattr(agent, "model_name", None))),
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
