"""The Family contract: a procedural generator of one kind of task, with its own ground truth.

A family implements `build(rng, difficulty) -> Draft`; `Family.sample` turns the draft into a
TaskSpec (image layout, task name, metadata). Everything a family draws comes from `rng`, so the
same seed gives the same task, byte for byte.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from taskforge.tasks import NEAR_MISS_SLUG, Difficulty, Domain, TaskMetadata, TaskSpec

# Bump when a change to any family alters the tasks a given seed produces.
GENERATOR_VERSION = "1.3"
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
DOMAINS: tuple[Domain, ...] = ("data_processing", "system_operations", "development_tooling")

# Task parameters (file names, columns, users, patterns) come from the closed pools in
# pools.py, so a small model meets the same vocabulary in training and evaluation.
PARAM_POOL = "closed"

TASK_ORG = "taskforge"
SETUP_SCRIPT = "setup.sh"  # build context name of the one-shot build script (never in the image)
SETUP_IN_IMAGE = "/tmp/forge-setup.sh"


@dataclass
class Draft:
    """What a family decides for one task, before it becomes a TaskSpec.

    files: absolute path inside the image -> text (copied in with one COPY).
    setup: shell lines run once at build time, as root, after the files are in place (create
        users, set modes, build git history, make archives). Deleted from the image afterwards.
    outputs: every path the tests check; the instruction must name each of them.
    entrypoint: absolute path of an executable in `files` that becomes the image's ENTRYPOINT: it
        starts the environment's services, then `exec "$@"` (the keep-alive command that our
        sandbox and Harbor's compose file pass; both override CMD, neither the ENTRYPOINT).
    near_misses: name -> bash body of a solution that is right but for one stated requirement it
        skips or bends (the name says which, e.g. "keeps_empty_dirs"). Rendered as
        solution/near_miss/<name>.sh; `taskforge validate` fails the task if one scores above 0.
    """

    instruction: str
    tests: str
    solution: str
    outputs: list[str]
    files: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    workdir: str = "/home/user"
    extra: dict[str, str | int | float | bool] = field(default_factory=dict)
    entrypoint: str = ""
    near_misses: dict[str, str] = field(default_factory=dict)


class DraftError(ValueError):
    """A family produced an inconsistent draft (a bug in the family, not in the caller)."""


def bent(solution: str, old: str, new: str) -> str:
    """A near-miss body: `solution` with `old` (which must occur in it) replaced by `new`."""
    if old not in solution:
        raise DraftError(f"near-miss: {old!r} is not in the solution it bends")
    return solution.replace(old, new)


class Family(ABC):
    """A procedural task generator. Subclasses set name, domain, summary and implement build()."""

    name: ClassVar[str]
    domain: ClassVar[Domain]
    summary: ClassVar[str]

    @abstractmethod
    def build(self, rng: random.Random, difficulty: Difficulty) -> Draft:
        """Draws one task of this family; computes its expected answers from the drawn data."""

    def sample(self, rng: random.Random, difficulty: Difficulty, *, seed: int = 0) -> TaskSpec:
        """One task as a TaskSpec. `seed` is recorded in the metadata (the rng's seed)."""
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {difficulty!r}")
        draft = self.build(rng, difficulty)
        return to_spec(self, draft, difficulty, seed)


def image_layout(draft: Draft) -> tuple[dict[str, str], list[str]]:
    """Build context files and Dockerfile steps for a draft: one COPY, at most one RUN."""
    context = {f"files/{path.lstrip('/')}": text for path, text in sorted(draft.files.items())}
    steps: list[str] = []
    if context:
        steps.append("COPY files/ /")
    if draft.setup:
        context[SETUP_SCRIPT] = (
            "#!/bin/bash\n# Build-time setup, deleted from the image after it runs.\nset -euo pipefail\n"
            + "\n".join(draft.setup)
            + "\n"
        )
        steps.append(f"COPY {SETUP_SCRIPT} {SETUP_IN_IMAGE}")
        steps.append(f"RUN bash {SETUP_IN_IMAGE} && rm -f {SETUP_IN_IMAGE}")
    if draft.entrypoint:
        steps.append(f'ENTRYPOINT ["{draft.entrypoint}"]')
    return context, steps


def content_hash(instruction: str, environment_files: dict[str, str], dockerfile_steps: list[str]) -> str:
    """Stable digest of what the agent sees: the instruction and the environment."""
    digest = hashlib.sha256(instruction.encode())
    for rel in sorted(environment_files):
        digest.update(b"\0" + rel.encode() + b"\0" + environment_files[rel].encode())
    digest.update(b"\0" + "\n".join(dockerfile_steps).encode())
    return digest.hexdigest()


def to_spec(family: Family, draft: Draft, difficulty: Difficulty, seed: int) -> TaskSpec:
    instruction = draft.instruction.strip() + "\n"
    missing = [p for p in draft.outputs if p not in instruction]
    if missing:
        raise DraftError(
            f"{family.name}: the instruction does not name {missing}; every path the tests check must be in it"
        )
    bad_names = [name for name in draft.near_misses if not NEAR_MISS_SLUG.fullmatch(name)]
    if bad_names:
        raise DraftError(f"{family.name}: near-miss names {bad_names} are not slugs (lowercase letters, digits, '_')")
    environment_files, steps = image_layout(draft)
    short_hash = content_hash(instruction, environment_files, steps)[:10]
    extra = {"param_pool": PARAM_POOL, "outputs": " ".join(draft.outputs), **draft.extra}
    return TaskSpec(
        name=f"{TASK_ORG}/{family.name}-{difficulty}-{short_hash}",
        instruction=instruction,
        environment_files=environment_files,
        dockerfile_steps=steps,
        workdir=draft.workdir,
        tests={"test_outputs.py": draft.tests},
        solution=draft.solution,
        near_misses=dict(sorted(draft.near_misses.items())),
        metadata=TaskMetadata(
            family=family.name,
            domain=family.domain,
            difficulty=difficulty,
            seed=seed,
            generator_version=GENERATOR_VERSION,
            extra=extra,
        ),
        agent_timeout_sec=600.0,
        verifier_timeout_sec=120.0,
        build_timeout_sec=600.0,
        cpus=1,
        memory_mb=1024,
    )
