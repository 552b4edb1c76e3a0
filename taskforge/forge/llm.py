"""LLM-staged task generation (Endless-Terminals style) through any OpenAI-compatible endpoint.

Per task, five chat calls, each with its own prompt in templates/prompts/forge_*.md:
  1. idea: instruction + hidden truth (input files, expected results) + output paths,
  2. initial-state test (pytest: inputs present, outputs absent),
  3. final-state test (pytest: the outcome, semantically),
  4. Dockerfile (FROM the base image; no network),
  5. solution (solve.sh).
The prompt mixes a category x complexity x persona drawn from the task's seeded RNG. A reply that
does not parse is asked again (up to `stage_retries`); API errors (429, 5xx, timeouts, malformed
bodies) are retried with backoff by the OpenAI policy. A task is kept only through the same gates
as procedural ones: the image builds, the initial-state test passes in it, the oracle scores 1.0
and nop scores 0.0. Every task index ends in the ledger (kept, or rejected with its reason), so a
re-run resumes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, Field

from taskforge import BASE_IMAGE
from taskforge.runner import Ledger, run_concurrently
from taskforge.tasks import TEMPLATES_DIR, TaskMetadata, TaskSpec, load_task, write_task

GENERATOR_VERSION = "llm-1.0"

CATEGORIES: dict[str, list[str]] = {
    "data_processing": [
        "CSV aggregation",
        "JSON reshaping",
        "log parsing",
        "joining two tables",
        "deduplicating records",
        "format conversion",
        "regex text extraction",
        "report generation",
        "data validation",
        "time-series bucketing",
        "config file merging",
        "word and line statistics",
        "sorting and ranking",
        "filtering by date ranges",
        "cleaning messy whitespace and encodings",
        "splitting files by key",
        "templated text rendering",
        "fixed-width parsing",
        "top-N queries",
        "checksum manifests",
    ],
    "system_operations": [
        "file permissions",
        "ownership and groups",
        "archives and backups",
        "disk usage reports",
        "cron schedules",
        "systemd-style unit files",
        "environment files",
        "log rotation",
        "user accounts",
        "symlink farms",
        "process inspection",
        "find and clean old files",
        "directory layout migration",
        "hosts and resolver files",
        "service configuration",
        "quota-like size limits",
        "file integrity checks",
        "rotating secrets in configs",
        "shell profile setup",
        "tmp cleanup policies",
    ],
    "development_tooling": [
        "git branches",
        "git history queries",
        "merge conflicts",
        "Makefiles",
        "fixing a failing Python test",
        "sqlite queries",
        "packaging metadata",
        "version bumping",
        "changelog generation",
        "linting configuration",
        "dependency pinning files",
        "shell script debugging",
        "build artefact layout",
        "test discovery",
        "git tags and releases",
        "code search and replace",
        "pre-commit style checks",
        "project scaffolding",
        "database migrations in sqlite",
        "environment-specific configs",
    ],
}
COMPLEXITY = {
    1: "a single step on one file",
    2: "two steps, one input file",
    3: "a few steps, two or three input files",
    4: "several steps with a small edge case",
    5: "many files, edge cases, exact output format",
    6: "a small project: several inputs, several outputs, edge cases",
}
PERSONAS = [
    "a data analyst at a retailer",
    "an SRE on call",
    "a PhD student cleaning lab data",
    "a release engineer",
    "a backend developer",
    "a security auditor",
    "a sysadmin at a school",
    "a bioinformatician",
    "a QA engineer",
    "a DevOps intern",
    "an accountant automating reports",
    "a game server admin",
    "a librarian digitising records",
    "a journalist scraping public data",
    "a hospital IT technician",
    "a startup CTO",
    "an open-source maintainer",
    "a teacher grading scripts",
    "a network engineer",
    "a compliance officer",
    "a mobile developer",
    "a marketing analyst",
    "a logistics planner",
    "a museum archivist",
    "a physics postdoc",
    "a tax consultant",
    "a support engineer triaging tickets",
    "an embedded developer",
    "a site reliability lead",
    "a translator",
    "a data engineer",
    "a hobbyist home-lab owner",
    "a university registrar",
    "a game developer",
    "a DBA",
    "a machine-learning engineer",
    "a payroll clerk",
    "an ops manager",
    "a technical writer",
    "a penetration tester",
    "a retail store manager",
    "a climate scientist",
    "a sports statistician",
    "a film editor managing assets",
    "a hotel IT admin",
    "a small-business owner",
    "a recruiter",
    "a farmer tracking yields",
    "a musician organising samples",
    "a city planner",
]
_NETWORK_COMMANDS = re.compile(r"\b(apt-get|apt|pip3?|curl|wget|npm|git\s+clone)\b")
_FENCE = re.compile(r"```([A-Za-z0-9_-]*)[ \t]*\n(.*?)```", re.DOTALL)


class StageReplyError(ValueError):
    """A stage's reply does not have the shape the stage asks for."""


class LLMTaskRecord(BaseModel):
    """One line of the LLM forge's ledger: a task index and what became of it."""

    index: int
    status: str  # kept | rejected
    # malformed_reply, api_error, build_failed, initial_test_failed, oracle_failed, nop_passed, verifier_error, timeout
    reason: str | None = None
    detail: str = ""
    name: str | None = None
    path: str | None = None
    domain: str
    category: str
    complexity: int
    persona: str
    n_input_tokens: int = 0
    n_output_tokens: int = 0
    n_requests: int = 0
    seconds: float = 0.0


@dataclass
class LLMForgeConfig:
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float | None = 1.0
    max_tokens: int | None = None
    stage_retries: int = 2  # asks again when a reply does not parse
    max_retries: int = 6  # HTTP-level retries (429, 5xx, timeouts)
    request_timeout_sec: float = 300.0
    concurrency: int = 4


@dataclass
class Mix:
    domain: str
    category: str
    complexity: int
    persona: str


def draw_mix(rng: random.Random) -> Mix:
    domain = rng.choice(sorted(CATEGORIES))
    return Mix(
        domain=domain,
        category=rng.choice(CATEGORIES[domain]),
        complexity=rng.randint(1, 6),
        persona=rng.choice(PERSONAS),
    )


def difficulty_for_complexity(complexity: int) -> str:
    return "easy" if complexity <= 2 else "medium" if complexity <= 4 else "hard"


@cache
def _prompts() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "prompts"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_prompt(name: str, **values: Any) -> str:
    return _prompts().get_template(f"forge_{name}.md").render(**values)


# ---------------------------------------------------------------------------------------------
# reply parsing: each raises StageReplyError with what was wrong


def fenced_block(text: str, languages: tuple[str, ...]) -> str:
    """The first fenced block in one of `languages` (or an untagged one)."""
    for language, body in _FENCE.findall(text or ""):
        if language.lower() in languages or language == "":
            if body.strip():
                return body.strip() + "\n"
    raise StageReplyError(f"no ```{languages[0]} block in the reply")


def parse_idea(text: str) -> dict[str, Any]:
    try:
        raw = fenced_block(text, ("json",))
    except StageReplyError:
        raw = text
    try:
        idea = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StageReplyError(f"idea is not JSON: {exc}") from None
    if not isinstance(idea, dict):
        raise StageReplyError("idea must be a JSON object")
    for key, kind in (("title", str), ("instruction", str), ("truth", dict), ("outputs", list)):
        if not isinstance(idea.get(key), kind) or not idea[key]:
            raise StageReplyError(f"idea lacks a non-empty {key!r} ({kind.__name__})")
    missing = [p for p in idea["outputs"] if p not in idea["instruction"]]
    if missing:
        raise StageReplyError(f"the instruction does not name the output path(s) {missing}")
    return idea


def parse_python(text: str) -> str:
    code = fenced_block(text, ("python", "py"))
    try:
        compile(code, "test.py", "exec")
    except SyntaxError as exc:
        raise StageReplyError(f"test is not valid Python: {exc}") from None
    if "def test_" not in code:
        raise StageReplyError("test file defines no test_ function")
    return code


def parse_dockerfile(text: str, base_image: str) -> tuple[list[str], str]:
    """Dockerfile steps after FROM (which is forced to the base image) and the final WORKDIR."""
    dockerfile = fenced_block(text, ("dockerfile", "docker"))
    lines = dockerfile.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")), None)
    if first is None or not lines[first].strip().upper().startswith("FROM "):
        raise StageReplyError("the Dockerfile must start with FROM")
    steps = lines[first + 1 :]
    body = "\n".join(steps)
    if _NETWORK_COMMANDS.search(body):
        raise StageReplyError(
            "the Dockerfile uses the network (apt-get/pip/curl/...); everything must be created locally"
        )
    if re.search(r"^\s*(COPY|ADD)\s", body, re.MULTILINE):
        raise StageReplyError(
            "the Dockerfile may not COPY/ADD files (the build context is empty): create them with RUN"
        )
    workdirs = [line.split(None, 1)[1].strip() for line in steps if line.strip().upper().startswith("WORKDIR ")]
    steps = [line for line in steps if not line.strip().upper().startswith("WORKDIR ")]
    return steps, (workdirs[-1] if workdirs else "/root")


def parse_bash(text: str) -> str:
    return fenced_block(text, ("bash", "sh", "shell"))


# ---------------------------------------------------------------------------------------------
# generation


class _Conversation:
    """Stage calls for one task, with token accounting and re-asking on unparseable replies."""

    def __init__(self, policy, config: LLMForgeConfig):
        self.policy = policy
        self.config = config
        self.n_input_tokens = 0
        self.n_output_tokens = 0
        self.n_requests = 0

    def ask(self, stage: str, prompt: str, parse):
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": render_prompt("system", stage=stage, base_image=BASE_IMAGE)},
            {"role": "user", "content": prompt},
        ]
        problem = ""
        for _ in range(self.config.stage_retries + 1):
            reply = self.policy.next_action(messages)
            self.n_requests += 1
            self.n_input_tokens += reply.usage.input_tokens
            self.n_output_tokens += reply.usage.output_tokens
            try:
                return parse(reply.text)
            except StageReplyError as exc:
                problem = str(exc)
                messages += [
                    {"role": "assistant", "content": reply.text},
                    {
                        "role": "user",
                        "content": f"That reply cannot be used: {problem}. Answer again in the requested format.",
                    },
                ]
        raise StageReplyError(f"{stage}: {problem} (after {self.config.stage_retries + 1} replies)")


def _make_policy(config: LLMForgeConfig):
    from taskforge.agent.openai_policy import ChatConfig, OpenAIChatPolicy

    return OpenAIChatPolicy(
        ChatConfig(
            model=config.model,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            request_timeout_sec=config.request_timeout_sec,
            max_retries=config.max_retries,
            use_tools=False,
        )
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "task"


def draft_spec(conversation: _Conversation, mix: Mix, seed: int) -> tuple[TaskSpec, str]:
    """Runs the five stages; returns the TaskSpec and the initial-state test."""
    idea = conversation.ask(
        "idea",
        render_prompt(
            "idea",
            category=mix.category,
            domain=mix.domain,
            complexity=mix.complexity,
            complexity_hint=COMPLEXITY[mix.complexity],
            persona=mix.persona,
        ),
        parse_idea,
    )
    context = {
        "instruction": idea["instruction"],
        "truth": json.dumps(idea["truth"], indent=2),
        "base_image": BASE_IMAGE,
    }
    initial_test = conversation.ask("initial-state test", render_prompt("initial_test", **context), parse_python)
    final_test = conversation.ask("final-state test", render_prompt("final_test", **context), parse_python)
    steps, workdir = conversation.ask(
        "dockerfile", render_prompt("dockerfile", **context), lambda text: parse_dockerfile(text, BASE_IMAGE)
    )
    solution = conversation.ask("solution", render_prompt("solution", **context), parse_bash)
    digest = hashlib.sha256(f"{seed}:{idea['instruction']}".encode()).hexdigest()[:8]
    spec = TaskSpec(
        name=f"taskforge-llm/{_slug(idea['title'])}-{digest}",
        instruction=idea["instruction"],
        dockerfile_steps=steps,
        workdir=workdir,
        tests={"test_outputs.py": final_test},
        solution=solution,
        metadata=TaskMetadata(
            family=f"llm-{_slug(mix.category)}",
            domain=mix.domain,
            difficulty=difficulty_for_complexity(mix.complexity),
            seed=seed,
            generator_version=GENERATOR_VERSION,
            extra={
                "category": mix.category,
                "complexity": mix.complexity,
                "persona": mix.persona,
                "model": conversation.config.model,
            },
        ),
        agent_timeout_sec=600.0,
        verifier_timeout_sec=120.0,
    )
    return spec, initial_test


def run_gates(task_dir: Path, initial_test: str, trials_dir: Path) -> tuple[str | None, str]:
    """The validation gates; returns (reason, detail), reason None when the task is kept."""
    from taskforge.sandbox.base import ImageBuildError, SandboxError
    from taskforge.sandbox.docker import DockerSandbox
    from taskforge.trial import image_for, resources_for
    from taskforge.validate import validate_task

    task = load_task(task_dir)
    try:
        image = image_for(task)
    except ImageBuildError as exc:
        return "build_failed", str(exc).splitlines()[0]
    try:
        with DockerSandbox(image, resources_for(task), workdir=task.config.environment.workdir) as sandbox:
            sandbox.upload_files({"test_initial_state.py": initial_test.encode()}, "/tmp/taskforge-initial")
            result = sandbox.exec(
                "python3 -m pytest -q -p no:cacheprovider /tmp/taskforge-initial/test_initial_state.py", 120
            )
    except SandboxError as exc:
        return "build_failed", str(exc)
    if result.exit_code != 0:
        return "initial_test_failed", result.output[-400:]
    validation = validate_task(task, trials_dir)  # the same oracle/nop gates as `taskforge validate`
    return (None, "") if validation.passed else (validation.status, validation.detail)


def generate_llm(n: int, seed: int, out_dir: Path, config: LLMForgeConfig) -> list[LLMTaskRecord]:
    """Generates up to n tasks into out_dir; rejected ones are logged with their reason."""
    from taskforge.agent.policy import PolicyConfigError, PolicyError

    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / ".forge"
    ledger = Ledger(work_dir / "ledger.jsonl", LLMTaskRecord)
    done = {record.index: record for record in ledger.load()}
    policy = _make_policy(config)
    from taskforge.forge.generate import task_seed

    def make_one(index: int) -> LLMTaskRecord:
        started = time.monotonic()
        task_rng_seed = task_seed(seed, index)
        mix = draw_mix(random.Random(task_rng_seed))
        conversation = _Conversation(policy, config)
        base = dict(
            index=index, domain=mix.domain, category=mix.category, complexity=mix.complexity, persona=mix.persona
        )
        staging = work_dir / "staging" / f"{index:06d}"
        try:
            spec, initial_test = draft_spec(conversation, mix, task_rng_seed)
        except StageReplyError as exc:
            reason, detail, spec = "malformed_reply", str(exc), None
        except PolicyConfigError:
            raise  # every later request would fail the same way: stop the run
        except PolicyError as exc:
            reason, detail, spec = "api_error", str(exc), None
        else:
            shutil.rmtree(staging, ignore_errors=True)
            write_task(spec, staging)
            (work_dir / "initial_tests").mkdir(parents=True, exist_ok=True)
            (work_dir / "initial_tests" / f"{index:06d}.py").write_text(initial_test)
            reason, detail = run_gates(staging, initial_test, work_dir / "trials" / f"{index:06d}")
        tokens = dict(
            n_input_tokens=conversation.n_input_tokens,
            n_output_tokens=conversation.n_output_tokens,
            n_requests=conversation.n_requests,
            seconds=time.monotonic() - started,
        )
        if reason is not None:
            record = LLMTaskRecord(
                **base,
                status="rejected",
                reason=reason,
                detail=detail[:2000],
                name=spec.name if spec else None,
                **tokens,
            )
        else:
            final_dir = out_dir / spec.name.split("/")[-1]
            shutil.rmtree(final_dir, ignore_errors=True)
            shutil.move(str(staging), final_dir)
            record = LLMTaskRecord(**base, status="kept", name=spec.name, path=str(final_dir), **tokens)
        ledger.append(record)
        return record

    counts = {"kept": 0, "rejected": 0}

    def show(record: LLMTaskRecord, progress, bar) -> None:
        counts[record.status] += 1
        progress.update(bar, status=f"[green]{counts['kept']} kept[/] [red]{counts['rejected']} rejected[/]")

    todo = [i for i in range(n) if i not in done]
    fresh = run_concurrently(todo, make_one, jobs=config.concurrency, description="llm forge", on_done=show)
    records = sorted([*done.values(), *fresh], key=lambda r: r.index)
    (out_dir / "rejected.jsonl").write_text(
        "".join(r.model_dump_json() + "\n" for r in records if r.status == "rejected")
    )
    return records


class LLMForgeSummary(BaseModel):
    n_kept: int
    n_rejected: int
    reasons: dict[str, int] = Field(default_factory=dict)
    n_input_tokens: int
    n_output_tokens: int
    n_requests: int


def llm_forge_summary(records: list[LLMTaskRecord]) -> LLMForgeSummary:
    reasons: dict[str, int] = {}
    for r in records:
        if r.reason:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return LLMForgeSummary(
        n_kept=sum(r.status == "kept" for r in records),
        n_rejected=sum(r.status == "rejected" for r in records),
        reasons=reasons,
        n_input_tokens=sum(r.n_input_tokens for r in records),
        n_output_tokens=sum(r.n_output_tokens for r in records),
        n_requests=sum(r.n_requests for r in records),
    )


def print_summary(records: list[LLMTaskRecord], out_dir: Path, console) -> None:
    """The one-screen summary `taskforge generate --llm` ends with."""
    summary = llm_forge_summary(records)
    console.print(
        f"[green]{summary.n_kept} kept[/], [red]{summary.n_rejected} rejected[/] of {len(records)} tasks in {out_dir}"
    )
    if summary.reasons:
        console.print(
            "rejected: "
            + ", ".join(f"{reason} {count}" for reason, count in sorted(summary.reasons.items()))
            + f" (details: {out_dir / 'rejected.jsonl'})"
        )
    console.print(
        f"tokens: {summary.n_input_tokens:,} in, {summary.n_output_tokens:,} out over {summary.n_requests} requests"
    )
