"""A small model of a git history that is also a build script.

`History` records commits, branches and merges as the build script's git commands, and keeps
the commit graph in Python so a family computes its expected answers (ahead/behind counts,
subjects, changed files) from the same model the repository is built from. Author and committer
dates come from a clock that only moves forward, so `git log` order equals creation order and
the repository is the same on every build.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from taskforge.forge import pools
from taskforge.forge.common import heredoc

EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z

VERBS = ["Add", "Fix", "Update", "Refactor", "Document", "Remove", "Improve", "Rename", "Simplify", "Test"]
NOUNS = [
    "login form",
    "cache layer",
    "CSV export",
    "retry logic",
    "config loader",
    "search index",
    "rate limiter",
    "audit log",
    "email templates",
    "date parsing",
    "pagination",
    "health check",
    "user profile",
    "payment webhook",
    "CLI flags",
    "error pages",
]


def person(name: str) -> tuple[str, str]:
    return (
        f"{name.capitalize()} {pools.SURNAMES[sum(map(ord, name)) % len(pools.SURNAMES)]}",
        f"{name}@{pools.MAIL_DOMAINS[len(name) % len(pools.MAIL_DOMAINS)]}",
    )


@dataclass
class Commit:
    id: int
    parents: list[int]
    subject: str
    author: str
    files: list[str]
    branch: str


@dataclass
class History:
    repo: str
    rng: random.Random
    clock: int = EPOCH
    commits: dict[int, Commit] = field(default_factory=dict)
    heads: dict[str, int | None] = field(default_factory=dict)
    current: str = "main"
    lines: list[str] = field(default_factory=list)
    contents: dict[str, str] = field(default_factory=dict)  # working tree of the current branch
    trees: dict[int, dict[str, str]] = field(default_factory=dict)
    subjects: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.heads["main"] = None
        self.lines += [
            'git config --global user.name "Dev User" && git config --global user.email dev@example.com',
            "git config --global init.defaultBranch main && git config --global advice.detachedHead false",
            f"mkdir -p {self.repo} && cd {self.repo} && git init -q -b main",
        ]

    # -- naming -------------------------------------------------------------------------
    def new_subject(self, prefix: str = "") -> str:
        while True:
            subject = f"{prefix}{self.rng.choice(VERBS)} {self.rng.choice(NOUNS)}"
            if prefix:
                subject = f"{prefix}{self.rng.choice(VERBS).lower()} {self.rng.choice(NOUNS)}"
            if subject not in self.subjects:
                self.subjects.add(subject)
                return subject

    def author_env(self, author: str) -> str:
        self.clock += self.rng.randint(600, 86_400)
        name, email = person(author)
        stamp = f"@{self.clock} +0000"
        return (
            f'GIT_AUTHOR_NAME="{name}" GIT_AUTHOR_EMAIL={email} GIT_AUTHOR_DATE="{stamp}" GIT_COMMITTER_NAME="{name}" '
            f'GIT_COMMITTER_EMAIL={email} GIT_COMMITTER_DATE="{stamp}"'
        )

    # -- operations ----------------------------------------------------------------------
    def write(self, path: str, text: str) -> None:
        if "/" in path:
            self.lines.append(f"mkdir -p {path.rsplit('/', 1)[0]}")
        self.lines.append(heredoc(path, text))
        self.contents[path] = text

    def delete(self, path: str) -> None:
        self.lines.append(f"git rm -q {path}")
        self.contents.pop(path, None)

    def commit(self, subject: str, author: str, changes: dict[str, str], body: str = "") -> int:
        for path, text in changes.items():
            self.write(path, text)
        cid = len(self.commits)
        parent = self.heads[self.current]
        message = subject + (f"\n\n{body}" if body else "")
        self.lines.append(
            f"git add -A && {self.author_env(author)} git commit -q -F - <<'FORGE_MSG'\n{message}\nFORGE_MSG"
        )
        self.commits[cid] = Commit(
            cid, [] if parent is None else [parent], subject, author, sorted(changes), self.current
        )
        self.heads[self.current] = cid
        self.trees[cid] = dict(self.contents)
        return cid

    def branch(self, name: str) -> None:
        """Creates `name` at the current commit and switches to it."""
        self.lines.append(f"git checkout -q -b {name}")
        self.heads[name] = self.heads[self.current]
        self.current = name

    def checkout(self, name: str) -> None:
        self.lines.append(f"git checkout -q {name}")
        self.current = name
        self.contents = dict(self.trees[self.heads[name]]) if self.heads[name] is not None else {}

    def merge(self, name: str, author: str, subject: str | None = None) -> int:
        """A --no-ff merge of `name` into the current branch (the model assumes no conflicts)."""
        subject = subject or f"Merge branch '{name}'"
        self.lines.append(f'{self.author_env(author)} git merge -q --no-ff -m "{subject}" {name}')
        cid = len(self.commits)
        ours, theirs = self.heads[self.current], self.heads[name]
        merged = dict(self.trees[ours])
        base = self.trees.get(self.merge_base(ours, theirs), {})
        for path, text in self.trees[theirs].items():
            if base.get(path) != text:
                merged[path] = text
        self.commits[cid] = Commit(cid, [ours, theirs], subject, author, [], self.current)
        self.heads[self.current] = cid
        self.trees[cid] = merged
        self.contents = dict(merged)
        return cid

    # -- queries -------------------------------------------------------------------------
    def ancestors(self, cid: int | None) -> set[int]:
        seen: set[int] = set()
        stack = [] if cid is None else [cid]
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            stack.extend(self.commits[c].parents)
        return seen

    def merge_base(self, a: int, b: int) -> int | None:
        common = self.ancestors(a) & self.ancestors(b)
        return max(common) if common else None

    def script(self) -> list[str]:
        return [*self.lines, f"cd {self.repo} && git checkout -q main"]


def topic_file(topic: str, rng: random.Random) -> str:
    return rng.choice([f"src/{topic}.py", f"docs/{topic}.md", f"config/{topic}.yaml"])


def line_change(history: History, path: str) -> dict[str, str]:
    """Appends one line to a file of the current tree."""
    old = history.contents.get(path, "")
    return {path: old + f"{path.rsplit('/', 1)[-1]} rev {history.rng.randint(1000, 9999)}\n"}
