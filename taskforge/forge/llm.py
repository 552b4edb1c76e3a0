"""LLM-staged task generation (Endless-Terminals style) through any OpenAI-compatible endpoint.

Per task, six chat calls, each with its own prompt in templates/prompts/forge_*.md (what each
stage sees: `TaskForge`):
  1. idea: instruction + hidden truth (input files, expected results) + output paths,
  2. initial-state test (pytest: inputs present, outputs absent),
  3. Dockerfile (FROM the base image; no network), written to pass the initial-state test,
  4. final-state test (pytest: the outcome, semantically), shown the initial-state test,
  5. consistency: does the final test ask for anything the instruction does not state?
  6. solution (solve.sh), shown the instruction and the inputs, never the expected results.
The prompt mixes a category x complexity x persona drawn from the task's seeded RNG. A reply that
does not parse is asked again (up to `stage_retries`); API errors (429, 5xx, timeouts, malformed
bodies) are retried with backoff by the OpenAI policy. A task is kept only through the gates: not
a duplicate of the set (instruction and solution skeletons, against the output folder's tasks),
the consistency verdict, no expected result verbatim in solve.sh, then the same gates as
procedural tasks: the image builds, the initial-state test passes in it, the oracle scores 1.0 and
nop scores 0.0. A failed gate goes back to the stage that can fix it with the error (the solution
stage's copy with the expected results redacted), for up to `repair_rounds` rounds per task.
Every task index ends in the ledger (kept, or rejected with its reason and the repairs tried), so
a re-run resumes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from taskforge import BASE_IMAGE
from taskforge.forge.skeleton import instruction_skeleton, solution_skeleton
from taskforge.runner import Ledger, run_concurrently
from taskforge.tasks import TEMPLATES_DIR, TaskMetadata, TaskSpec, load_task, render_files, write_task

GENERATOR_VERSION = "llm-2.0"

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
    # malformed_reply, api_error, duplicate, test_stricter_than_instruction, solution_hardcodes_expected,
    # build_failed, initial_test_failed, oracle_failed, nop_passed, verifier_error, timeout
    reason: str | None = None
    detail: str = ""
    repairs: list[str] = []  # the gate failures sent back to a stage, in order (kept tasks too)
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
    repair_rounds: int = 3  # gate failures sent back to the failing stage per task (Endless Terminals: 5)
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
    # Split so that the solution stage can be shown the inputs and never the expected results.
    for key in ("files", "expected"):
        if not isinstance(idea["truth"].get(key), dict) or not idea["truth"][key]:
            raise StageReplyError(f"truth lacks a non-empty {key!r} object (truth is {{files: ..., expected: ...}})")
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


class ConsistencyVerdict(BaseModel):
    """The consistency stage's answer: does the final test ask for anything the instruction does not state?"""

    model_config = ConfigDict(extra="forbid", strict=True)

    verdict: Literal["consistent", "stricter"]
    unstated: list[str]  # each check of the test that the instruction does not state

    @model_validator(mode="after")
    def _lists_exactly_when_stricter(self) -> ConsistencyVerdict:
        if (self.verdict == "stricter") != bool(self.unstated):
            raise ValueError("'unstated' must list the unstated checks when, and only when, the verdict is 'stricter'")
        return self


def parse_consistency(text: str) -> ConsistencyVerdict:
    """Strict: one JSON object (in a ```json block or as the whole reply) of exactly ConsistencyVerdict's shape."""
    try:
        raw = fenced_block(text, ("json",))
    except StageReplyError:
        raw = text or ""
    try:
        return ConsistencyVerdict.model_validate_json(raw.strip())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the reply"
        raise StageReplyError(
            f'the verdict is not {{"verdict": "consistent"|"stricter", "unstated": [...]}}: {where}: {first["msg"]}'
        ) from None


# ---------------------------------------------------------------------------------------------
# what a reference solution may not carry


def _leaves(value: Any):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _occurs(fragment: str, text: str) -> bool:
    """`fragment` in `text` as a whole token (not inside a longer word or number)."""
    return re.search(rf"(?<![A-Za-z0-9_.]){re.escape(fragment)}(?![A-Za-z0-9_])", text) is not None


def expected_fragments(idea: dict[str, Any]) -> list[str]:
    """The expected results as a hard-coded solve.sh would carry them: each expected value, and each
    line of a multi-line one, of >= 3 characters that the instruction does not state (what it states,
    a header or a keyword, may appear in any honest solution). Longest first. Values that are also
    input data count: an honest solve.sh reads its inputs, it does not quote them."""
    instruction = idea["instruction"]
    fragments: set[str] = set()
    for leaf in _leaves(idea["truth"]["expected"]):
        for piece in (leaf, *leaf.splitlines()):
            piece = piece.strip()
            if len(piece) >= 3 and not _occurs(piece, instruction):
                fragments.add(piece)
    return sorted(fragments, key=lambda f: (-len(f), f))


def hardcoded_expected(solution: str, fragments: list[str]) -> str | None:
    """The first expected result that `solution` carries verbatim, or None."""
    unescaped = solution.replace("\\n", "\n").replace("\\t", "\t")  # printf 'a\nb' holds the lines a and b
    return next((fragment for fragment in fragments if _occurs(fragment, unescaped)), None)


def redact(text: str, fragments: list[str]) -> str:
    """`text` with every expected result replaced, for feedback the solution stage reads."""
    for fragment in fragments:
        text = re.sub(rf"(?<![A-Za-z0-9_.]){re.escape(fragment)}(?![A-Za-z0-9_])", "<hidden>", text)
    return text


# ---------------------------------------------------------------------------------------------
# duplicates: skeletons of the set's tasks


# A solution skeleton this short (the solve.sh template's two lines and a one-liner whose quoted
# awk/jq program is abstracted away) is shared by genuinely different programs: not compared.
MIN_SOLUTION_SKELETON_LINES = 4


def _solution_key(solve_sh: str) -> str | None:
    skeleton = solution_skeleton(solve_sh)
    return skeleton if len(skeleton.splitlines()) >= MIN_SOLUTION_SKELETON_LINES else None


class SkeletonIndex:
    """Instruction and solution skeletons of the set: the output folder's tasks, then each kept one.
    A new task whose instruction skeleton, or whose (multi-line) solution skeleton, is already
    there is a duplicate of that task: the same program with other data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instructions: dict[str, str] = {}  # skeleton -> task dir name
        self._solutions: dict[str, str] = {}

    @classmethod
    def of_folder(cls, out_dir: Path) -> SkeletonIndex:
        index = cls()
        for task_toml in sorted(out_dir.rglob("task.toml")):
            if WORK_DIR_NAME in task_toml.relative_to(out_dir).parts:
                continue  # this generator's staging, not the set
            task_dir = task_toml.parent
            instruction, solve_sh = task_dir / "instruction.md", task_dir / "solution" / "solve.sh"
            index.claim(
                task_dir.name,
                instruction.read_text() if instruction.is_file() else "",
                solve_sh.read_text() if solve_sh.is_file() else "",
            )
        return index

    def __len__(self) -> int:
        return len(self._instructions)

    def _twin(self, instruction_key: str | None, solution_key: str | None) -> tuple[str, str] | None:
        if instruction_key is not None and instruction_key in self._instructions:
            return "instruction", self._instructions[instruction_key]
        if solution_key is not None and solution_key in self._solutions:
            return "solution", self._solutions[solution_key]
        return None

    def duplicate_of(self, instruction: str | None = None, solve_sh: str | None = None) -> tuple[str, str] | None:
        """(what is duplicated, the task that has it), or None."""
        instruction_key = instruction_skeleton(instruction.strip()) if instruction is not None else None
        solution_key = _solution_key(solve_sh) if solve_sh is not None else None
        with self._lock:
            return self._twin(instruction_key, solution_key)

    def claim(self, name: str, instruction: str, solve_sh: str) -> tuple[str, str] | None:
        """Adds a task's skeletons unless one is taken (tasks in flight race here): the twin, or None."""
        instruction_key, solution_key = instruction_skeleton(instruction.strip()), _solution_key(solve_sh)
        with self._lock:
            twin = self._twin(instruction_key, solution_key)
            if twin is None:
                self._instructions[instruction_key] = name
                if solution_key is not None:
                    self._solutions[solution_key] = name
            return twin


# ---------------------------------------------------------------------------------------------
# generation

WORK_DIR_NAME = ".forge"
IDEA, INITIAL_TEST, DOCKERFILE, FINAL_TEST, CONSISTENCY, SOLUTION = (
    "idea",
    "initial-state test",
    "dockerfile",
    "final-state test",
    "consistency",
    "solution",
)
# Which stage redoes its work when a validation gate fails (the initial-state test is the
# environment's spec, so its failure goes to the Dockerfile).
GATE_STAGE = {
    "duplicate": IDEA,
    "build_failed": DOCKERFILE,
    "initial_test_failed": DOCKERFILE,
    "test_stricter_than_instruction": FINAL_TEST,
    "nop_passed": FINAL_TEST,
    "verifier_error": FINAL_TEST,
    "solution_hardcodes_expected": SOLUTION,
    "oracle_failed": SOLUTION,
    "timeout": SOLUTION,
    "solution_missing": SOLUTION,
}
_FEEDBACK_CHARS = 2500
_INPUT_PREVIEW_LINES = 20


@dataclass
class GateFailure:
    reason: str  # the ledger's reason when no repair round is left
    detail: str  # for the ledger (may name the expected results)
    feedback: str  # what the failing stage is told (never the expected results when that is the solution stage)

    @property
    def stage(self) -> str:
        return GATE_STAGE[self.reason]


class TaskRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Conversation:
    """Stage calls for one task, with token accounting, re-asking on unparseable replies, and each
    stage's thread kept so that a gate failure can be sent back to it."""

    def __init__(self, policy, config: LLMForgeConfig):
        self.policy = policy
        self.config = config
        self.n_input_tokens = 0
        self.n_output_tokens = 0
        self.n_requests = 0
        self.threads: dict[str, list[dict[str, Any]]] = {}

    def ask(self, stage: str, prompt: str, parse):
        """A fresh thread for `stage`."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": render_prompt("system", stage=stage, base_image=BASE_IMAGE)},
            {"role": "user", "content": prompt},
        ]
        return self._exchange(stage, messages, parse)

    def repair(self, stage: str, message: str, parse):
        """The same thread, told what failed."""
        return self._exchange(stage, [*self.threads[stage], {"role": "user", "content": message}], parse)

    def _exchange(self, stage: str, messages: list[dict[str, Any]], parse):
        problem = ""
        for _ in range(self.config.stage_retries + 1):
            reply = self.policy.next_action(messages)
            self.n_requests += 1
            self.n_input_tokens += reply.usage.input_tokens
            self.n_output_tokens += reply.usage.output_tokens
            messages = [*messages, {"role": "assistant", "content": reply.text}]
            try:
                parsed = parse(reply.text)
            except StageReplyError as exc:
                problem = str(exc)
                messages.append(
                    {
                        "role": "user",
                        "content": f"That reply cannot be used: {problem}. Answer again in the requested format.",
                    }
                )
                continue
            self.threads[stage] = messages
            return parsed
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


def _tail(text: str, limit: int = _FEEDBACK_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def input_preview(files: dict[str, Any]) -> str:
    """The input files as an agent exploring them would first see them: path and first lines."""
    parts = []
    for path, content in files.items():
        lines = str(content).splitlines()
        shown = "\n".join(lines[:_INPUT_PREVIEW_LINES])
        more = f"\n... ({len(lines) - _INPUT_PREVIEW_LINES} more lines)" if len(lines) > _INPUT_PREVIEW_LINES else ""
        parts.append(f"{path}:\n{shown}{more}")
    return "\n\n".join(parts)


class TaskForge:
    """One task through the stages and gates. A gate failure goes back to the stage that can fix
    it, with the error, for up to `config.repair_rounds` rounds in all; then the task is rejected
    with the last failure's reason.

    Stages, in order, and what each sees:
      idea (category x complexity x persona) -> instruction, hidden truth {files, expected}, outputs
      initial-state test (instruction, truth)
      Dockerfile (instruction, truth, initial-state test)
      final-state test (instruction, truth, initial-state test)
      consistency (instruction, final-state test): does the test ask for anything unstated?
      solution (instruction, the input files' first lines; never the expected results)
    Gates, in order: duplicate instruction (skeleton), consistency, expected results verbatim in
    solve.sh, duplicate solution (skeleton), image builds, initial-state test passes in it, oracle
    scores 1.0, nop scores 0.0.
    """

    def __init__(
        self,
        conversation: _Conversation,
        mix: Mix,
        seed: int,
        index: int,
        work_dir: Path,
        skeletons: SkeletonIndex,
    ):
        self.conversation = conversation
        self.config = conversation.config
        self.mix = mix
        self.seed = seed
        self.index = index
        self.work_dir = work_dir
        self.skeletons = skeletons
        self.artifacts: dict[str, Any] = {}  # stage -> its parsed reply
        self.repairs: list[str] = []  # the gate failures sent back, in order
        self._judged_consistent: str | None = None  # the final test the consistency stage accepted
        self._environment_passed: tuple | None = None  # (Dockerfile steps, workdir, initial test) that passed
        self._nop: tuple[tuple, Any] | None = None  # (environment + tests, nop's TrialRecord): nop ignores solve.sh

    @property
    def name(self) -> str | None:
        """The task's name once it has an idea."""
        idea = self.artifacts.get(IDEA)
        if idea is None:
            return None
        digest = hashlib.sha256(f"{self.seed}:{idea['instruction']}".encode()).hexdigest()[:8]
        return f"taskforge-llm/{_slug(idea['title'])}-{digest}"

    @property
    def staging(self) -> Path:
        return self.work_dir / "staging" / f"{self.index:06d}"

    def run(self) -> tuple[TaskSpec, str]:
        """The kept task's spec and its initial-state test; raises TaskRejected or StageReplyError."""
        while True:
            failure = self._draft_and_check()
            if failure is None:
                return self.spec(), self.artifacts[INITIAL_TEST]
            if len(self.repairs) >= self.config.repair_rounds:
                n = len(self.repairs)
                rounds = f" (after {n} repair round{'s' * (n != 1)}: {', '.join(self.repairs)})" if n else ""
                raise TaskRejected(failure.reason, failure.detail + rounds)
            self.repairs.append(failure.reason)
            self._repair(failure)

    # -- stages

    def _prompt(self, stage: str) -> str:
        if stage == IDEA:
            mix = self.mix
            return render_prompt(
                "idea",
                category=mix.category,
                domain=mix.domain,
                complexity=mix.complexity,
                complexity_hint=COMPLEXITY[mix.complexity],
                persona=mix.persona,
            )
        idea = self.artifacts[IDEA]
        if stage == SOLUTION:
            return render_prompt(
                "solution", instruction=idea["instruction"], inputs=input_preview(idea["truth"]["files"])
            )
        if stage == CONSISTENCY:
            return render_prompt("consistency", instruction=idea["instruction"], final_test=self.artifacts[FINAL_TEST])
        context = {"instruction": idea["instruction"], "truth": json.dumps(idea["truth"], indent=2)}
        if stage in (DOCKERFILE, FINAL_TEST):
            context |= {"initial_test": self.artifacts[INITIAL_TEST], "base_image": BASE_IMAGE}
        return render_prompt(
            {INITIAL_TEST: "initial_test", DOCKERFILE: "dockerfile", FINAL_TEST: "final_test"}[stage], **context
        )

    @staticmethod
    def _parser(stage: str):
        return {
            IDEA: parse_idea,
            INITIAL_TEST: parse_python,
            DOCKERFILE: lambda text: parse_dockerfile(text, BASE_IMAGE),
            FINAL_TEST: parse_python,
            CONSISTENCY: parse_consistency,
            SOLUTION: parse_bash,
        }[stage]

    def _stage(self, stage: str) -> Any:
        if stage not in self.artifacts:
            self.artifacts[stage] = self.conversation.ask(stage, self._prompt(stage), self._parser(stage))
        return self.artifacts[stage]

    def _repair(self, failure: GateFailure) -> None:
        stage = failure.stage
        message = render_prompt("repair", stage=stage, reason=failure.reason, feedback=failure.feedback)
        repaired = self.conversation.repair(stage, message, self._parser(stage))
        if stage == IDEA:
            self.artifacts.clear()  # every later stage drafts afresh for the new idea
        self.artifacts[stage] = repaired

    # -- checks, cheapest first

    def _draft_and_check(self) -> GateFailure | None:
        idea = self._stage(IDEA)
        failure = self._duplicate(instruction=idea["instruction"])
        if failure:
            return failure
        self._stage(INITIAL_TEST)
        self._stage(DOCKERFILE)
        self._stage(FINAL_TEST)
        failure = self._consistency()
        if failure:
            return failure
        self._stage(SOLUTION)
        failure = self._hardcoded() or self._duplicate(solve_sh=self._solve_sh())
        if failure:
            return failure
        return self._docker_gates()

    def _duplicate(self, **texts: str) -> GateFailure | None:
        twin = self.skeletons.duplicate_of(**texts)
        if twin is None:
            return None
        what, name = twin
        return GateFailure(
            "duplicate",
            f"the {what} has the same skeleton as the set's task {name}",
            f"The set already holds a task whose {what} is this one's with other values, paths or numbers "
            f"({name}). Invent a different task: a different procedure, not new data.",
        )

    def _consistency(self) -> GateFailure | None:
        final_test = self.artifacts[FINAL_TEST]
        if self._judged_consistent == final_test:
            return None
        self.artifacts.pop(CONSISTENCY, None)  # a fresh judge for each version of the test
        verdict: ConsistencyVerdict = self._stage(CONSISTENCY)
        if verdict.verdict == "consistent":
            self._judged_consistent = final_test
            return None
        unstated = "\n".join(f"- {item}" for item in verdict.unstated)
        return GateFailure(
            "test_stricter_than_instruction",
            f"the final test checks what the instruction does not state: {'; '.join(verdict.unstated)}",
            f"The final-state test checks things the instruction does not state:\n{unstated}\n"
            "Check only what the instruction states.",
        )

    def _hardcoded(self) -> GateFailure | None:
        fragment = hardcoded_expected(self.artifacts[SOLUTION], expected_fragments(self.artifacts[IDEA]))
        if fragment is None:
            return None
        return GateFailure(
            "solution_hardcodes_expected",
            f"solve.sh carries the expected result {fragment!r} verbatim",
            "solve.sh writes an expected result as a literal. Compute every result from the input files.",
        )

    def spec(self) -> TaskSpec:
        idea, mix = self.artifacts[IDEA], self.mix
        steps, workdir = self.artifacts[DOCKERFILE]
        return TaskSpec(
            name=self.name,
            instruction=idea["instruction"],
            dockerfile_steps=steps,
            workdir=workdir,
            tests={"test_outputs.py": self.artifacts[FINAL_TEST]},
            solution=self.artifacts[SOLUTION],
            metadata=TaskMetadata(
                family=f"llm-{_slug(mix.category)}",
                domain=mix.domain,
                difficulty=difficulty_for_complexity(mix.complexity),
                seed=self.seed,
                generator_version=GENERATOR_VERSION,
                extra={
                    "category": mix.category,
                    "complexity": mix.complexity,
                    "persona": mix.persona,
                    "model": self.config.model,
                    "repairs": ",".join(self.repairs),  # the gate failures repaired on the way
                },
            ),
            agent_timeout_sec=600.0,
            verifier_timeout_sec=120.0,
        )

    def _solve_sh(self) -> str:
        return render_files(self.spec())["solution/solve.sh"][0]

    def _docker_gates(self) -> GateFailure | None:
        """Image builds, initial-state test passes in it, oracle 1.0, nop 0.0 (as `taskforge validate`)."""
        from taskforge.validate import validate_task

        spec, initial_test = self.spec(), self.artifacts[INITIAL_TEST]
        shutil.rmtree(self.staging, ignore_errors=True)
        write_task(spec, self.staging)
        task = load_task(self.staging)
        environment = (tuple(spec.dockerfile_steps), spec.workdir)
        if self._environment_passed != (*environment, initial_test):
            failure = environment_gate(task, initial_test)
            if failure:
                return failure
            self._environment_passed = (*environment, initial_test)
        nop_key = (*environment, self.artifacts[FINAL_TEST])
        finished = {"nop": self._nop[1]} if self._nop and self._nop[0] == nop_key else {}
        records: dict[str, Any] = {}
        trials_dir = self.work_dir / "trials" / f"{self.index:06d}" / f"round-{len(self.repairs)}"
        validation = validate_task(
            task, trials_dir, finished=finished, on_record=lambda record: records.__setitem__(record.agent, record)
        )
        if "nop" in records:
            self._nop = (nop_key, records["nop"])
        if validation.passed:
            return None
        feedback = validation.detail
        oracle = records.get("oracle")
        if validation.status in ("oracle_failed", "verifier_error") and oracle is not None:
            stdout = Path(oracle.trial_dir) / "verifier" / "test-stdout.txt"
            if stdout.is_file():
                feedback = "solve.sh ran, then the final-state test said:\n" + _tail(stdout.read_text(errors="replace"))
        elif validation.status == "nop_passed":
            feedback += ". Make the test check the outcome, so that it fails before the task is done."
        if GATE_STAGE.get(validation.status) == SOLUTION:
            feedback = redact(feedback, expected_fragments(self.artifacts[IDEA]))
        if validation.status not in GATE_STAGE:
            raise TaskRejected(validation.status, validation.detail)
        return GateFailure(validation.status, validation.detail, _tail(feedback))


def environment_gate(task, initial_test: str) -> GateFailure | None:
    """The image builds and the initial-state test passes in a fresh container of it."""
    from taskforge.sandbox.base import ImageBuildError, SandboxError
    from taskforge.sandbox.docker import DockerSandbox
    from taskforge.trial import image_for, resources_for

    try:
        image = image_for(task)
    except ImageBuildError as exc:
        message = str(exc)
        return GateFailure("build_failed", message.splitlines()[0], "The image did not build:\n" + _tail(message))
    try:
        with DockerSandbox(image, resources_for(task), workdir=task.config.environment.workdir) as sandbox:
            sandbox.upload_files({"test_initial_state.py": initial_test.encode()}, "/tmp/taskforge-initial")
            result = sandbox.exec(
                "python3 -m pytest -q -p no:cacheprovider /tmp/taskforge-initial/test_initial_state.py", 120
            )
    except SandboxError as exc:
        return GateFailure("build_failed", str(exc), "The environment did not start:\n" + _tail(str(exc)))
    if result.exit_code != 0:
        return GateFailure(
            "initial_test_failed",
            result.output[-400:],
            "The initial-state test fails in the environment the Dockerfile builds:\n"
            + _tail(result.output)
            + "\nChange the Dockerfile so that the environment passes the initial-state test.",
        )
    return None


def generate_llm(n: int, seed: int, out_dir: Path, config: LLMForgeConfig) -> list[LLMTaskRecord]:
    """Generates up to n tasks into out_dir; rejected ones are logged with their reason."""
    from taskforge.agent.policy import PolicyConfigError, PolicyError
    from taskforge.forge.generate import task_seed

    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / WORK_DIR_NAME
    ledger = Ledger(work_dir / "ledger.jsonl", LLMTaskRecord)
    done = {record.index: record for record in ledger.load()}
    policy = _make_policy(config)
    skeletons = SkeletonIndex.of_folder(out_dir)

    def make_one(index: int) -> LLMTaskRecord:
        started = time.monotonic()
        task_rng_seed = task_seed(seed, index)
        mix = draw_mix(random.Random(task_rng_seed))
        conversation = _Conversation(policy, config)
        forge = TaskForge(conversation, mix, task_rng_seed, index, work_dir, skeletons)
        base = dict(
            index=index, domain=mix.domain, category=mix.category, complexity=mix.complexity, persona=mix.persona
        )
        try:
            spec, initial_test = forge.run()
        except TaskRejected as exc:
            reason, detail = exc.reason, exc.detail
        except StageReplyError as exc:
            reason, detail = "malformed_reply", str(exc)
        except PolicyConfigError:
            raise  # every later request would fail the same way: stop the run
        except PolicyError as exc:
            reason, detail = "api_error", str(exc)
        else:
            reason, detail = None, ""
            twin = skeletons.claim(
                spec.name.split("/")[-1], spec.instruction, render_files(spec)["solution/solve.sh"][0]
            )
            if twin is not None:  # another task in flight took the skeleton first
                reason, detail = "duplicate", f"the {twin[0]} has the same skeleton as the set's task {twin[1]}"
            else:
                (work_dir / "initial_tests").mkdir(parents=True, exist_ok=True)
                (work_dir / "initial_tests" / f"{index:06d}.py").write_text(initial_test)
        tokens = dict(
            n_input_tokens=conversation.n_input_tokens,
            n_output_tokens=conversation.n_output_tokens,
            n_requests=conversation.n_requests,
            seconds=time.monotonic() - started,
            repairs=forge.repairs,
        )
        if reason is not None:
            record = LLMTaskRecord(
                **base,
                status="rejected",
                reason=reason,
                detail=detail[:2000],
                name=forge.name,
                **tokens,
            )
        else:
            final_dir = out_dir / spec.name.split("/")[-1]
            shutil.rmtree(final_dir, ignore_errors=True)
            shutil.move(str(forge.staging), final_dir)
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
    repairs: dict[str, int] = Field(default_factory=dict)  # gate failure -> rounds sent back, over all tasks
    n_kept_after_repair: int = 0
    n_input_tokens: int
    n_output_tokens: int
    n_requests: int


def llm_forge_summary(records: list[LLMTaskRecord]) -> LLMForgeSummary:
    reasons = Counter(r.reason for r in records if r.reason)
    repairs = Counter(repair for r in records for repair in r.repairs)
    return LLMForgeSummary(
        n_kept=sum(r.status == "kept" for r in records),
        n_rejected=sum(r.status == "rejected" for r in records),
        reasons=dict(reasons),
        repairs=dict(repairs),
        n_kept_after_repair=sum(r.status == "kept" and bool(r.repairs) for r in records),
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
    if summary.repairs:
        console.print(
            "sent back to their stage: "
            + ", ".join(f"{reason} {count}" for reason, count in sorted(summary.repairs.items()))
            + f"; {summary.n_kept_after_repair} kept tasks passed after a repair"
        )
    console.print(
        f"tokens: {summary.n_input_tokens:,} in, {summary.n_output_tokens:,} out over {summary.n_requests} requests"
    )
