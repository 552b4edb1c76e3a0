"""Harbor task directories: the TaskSpec a generator produces, rendering, loading and linting.

A task we write goes through Harbor's own TaskConfig model, so it is valid Harbor by construction.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import jinja2
import toml
from harbor.models.task.config import AgentConfig, EnvironmentConfig, PackageInfo, VerifierConfig
from harbor.models.task.config import TaskConfig as HarborTaskConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskforge import BASE_IMAGE

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
# Near-miss solutions live beside solve.sh: Harbor's oracle uploads solution/ and runs solve.sh only.
NEAR_MISS_DIR = "solution/near_miss"
NEAR_MISS_SLUG = re.compile(r"[a-z0-9][a-z0-9_]*")
DEFAULT_AGENT_TIMEOUT_SEC = 600.0  # when task.toml sets no [agent] timeout_sec

Domain = Literal["data_processing", "system_operations", "development_tooling"]
Difficulty = Literal["easy", "medium", "hard"]


class TaskMetadata(BaseModel):
    """Provenance a generator records in task.toml's [metadata] table. Keys of `extra` that taskforge
    reads: max_turns (the task's turn cap, `Task.max_turns`) and style ("symptom": the instruction states
    a symptom or goal and hides what the agent can discover; "spec": it names what to do; counted by
    generate's summary)."""

    family: str
    domain: Domain
    difficulty: Difficulty
    seed: int
    generator_version: str
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TaskSpec(BaseModel):
    """What a generator produces before rendering: everything one task directory holds."""

    name: str = Field(description="task name, 'org/name' (lowercase, digits, '-', '_', '.')")
    instruction: str
    # Files copied next to the Dockerfile (the build context), relative path -> text.
    environment_files: dict[str, str] = Field(default_factory=dict)
    # Dockerfile lines after `FROM <base image>` (RUN/COPY/WORKDIR ...).
    dockerfile_steps: list[str] = Field(default_factory=list)
    workdir: str = "/root"
    # Files under tests/ besides test.sh (usually test_outputs.py), relative path -> text.
    tests: dict[str, str]
    # Body of solution/solve.sh (bash).
    solution: str
    # Near-miss solutions: slug -> body of solution/near_miss/<slug>.sh. Each skips or bends one stated
    # requirement; `taskforge validate` fails the task when one of them scores above 0.
    near_misses: dict[str, str] = Field(default_factory=dict)
    metadata: TaskMetadata
    agent_timeout_sec: float = 600.0
    verifier_timeout_sec: float = 120.0
    build_timeout_sec: float = 600.0
    cpus: int = 1
    memory_mb: int = 1024
    network: bool = False


@cache
def _jinja() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "task"),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def task_config_for(spec: TaskSpec) -> HarborTaskConfig:
    return HarborTaskConfig(
        task=PackageInfo(
            name=spec.name,
            description=spec.instruction.strip().splitlines()[0][:200],
            keywords=[spec.metadata.domain, spec.metadata.family],
        ),
        metadata=spec.metadata.model_dump(exclude={"extra"}) | dict(spec.metadata.extra),
        agent=AgentConfig(timeout_sec=spec.agent_timeout_sec),
        verifier=VerifierConfig(timeout_sec=spec.verifier_timeout_sec),
        environment=EnvironmentConfig(
            build_timeout_sec=spec.build_timeout_sec,
            cpus=max(1, round(spec.cpus)),
            memory_mb=spec.memory_mb,
            # Left at Harbor's default unless the task needs network: Harbor's "no-network" mode
            # needs a sidecar image from a registry, and taskforge's sandbox already defaults to
            # no network for tasks that do not ask for it.
            **({"network_mode": "public"} if spec.network else {}),
        ),
    )


def _task_toml(spec: TaskSpec) -> str:
    text = task_config_for(spec).model_dump_toml()
    if not spec.network:
        # Harbor writes its default (public) explicitly; leaving it out keeps "this task asked for
        # network" visible, and taskforge's sandbox gives network only to tasks that ask.
        text = text.replace('network_mode = "public"\n', "", 1)
    return text


def render_files(spec: TaskSpec, base_image: str = BASE_IMAGE) -> dict[str, tuple[str, int]]:
    """The task directory as relative path -> (text, mode). Pure: no I/O besides templates."""
    env = _jinja()
    files: dict[str, tuple[str, int]] = {
        "task.toml": (_task_toml(spec), 0o644),
        "instruction.md": (spec.instruction.rstrip() + "\n", 0o644),
        "environment/Dockerfile": (
            env.get_template("Dockerfile.j2").render(
                base_image=base_image,
                steps=spec.dockerfile_steps,
                workdir=spec.workdir,
                files=sorted(spec.environment_files),
            ),
            0o644,
        ),
        "tests/test.sh": (
            env.get_template("test.sh.j2").render(test_files=sorted(n for n in spec.tests if n.endswith(".py"))),
            0o755,
        ),
        "solution/solve.sh": (env.get_template("solve.sh.j2").render(body=spec.solution.strip()), 0o755),
    }
    for slug, body in spec.near_misses.items():
        if not NEAR_MISS_SLUG.fullmatch(slug):
            raise ValueError(f"near-miss name {slug!r}: use lowercase letters, digits and '_' (a slug)")
        files[f"{NEAR_MISS_DIR}/{slug}.sh"] = (
            env.get_template("near_miss.sh.j2").render(body=body.strip(), slug=slug),
            0o755,
        )
    for rel, text in spec.environment_files.items():
        files[f"environment/{rel}"] = (text, 0o644)
    for rel, text in spec.tests.items():
        files[f"tests/{rel}"] = (text, 0o644)
    return files


def write_task(spec: TaskSpec, out_dir: Path, base_image: str = BASE_IMAGE) -> Path:
    """Renders `spec` into out_dir (created); returns out_dir."""
    for rel, (text, mode) in render_files(spec, base_image).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    return out_dir


class TaskLoadError(ValueError):
    """A task directory that cannot be read. The message names the file and the fix."""


@dataclass(frozen=True)
class Task:
    """A Harbor task directory on disk, parsed through Harbor's TaskConfig."""

    path: Path
    config: HarborTaskConfig
    instruction: str

    @property
    def name(self) -> str:
        if self.config.task is not None:
            return self.config.task.name
        return self.path.name

    @property
    def short_name(self) -> str:
        return self.name.split("/")[-1]

    @property
    def environment_dir(self) -> Path:
        return self.path / "environment"

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"

    @property
    def solution_dir(self) -> Path:
        return self.path / "solution"

    @property
    def near_miss_scripts(self) -> dict[str, Path]:
        """Near-miss solution scripts by name (solution/near_miss/<name>.sh), sorted by name."""
        folder = self.path / NEAR_MISS_DIR
        return {p.stem: p for p in sorted(folder.glob("*.sh"))} if folder.is_dir() else {}

    @property
    def metadata(self) -> dict:
        return dict(self.config.metadata)

    @property
    def agent_timeout_sec(self) -> float:
        return self.config.agent.timeout_sec or DEFAULT_AGENT_TIMEOUT_SEC

    @property
    def max_turns(self) -> int | None:
        """The turn cap the task asks for ([metadata] max_turns; hard diagnosis tasks need more turns than
        the default), or None: the episode's own max_turns applies."""
        value = self.config.metadata.get("max_turns")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaskLoadError(
                f"{self.path / 'task.toml'}: [metadata] max_turns must be a whole number >= 1, not {value!r}; "
                "fix it or remove it (the episode's default then applies)"
            )
        return value

    @property
    def wants_network(self) -> bool:
        """True only when task.toml asks for network explicitly (Harbor's default is public)."""
        env = self.config.environment
        if env.allow_internet:
            return True
        return "network_mode" in env.model_fields_set and env.network_mode.value != "no-network"


def task_checksum(task_dir: Path) -> str:
    """sha256 of the task directory's file names and contents (dirhash, as Harbor's own task checksum),
    with task.toml read without its measured block (`write_measured`): a filter run's feedback is not
    a change of the task, so the verdicts keyed on this checksum hold after it. A task that carries
    no measured block has Harbor's checksum exactly; one that does has the checksum it had before."""
    from dirhash import dirhash

    task_dir = Path(task_dir)
    toml_path = task_dir / "task.toml"
    text = toml_path.read_bytes().decode() if toml_path.is_file() else ""
    content = without_measured(text)
    if content == text:
        return dirhash(task_dir, "sha256")
    # dirhash hashes files on disk only: hash a copy holding task.toml as it was before the block.
    with tempfile.TemporaryDirectory(prefix="taskforge-checksum-") as scratch:
        copy = Path(scratch) / task_dir.name
        shutil.copytree(task_dir, copy)  # links followed, as dirhash follows them
        (copy / "task.toml").write_bytes(content.encode())
        return dirhash(copy, "sha256")


# ---------------------------------------------------------------------------------------------
# Measured difficulty: a filter run's pass rate, fed back into task.toml

MEASURED_MARKER = "# Measured by `taskforge filter` (rewritten by each filter run; not part of the task's checksum)."
_MEASURED_SEPARATOR = "\n" + MEASURED_MARKER + "\n"


class MeasuredDifficulty(BaseModel):
    """task.toml's [metadata.measured]: how a model did on the task in a filter run. The bucket is
    taskforge.filter.bucket_of(pass_rate); the requested difficulty stays in [metadata] difficulty."""

    model_config = ConfigDict(extra="forbid")

    difficulty: str  # filter.PassRateBucket: easy, medium, hard, extreme or unsolved
    pass_rate: float
    n_passed: int
    n_attempts: int
    n_errors: int = 0  # attempts that ended without a reward (counted as failed)
    model: str | None = None
    run: str  # the filter run's directory name (runs/<run>/filter.json holds every attempt)


def without_measured(text: str) -> str:
    """task.toml's text without the block `write_measured` appended (the text it had before), or the text
    as it is when it has none. Only a trailing block holding just [metadata.measured] is one: anything
    else after the marker (a table added by hand) stays part of the task."""
    position = text.find(_MEASURED_SEPARATOR)
    if position < 0:
        return text
    try:
        tail = tomllib.loads(text[position:])
    except tomllib.TOMLDecodeError:
        return text
    if list(tail) != ["metadata"] or list(tail["metadata"]) != ["measured"]:
        return text
    return text[:position]


def measured_of(task: Task) -> MeasuredDifficulty | None:
    """The task's measured difficulty, when a filter run wrote one."""
    measured = task.metadata.get("measured")
    return MeasuredDifficulty.model_validate(measured) if isinstance(measured, dict) else None


def write_measured(task_dir: Path, measured: MeasuredDifficulty) -> bool:
    """Appends (or replaces) task.toml's measured block, leaving every other byte as it was, so the
    task's checksum does not change. Returns False when the file already says exactly this. Raises
    TaskLoadError when the result would not be a valid Harbor task.toml (e.g. [metadata] written as an
    inline table, which TOML cannot extend)."""
    toml_path = Path(task_dir) / "task.toml"
    text = toml_path.read_bytes().decode()
    block = toml.dumps({"metadata": {"measured": measured.model_dump(exclude_none=True)}})
    updated = without_measured(text) + _MEASURED_SEPARATOR + block
    if updated == text:
        return False
    try:
        config = HarborTaskConfig.model_validate_toml(updated)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise TaskLoadError(
            f"{toml_path}: cannot add the measured difficulty ({exc}); write [metadata] as a table "
            "(not an inline table) without a 'measured' key, or filter with --no-write-measured"
        ) from exc
    if config.metadata.get("measured") != measured.model_dump(exclude_none=True):
        raise TaskLoadError(f"{toml_path}: already has a [metadata] 'measured' key; remove it or rename it")
    temporary = toml_path.with_name(f".task.toml.{os.getpid()}.tmp")
    temporary.write_bytes(updated.encode())
    os.replace(temporary, toml_path)  # a reader never sees half a task.toml
    return True


def load_task(path: Path) -> Task:
    path = Path(path)
    toml_path = path / "task.toml"
    if not toml_path.is_file():
        raise TaskLoadError(f"{toml_path}: missing. A Harbor task directory needs a task.toml (see `taskforge lint`).")
    try:
        config = HarborTaskConfig.model_validate_toml(toml_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TaskLoadError(f"{toml_path}: not valid TOML ({exc}). Fix the syntax at that position.") from exc
    except ValidationError as exc:
        raise TaskLoadError(f"{toml_path}: does not match Harbor's TaskConfig: {_first_errors(exc)}") from exc
    instruction_path = path / "instruction.md"
    if not instruction_path.is_file():
        raise TaskLoadError(f"{instruction_path}: missing. Write the agent's instruction there.")
    from harbor.models.task.task import strip_canary

    return Task(path=path.resolve(), config=config, instruction=strip_canary(instruction_path.read_text()))


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def discover_task_dirs(paths: list[Path]) -> list[Path]:
    """Task directories named by `paths`: a task dir itself, any folder holding task dirs, or a filter
    run's kept.json (its kept tasks)."""
    found: list[Path] = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise TaskLoadError(f"{root}: no such file or directory")
        if root.is_file() and root.suffix == ".json":
            found.extend(_kept_task_dirs(root))
            continue
        if (root / "task.toml").is_file():
            found.append(root)
            continue
        children = sorted(p.parent for p in root.rglob("task.toml"))
        if not children:
            raise TaskLoadError(f"{root}: holds no task (no task.toml below it)")
        found.extend(children)
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _kept_task_dirs(kept_json: Path) -> list[Path]:
    try:
        dirs = [Path(entry["task_path"]) for entry in json.loads(kept_json.read_text())["kept"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TaskLoadError(f"{kept_json}: not a filter run's kept.json (no 'kept' list of task_path): {exc}") from None
    missing = [str(d) for d in dirs if not (d / "task.toml").is_file()]
    if missing:
        raise TaskLoadError(f"{kept_json}: kept tasks not found on disk: {', '.join(missing[:3])}")
    if not dirs:
        raise TaskLoadError(f"{kept_json}: the filter kept no task; nothing to train on or export")
    return dirs


# ---------------------------------------------------------------------------------------------
# Lint


@dataclass(frozen=True)
class LintProblem:
    path: Path
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.severity}: {self.message} (fix: {self.fix})"


_COPY_LINE = re.compile(r"^\s*(COPY|ADD)\s+(.*)$", re.IGNORECASE | re.MULTILINE)
_TESTS_OR_SOLUTION = re.compile(r"(^|[\s/\"'])(tests|solution)(/|\s|$|[\"'])|solve\.sh|test_outputs\.py|test\.sh")


def lint_task(path: Path) -> list[LintProblem]:
    """Every problem found in one task directory, each with the file and the fix."""
    path = Path(path)
    problems: list[LintProblem] = []
    toml_path = path / "task.toml"
    config: HarborTaskConfig | None = None
    if not toml_path.is_file():
        problems.append(
            LintProblem(toml_path, "missing", "add a task.toml (schema_version, [agent], [verifier], [environment])")
        )
    else:
        try:
            config = HarborTaskConfig.model_validate_toml(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            problems.append(LintProblem(toml_path, f"unparseable TOML: {exc}", "fix the TOML syntax at that line"))
        except ValidationError as exc:
            problems.append(
                LintProblem(
                    toml_path,
                    f"invalid task config: {_first_errors(exc)}",
                    "correct the named fields (see Harbor's TaskConfig)",
                )
            )
    if config is not None and config.agent.timeout_sec is None:
        problems.append(
            LintProblem(
                toml_path,
                "no agent timeout: Harbor runs the agent without a time limit",
                "set [agent] timeout_sec, e.g. 600.0",
            )
        )

    instruction_path = path / "instruction.md"
    if not instruction_path.is_file():
        problems.append(LintProblem(instruction_path, "missing", "write the task's instruction in instruction.md"))
    elif not instruction_path.read_text().strip():
        problems.append(LintProblem(instruction_path, "empty", "write the task's instruction in instruction.md"))

    env_dir = path / "environment"
    dockerfile = env_dir / "Dockerfile"
    uses_prebuilt_image = config is not None and bool(config.environment.docker_image)
    has_compose = (env_dir / "docker-compose.yaml").is_file() or (env_dir / "docker-compose.yml").is_file()
    if not uses_prebuilt_image and not has_compose and not dockerfile.is_file():
        problems.append(
            LintProblem(dockerfile, "missing", "add environment/Dockerfile or set [environment] docker_image")
        )
    if dockerfile.is_file():
        # Continuation lines joined, so a COPY split over lines is one instruction.
        for match in _COPY_LINE.finditer(re.sub(r"\\\n", " ", dockerfile.read_text())):
            line = " ".join(match.group(0).split())
            if _TESTS_OR_SOLUTION.search(match.group(2)):
                problems.append(
                    LintProblem(
                        dockerfile,
                        f"copies tests or solution into the image: `{line}`",
                        "remove that line: Harbor uploads tests/ after the agent and solution/ only for the oracle",
                    )
                )
                continue
            for source in _missing_copy_sources(env_dir, match.group(2)):
                problems.append(
                    LintProblem(
                        dockerfile,
                        f"`{line}` copies {source!r}, which is not in environment/ (the build context): "
                        "the build fails with 'not found'",
                        f"add environment/{source} or remove that line",
                    )
                )
    if env_dir.is_dir():
        for leaked in sorted(env_dir.rglob("*")):
            if (
                leaked.name in {"test.sh", "solve.sh", "test_outputs.py"}
                or leaked.name in {"tests", "solution"}
                and leaked.is_dir()
            ):
                problems.append(
                    LintProblem(
                        leaked,
                        "tests or solution inside the build context (the agent could read them)",
                        "move it to tests/ or solution/ at the task's top level",
                    )
                )

    test_sh = path / "tests" / "test.sh"
    if not test_sh.is_file():
        problems.append(
            LintProblem(
                test_sh,
                "missing: Harbor's verifier runs tests/test.sh",
                "add tests/test.sh that runs the tests and writes /logs/verifier/reward.txt",
            )
        )
    else:
        text = test_sh.read_text()
        if "reward.txt" not in text and "reward.json" not in text:
            problems.append(
                LintProblem(
                    test_sh,
                    "never writes a reward file: every trial would end in a verifier error",
                    "write 1 or 0 to /logs/verifier/reward.txt (or a JSON dict to reward.json)",
                )
            )
        else:
            for misplaced in _misplaced_reward_paths(text):
                problems.append(
                    LintProblem(
                        test_sh,
                        f"writes its reward to {misplaced}, outside /logs/verifier/: the verifier reads "
                        "only /logs/verifier/reward.txt or reward.json, so every trial would end in a verifier error",
                        "write the reward to /logs/verifier/reward.txt (or /logs/verifier/reward.json)",
                    )
                )
        _check_executable(test_sh, problems)

    solve_sh = path / "solution" / "solve.sh"
    if not solve_sh.is_file():
        problems.append(
            LintProblem(
                solve_sh,
                "missing: the oracle agent cannot solve this task",
                "add solution/solve.sh that solves the task",
                "warning",
            )
        )
    else:
        _check_executable(solve_sh, problems)
    near_miss_dir = path / NEAR_MISS_DIR
    if near_miss_dir.is_dir():
        for script in sorted(near_miss_dir.iterdir()):
            if script.suffix != ".sh" or not NEAR_MISS_SLUG.fullmatch(script.stem) or not script.is_file():
                problems.append(
                    LintProblem(
                        script,
                        "not a near-miss solution: validate runs only solution/near_miss/<name>.sh "
                        "(name: lowercase letters, digits, '_')",
                        "rename it to <name>.sh or move it out of solution/near_miss/",
                        "warning",
                    )
                )
            else:
                _check_executable(script, problems)
    return problems


_REWARD_PATH = re.compile(r"[^\s\"'<>|;&()=]*reward\.(?:txt|json)\b")


def _misplaced_reward_paths(test_sh_text: str) -> list[str]:
    """Reward file paths in test.sh that are not /logs/verifier/reward.*: an absolute path elsewhere,
    or only relative ones when the script never names /logs/verifier/ (so they land in its cwd)."""
    paths = sorted(set(_REWARD_PATH.findall(test_sh_text)))
    misplaced = [p for p in paths if p.startswith("/") and not p.startswith("/logs/verifier/")]
    if "/logs/verifier" not in test_sh_text:
        misplaced += [p for p in paths if not p.startswith("/") and "$" not in p]
    return misplaced


def _missing_copy_sources(env_dir: Path, arguments: str) -> list[str]:
    """Sources of one COPY/ADD (its arguments) that are not in the build context. Copies from another
    stage or image (--from), heredocs and URLs are not the build context's business."""
    arguments = arguments.strip()
    if arguments.startswith("<<"):
        return []
    if arguments.startswith("["):
        try:
            words = [str(w) for w in json.loads(arguments)]
        except json.JSONDecodeError:
            return []
    else:
        words = arguments.split()
    if any(w.startswith("--from") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    missing = []
    for source in words[:-1]:  # the last word is the destination
        if "://" in source or "$" in source:
            continue
        relative = posixpath.normpath(source.lstrip("/"))  # sources are relative to the context, "/" included
        if relative == ".":
            continue
        if relative.split("/")[0] == ".." or not any(env_dir.glob(relative)):
            missing.append(source)
    return missing


def _check_executable(script: Path, problems: list[LintProblem]) -> None:
    if not script.stat().st_mode & stat.S_IXUSR:
        problems.append(LintProblem(script, "not executable", f"chmod +x {script}"))
