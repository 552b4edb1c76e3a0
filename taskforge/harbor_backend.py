"""`taskforge filter --backend harbor`: the same filter through Harbor's Job API and terminus-2.

One Harbor job runs every (task, attempt): jobs_dir = runs/<run>, job name "trials", so trials
land in runs/<run>/trials/<trial>/ in Harbor's own layout (result.json, agent/trajectory.json,
verifier/). terminus-2 talks to the same OpenAI-compatible endpoint through litellm
(`openai/<model>` with api_base). Each finished trial is appended to our ledger (trial end hook),
with the attempt number the next free one for its task.

Resume: Harbor resumes a job with the same config by itself (trials with a result.json are kept,
half-written ones are deleted and re-run). Before and after the job, the ledger is reconciled with
the job directory, so a trial Harbor finished just before a crash is recorded exactly once. A trial
that failed for reasons outside the task (the model server unreachable) is not recorded; its
directory is removed at the next start so Harbor runs it again.

Containers: the compose overlay (written to runs/<run>/harbor-compose.yaml) adds init, a 1 s stop
grace period and no network (see reference/harbor.md), and taskforge's owner labels, so the
containers of a killed run are reaped by the next taskforge process like our own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel

from taskforge.agent.openai_policy import ChatConfig
from taskforge.agent.policy import PolicyConfigError
from taskforge.filter import FilterConfig, FilterReport, dataset_name_for, filter_report, write_outputs
from taskforge.runner import Ledger, hold_run_dir, write_json
from taskforge.sandbox.docker import LABEL, LABEL_OWNER_HOST, LABEL_OWNER_PID, docker_client
from taskforge.tasks import Task, task_checksum
from taskforge.trial import TrialRecord, error_kind
from taskforge.verify import scalar_reward

if TYPE_CHECKING:
    from taskforge.report import RunSummary

JOB_NAME = "trials"
AGENT = "terminus-2"


@cache
def error_groups() -> tuple[frozenset[str], frozenset[str]]:
    """(config errors, unavailable errors): exception names in Harbor's result.json that mean
    "every trial will fail like this, stop the run" and "the server was unavailable, retry the
    trial on the next run". Built from litellm's and Harbor's classes (imported here, not at
    module load: litellm is slow to import)."""
    import litellm.exceptions as litellm_errors
    import openai
    from harbor.agents.installed.base import AgentAuthenticationError, ModelNotFoundError

    config = [
        litellm_errors.AuthenticationError,
        litellm_errors.PermissionDeniedError,
        litellm_errors.NotFoundError,
        litellm_errors.BadRequestError,
        AgentAuthenticationError,
        ModelNotFoundError,
    ]
    unavailable = [
        litellm_errors.APIConnectionError,
        litellm_errors.RateLimitError,
        litellm_errors.InternalServerError,
        litellm_errors.ServiceUnavailableError,
        litellm_errors.Timeout,
        litellm_errors.APIError,
        openai.APITimeoutError,  # surfaces under its own name when litellm passes it through
    ]
    return frozenset(c.__name__ for c in config), frozenset(c.__name__ for c in unavailable)


class HarborBackendError(ValueError):
    """A filter option the Harbor backend cannot honour."""


class HarborEnvError(HarborBackendError):
    """--harbor-env names no Harbor environment, or one this machine cannot use (credentials, SDK):
    raised before any trial starts, so a run never begins only to fail in every sandbox."""


def harbor_env_names() -> list[str]:
    """Harbor's EnvironmentType values, as this Harbor release defines them."""
    from harbor.models.environment_type import EnvironmentType

    return [env.value for env in EnvironmentType]


def check_harbor_env(name: str) -> None:
    """Raises HarborEnvError unless `name` is a Harbor environment whose credentials (and SDK) are here.
    The credential rules are Harbor's own: each environment class's `preflight` (DAYTONA_API_KEY or
    DAYTONA_JWT_TOKEN+DAYTONA_ORGANIZATION_ID, MODAL_TOKEN_ID+MODAL_TOKEN_SECRET or ~/.modal.toml,
    E2B_API_KEY, RUNLOOP_API_KEY, ...), which exits the process; here it becomes a named error."""
    from harbor.environments.factory import EnvironmentFactory
    from harbor.models.environment_type import EnvironmentType

    if name not in harbor_env_names():
        raise HarborEnvError(
            f"harbor_env_unknown: --harbor-env {name!r} is not one of Harbor's environments "
            f"({', '.join(harbor_env_names())})"
        )
    try:
        EnvironmentFactory.run_preflight(EnvironmentType(name))
    except SystemExit as exc:  # Harbor's preflight reports missing credentials by exiting
        raise HarborEnvError(f"harbor_env_credentials_missing: --harbor-env {name}: {exc.code}") from None
    except ImportError as exc:
        raise HarborEnvError(f"harbor_env_unavailable: --harbor-env {name}: {exc}") from None


def compose_overlay(network: bool) -> str:
    """The overlay's text. The owner labels are filled in by compose from this process's
    environment (see `_export_owner`): the file stays the same from run to resume, as Harbor's
    job lock requires, while the labels name the process that is running now."""
    main: dict = {"init": True, "stop_grace_period": "1s"}
    if not network:
        main["network_mode"] = "none"
    main["labels"] = {
        LABEL: "1",
        LABEL_OWNER_PID: "${TASKFORGE_OWNER_PID:-0}",
        LABEL_OWNER_HOST: "${TASKFORGE_OWNER_HOST:-}",
    }
    return yaml.safe_dump({"services": {"main": main}}, sort_keys=False)


def _export_owner() -> None:
    os.environ["TASKFORGE_OWNER_PID"] = str(os.getpid())
    os.environ["TASKFORGE_OWNER_HOST"] = socket.gethostname()


def environment_config(harbor_env: str, overlay: Path | None):
    """Harbor's trial environment. The compose overlay (init, stop grace, no network, owner labels)
    is for the docker environment only: cloud sandboxes are not compose projects on this machine."""
    from harbor.models.environment_type import EnvironmentType
    from harbor.models.trial.config import EnvironmentConfig

    env_type = EnvironmentType(harbor_env)
    if env_type == EnvironmentType.DOCKER and overlay is not None:
        return EnvironmentConfig(type=env_type, extra_docker_compose=[overlay])
    return EnvironmentConfig(type=env_type)


def job_config(
    tasks: list[Task],
    run_dir: Path,
    chat: ChatConfig,
    plan: AttemptPlan,
    overlay: Path | None,
    harbor_env: str = "docker",
    *,
    max_turns: int | None = None,
    job_name: str = JOB_NAME,
):
    from harbor.models.job.config import JobConfig
    from harbor.models.trial.config import AgentConfig
    from harbor.models.trial.config import TaskConfig as HarborTaskConfig

    kwargs = {
        "api_base": chat.base_url,
        "max_turns": max_turns or plan.max_turns,  # a job of tasks with their own cap
        "suppress_max_turns_warning": True,
        "record_terminal_session": False,  # asciinema is not in the image and cannot be installed offline
        "enable_summarize": False,  # an episode ends at the context limit, as in taskforge's loop
    }
    if chat.temperature is not None:
        kwargs["temperature"] = chat.temperature
    if chat.max_tokens is not None:
        kwargs["llm_call_kwargs"] = {"max_tokens": chat.max_tokens}
    return JobConfig(
        job_name=job_name,
        jobs_dir=run_dir,
        n_attempts=plan.attempts,
        n_concurrent_trials=plan.concurrency,
        quiet=True,
        agents=[AgentConfig(name=AGENT, model_name=f"openai/{chat.model}", kwargs=kwargs)],
        environment=environment_config(harbor_env, overlay),
        tasks=[HarborTaskConfig(path=task.path) for task in tasks],
    )


class _LedgerSync:
    """Appends Harbor trial results to the ledger, each trial once, numbering attempts per task."""

    def __init__(self, ledger: Ledger, tasks: list[Task], turn_caps: dict[str, int], checksums: dict[str, str]):
        self.ledger = ledger
        self.by_path = {str(task.path): task for task in tasks}
        self.checksums = checksums  # task path -> tasks.task_checksum when the job started
        self.turn_caps = turn_caps  # task path -> the turn cap terminus-2 ran it with
        self.lock = threading.Lock()
        records = ledger.load()
        self.recorded = {r.trial_name for r in records}
        self.next_attempt: dict[str, int] = {}
        for r in records:
            self.next_attempt[r.task_path] = max(self.next_attempt.get(r.task_path, 0), r.attempt + 1)
        self.not_recorded: dict[str, str] = {}  # trial name -> why
        self.config_error: str | None = None

    def add(self, result, trial_dir: Path) -> None:
        exception = result.exception_info
        kind = exception.exception_type if exception else None
        with self.lock:
            if result.trial_name in self.recorded:
                return
            config_errors, unavailable_errors = error_groups()
            if kind in config_errors:
                self.config_error = self.config_error or f"{kind}: {exception.exception_message.strip()[:500]}"
                self.not_recorded[result.trial_name] = self.config_error
                return
            if kind in unavailable_errors:
                self.not_recorded[result.trial_name] = (
                    f"{result.task_name}: {kind}: {exception.exception_message.strip()[:300]}"
                )
                return
            task_path = str(Path(result.config.task.path).resolve())
            if task_path not in self.by_path:
                return  # not one of this run's tasks
            attempt = self.next_attempt.get(task_path, 0)
            record = record_from_result(result, self.by_path[task_path], trial_dir, attempt, self.turn_caps[task_path])
            record.task_checksum = self.checksums.get(task_path)
            self.ledger.append(record)
            self.recorded.add(result.trial_name)
            self.next_attempt[task_path] = attempt + 1

    def sweep(self, job_dir: Path, *, drop_unrecorded: bool) -> None:
        """Records finished trials the hook missed (a crash in between); with drop_unrecorded,
        deletes the directories of trials that failed to run, so Harbor runs them again."""
        from harbor.models.trial.result import TrialResult

        if not job_dir.is_dir():
            return
        for result_path in sorted(job_dir.glob("*/result.json")):
            try:
                result = TrialResult.model_validate_json(result_path.read_text())
            except ValueError:
                continue  # half written: Harbor deletes and re-runs it
            self.add(result, result_path.parent)
            if drop_unrecorded and result.trial_name in self.not_recorded:
                shutil.rmtree(result_path.parent, ignore_errors=True)
        if drop_unrecorded:
            self.not_recorded.clear()
            self.config_error = None


def record_from_result(result, task: Task, trial_dir: Path, attempt: int, max_turns: int) -> TrialRecord:
    """Harbor's TrialResult as a ledger line."""
    from harbor.llms.base import ContextLengthExceededError

    rewards = result.verifier_result.rewards if result.verifier_result is not None else None
    exception = result.exception_info
    context = result.agent_result
    n_turns = (context.metadata or {}).get("n_episodes") if context is not None else None
    error_type = exception.exception_type if exception else None
    if error_kind(error_type) == "agent_timeout":
        stop_reason = "agent_timeout"
    elif error_type == ContextLengthExceededError.__name__:
        stop_reason = "context_exceeded"
    elif error_type is not None:
        stop_reason = None
    else:
        stop_reason = "max_turns" if n_turns is not None and n_turns >= max_turns else "done"
    started, finished = result.started_at, result.finished_at
    return TrialRecord(
        task_name=task.name,
        task_path=str(task.path),
        trial_name=result.trial_name,
        agent=AGENT,
        attempt=attempt,
        reward=scalar_reward(rewards) if rewards else None,
        rewards=rewards or None,
        error_type=error_type,
        error_message=exception.exception_message if exception else None,
        agent_timed_out=error_kind(error_type) == "agent_timeout",
        n_input_tokens=context.n_input_tokens if context else None,
        n_output_tokens=context.n_output_tokens if context else None,
        stop_reason=stop_reason,
        n_turns=n_turns,
        seconds=(finished - started).total_seconds() if started and finished else 0.0,
        trial_dir=str(trial_dir),
        finished_at=(finished or started).isoformat() if (finished or started) else "",
    )


class AttemptPlan(BaseModel):
    """How many attempts of each task Harbor runs, how many at once, and terminus-2's turn cap (a
    task's own [metadata] max_turns replaces it when task_max_turns, as in the docker backend)."""

    attempts: int
    concurrency: int
    max_turns: int
    task_max_turns: bool = True

    def turn_cap(self, task: Task) -> int:
        from taskforge.agent.episode import EpisodeConfig
        from taskforge.agent.loop import config_for_task

        episode = EpisodeConfig(max_turns=self.max_turns, task_max_turns=self.task_max_turns)
        return config_for_task(episode, task).max_turns


def turn_cap_jobs(tasks: list[Task], plan: AttemptPlan) -> dict[tuple[str, int], list[Task]]:
    """The Harbor jobs a run needs: (job name, turn cap) -> its tasks. A Harbor job gives every task
    one agent config, so tasks with their own turn cap run in a job of their own; the plan's cap
    keeps the job name "trials", so runs started before per-task caps resume."""
    jobs: dict[tuple[str, int], list[Task]] = {}
    for task in tasks:
        cap = plan.turn_cap(task)
        name = JOB_NAME if cap == plan.max_turns else f"{JOB_NAME}-turns{cap}"
        jobs.setdefault((name, cap), []).append(task)
    return dict(sorted(jobs.items()))


def run_attempts_harbor(
    tasks: list[Task], run_dir: Path, chat: ChatConfig, plan: AttemptPlan, harbor_env: str = "docker"
) -> tuple[Ledger, _LedgerSync]:
    """Harbor runs plan.attempts of every task (terminus-2 against chat's endpoint) in the Harbor
    environment `harbor_env`, each trial recorded in run_dir/ledger.jsonl as it ends; a finished job
    is not asked again (resume). Shared by `filter` and `eval` with --backend harbor."""
    check_harbor_env(harbor_env)
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["OPENAI_API_KEY"] = chat.api_key()  # litellm's openai provider reads it from here
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = None
    if harbor_env == "docker":
        docker_client()  # reaps the containers of killed taskforge runs (ours carry their labels)
        overlay = run_dir / "harbor-compose.yaml"
        overlay.write_text(compose_overlay(network=any(task.wants_network for task in tasks)))
        _export_owner()
    ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
    checksums = {str(task.path): task_checksum(task.path) for task in tasks}
    jobs = turn_cap_jobs(tasks, plan)
    turn_caps = {str(task.path): cap for (_, cap), members in jobs.items() for task in members}
    sync = _LedgerSync(ledger, tasks, turn_caps, checksums)
    # every job's leftovers first: a later sweep would clear what the earlier jobs failed to record
    for job_name, _ in jobs:
        sync.sweep(run_dir / job_name, drop_unrecorded=True)
    for (job_name, cap), members in jobs.items():
        job_dir = run_dir / job_name
        job_checksums = {str(task.path): checksums[str(task.path)] for task in members}
        if not _ledger_complete(ledger.load(), job_checksums, plan.attempts):
            config = job_config(members, run_dir, chat, plan, overlay, harbor_env, max_turns=cap, job_name=job_name)
            _run_job(config, sync, job_dir)
            if sync.config_error:
                break  # the model cannot be used: the other jobs would fail the same way
        # else every attempt is recorded for the tasks' current content, and Harbor is not asked again: its job
        # lock hashes task.toml whole, so the measured block a filter run wrote would make it refuse to resume.
    if sync.config_error:
        raise PolicyConfigError(f"terminus-2 could not use {chat.model!r} at {chat.base_url}: {sync.config_error}")
    return ledger, sync


def filter_tasks_harbor(
    tasks: list[Task],
    run_dir: Path,
    chat: ChatConfig,
    config: FilterConfig,
    *,
    out_dir: Path | None = None,
    dataset_name: str | None = None,
    harbor_env: str = "docker",
) -> FilterReport:
    """`filter_tasks`, with Harbor running the attempts (terminus-2 against chat's endpoint) in the
    Harbor environment `harbor_env` (docker here; daytona, modal, e2b, runloop, ... in the cloud)."""
    if config.stop_on_success:
        raise HarborBackendError(
            "--stop-on-success is not available with --backend harbor (Harbor plans every attempt up front)"
        )
    plan = AttemptPlan(
        attempts=config.attempts,
        concurrency=config.concurrency,
        max_turns=config.episode.max_turns,
        task_max_turns=config.episode.task_max_turns,
    )
    ledger, sync = run_attempts_harbor(tasks, run_dir, chat, plan, harbor_env)
    report = filter_report(tasks, ledger.load(), config, run_dir=run_dir, backend="harbor", model=chat.model)
    report.harbor_env = harbor_env
    report.n_not_recorded = len(sync.not_recorded)
    report.not_recorded_errors = list(sync.not_recorded.values())[:20]
    destination = out_dir or run_dir
    write_outputs(
        report, destination, dataset_name or dataset_name_for(destination), write_measured=config.write_measured
    )
    return report


def evaluate_harbor(
    tasks: list[Task], run_dir: Path, chat: ChatConfig, plan: AttemptPlan, harbor_env: str = "docker"
) -> RunSummary:
    """`evaluate` with Harbor running the attempts: eval.json from the ledger (pass@1, pass@k, turns,
    tokens, errored apart). Attempts Harbor could not record raise AttemptsNotRunError, and no
    eval.json is written, as with the docker backend."""
    from taskforge.attempts import AttemptsNotRunError
    from taskforge.report import load_run

    with hold_run_dir(run_dir):
        _, sync = run_attempts_harbor(tasks, run_dir, chat, plan, harbor_env)
        if sync.not_recorded:
            raise AttemptsNotRunError(list(sync.not_recorded.values()))
        summary = load_run(run_dir)
        write_json(run_dir / "eval.json", summary.model_dump())
    return summary


def _ledger_complete(records: list[TrialRecord], checksums: dict[str, str], attempts: int) -> bool:
    """Whether the ledger holds attempts 0..attempts-1 of every task, each run on the task's current content."""
    done: dict[str, set[int]] = {path: set() for path in checksums}
    for record in records:
        if record.task_path in done and record.task_checksum == checksums[record.task_path]:
            done[record.task_path].add(record.attempt)
    return all(set(range(attempts)) <= attempt_numbers for attempt_numbers in done.values())


def _run_job(config, sync: _LedgerSync, job_dir: Path) -> None:
    """Runs (or resumes) the Harbor job, each finished trial appended to the ledger as it ends."""
    from harbor.job import Job

    async def run_job() -> None:
        job = await Job.create(config)

        async def on_trial_end(event) -> None:
            if event.result is not None:
                sync.add(event.result, job_dir / event.result.trial_name)

        job.on_trial_ended(on_trial_end)
        await job.run()

    try:
        asyncio.run(run_job())
    except FileExistsError as exc:  # Harbor resumes a job only with the config (and task files) it started with
        raise HarborBackendError(
            f"{exc} Was --attempts or --concurrency changed, or a task edited? "
            "Pass --fresh to start over or --run NAME for a new run."
        ) from None
    sync.sweep(job_dir, drop_unrecorded=False)


VALIDATE_AGENTS = ("oracle", "nop")


def validate_job_config(tasks: list[Task], run_dir: Path, jobs: int, overlay: Path | None, harbor_env: str):
    """One Harbor job: Harbor's own oracle and nop agents, one attempt each, on every task."""
    from harbor.models.job.config import JobConfig
    from harbor.models.trial.config import AgentConfig
    from harbor.models.trial.config import TaskConfig as HarborTaskConfig

    return JobConfig(
        job_name=JOB_NAME,
        jobs_dir=run_dir,
        n_attempts=1,
        n_concurrent_trials=jobs,
        quiet=True,
        agents=[AgentConfig(name=name) for name in VALIDATE_AGENTS],
        environment=environment_config(harbor_env, overlay),
        tasks=[HarborTaskConfig(path=task.path) for task in tasks],
    )


def validate_tasks_harbor(task_dirs: list[Path], run_dir: Path, *, jobs: int = 2, harbor_env: str = "docker"):
    """`validate_tasks` with Harbor running the oracle and nop trials in `harbor_env`; verdicts are
    validate.classify's, records go to the same ledger type. Near-miss solutions are not run: Harbor
    has no agent for them (the docker backend runs them)."""
    from harbor.models.trial.result import TrialResult

    from taskforge.runner import run_settings_mismatch
    from taskforge.tasks import TaskLoadError, load_task
    from taskforge.validate import TaskValidation, classify

    check_harbor_env(harbor_env)
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    run_dir.mkdir(parents=True, exist_ok=True)
    changed = run_settings_mismatch(run_dir, {"backend": "harbor", "harbor_env": harbor_env}, file="validate-run.json")
    if changed:  # a run's trials ran in one environment; --run NAME with another is refused
        raise HarborBackendError(
            f"{run_dir} was started with other settings ({changed}); pass --fresh or --run NAME for a new run"
        )
    results: dict[str, TaskValidation] = {}
    tasks: list[Task] = []
    for task_dir in task_dirs:
        try:
            tasks.append(load_task(task_dir))
        except TaskLoadError as exc:
            path = str(task_dir.resolve())
            results[path] = TaskValidation(
                task_name=task_dir.name, task_path=path, status="invalid_task", detail=str(exc)
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = None
    if harbor_env == "docker":
        docker_client()  # reaps the containers of killed taskforge runs (ours carry their labels)
        overlay = run_dir / "harbor-compose.yaml"
        overlay.write_text(compose_overlay(network=any(task.wants_network for task in tasks)))
        _export_owner()
    ledger = Ledger(run_dir / "ledger.jsonl", TrialRecord)
    checksums = {str(task.path): task_checksum(task.path) for task in tasks}
    by_path = {str(task.path): task for task in tasks}
    job_dir = run_dir / JOB_NAME
    if tasks:
        try:  # Harbor resumes the job by itself: trials with a result.json are kept
            asyncio.run(_run_validate_job(validate_job_config(tasks, run_dir, jobs, overlay, harbor_env)))
        except FileExistsError as exc:
            raise HarborBackendError(
                f"{exc} Was a task edited or --jobs changed? Pass --fresh to start over or --run NAME for a new run."
            ) from None
    recorded = {r.trial_name for r in ledger.load()}
    finished: dict[str, dict[str, TrialRecord]] = {}
    for result_path in sorted(job_dir.glob("*/result.json")):
        try:
            result = TrialResult.model_validate_json(result_path.read_text())
        except ValueError:
            continue
        task_path = str(Path(result.config.task.path).resolve())
        agent = result.agent_info.name if result.agent_info else result.config.agent.name
        if task_path not in by_path or agent not in VALIDATE_AGENTS:
            continue
        record = record_from_result(result, by_path[task_path], result_path.parent, 0, max_turns=0)
        record.agent, record.stop_reason, record.task_checksum = agent, None, checksums[task_path]
        finished.setdefault(task_path, {})[agent] = record
        if record.trial_name not in recorded:
            ledger.append(record)
    for task in tasks:
        records = finished.get(str(task.path), {})
        oracle, nop = records.get("oracle"), records.get("nop")
        if not (task.solution_dir / "solve.sh").is_file():
            status, detail = "solution_missing", f"{task.solution_dir / 'solve.sh'} is missing"
        elif oracle is None or nop is None:
            status, detail = "verifier_error", "Harbor left no result for the oracle or nop trial"
        else:
            status, detail = classify(oracle, nop)
        results[str(task.path)] = TaskValidation(
            task_name=task.name,
            task_path=str(task.path),
            status=status,
            detail=detail,
            oracle_reward=oracle.reward if oracle else None,
            nop_reward=nop.reward if nop else None,
            seconds=sum(r.seconds for r in records.values()),
        )
    return [results[str(d.resolve())] for d in task_dirs if str(d.resolve()) in results]


async def _run_validate_job(config) -> None:
    from harbor.job import Job

    job = await Job.create(config)
    await job.run()
