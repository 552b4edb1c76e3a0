"""Clean demonstrations (issue 15, point 5): reference solutions are what SFT learns from, so they hold
no dead branches (`if False:`, `if None is not None`, a branch the generator emitted for an option it
left off) and read as what a skilled person would type. A static check over generated solutions of
every family and difficulty, parametrised over FAMILIES (a new family is covered without editing this
file). The Python a solution runs through `python3 - <<'PY'` is parsed and checked node by node.
"""

from __future__ import annotations

import ast
import random
import re

import pytest

from taskforge.forge.base import DIFFICULTIES
from taskforge.forge.families import FAMILIES
from taskforge.forge.generate import task_seed

INSTANCES_PER_DIFFICULTY = 6

PYTHON_BLOCK = re.compile(r"python3 - <<'(\w+)'\n(.*?)\n\1$", re.DOTALL | re.MULTILINE)
SHELL_WORD = r"(?:\"[^\"$`]*\"|'[^']*'|[^\s$\"'`\]]+)"
SHELL_PROBLEMS = {
    "a branch on a constant (`if true` / `if false`)": re.compile(r"\b(?:if|elif|while)\s+(?:true|false|:)\s*;"),
    "a test comparing two literals": re.compile(
        rf"\[\[?\s+{SHELL_WORD}\s+(?:=|==|!=|-eq|-ne|-lt|-le|-gt|-ge)\s+{SHELL_WORD}\s+\]\]?"
    ),
    "Python's None rendered into a command": re.compile(r"(?<![\w.])None(?![\w.])"),
}


def _constant(node: ast.AST) -> bool:
    """A literal, or a container / operation made only of literals (its value is known when generated)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_constant(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _constant(k) for k in node.keys) and all(_constant(v) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        return _constant(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(_constant(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return _constant(node.left) and all(_constant(c) for c in node.comparators)
    return False


def _constant_names(tree: ast.Module) -> set[str]:
    """Top-level names bound once, to a literal, and never rebound (`cache, volume = None, None`)."""
    bound: dict[str, list[bool]] = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = [(t, node.value) for t in node.targets]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.comprehension | ast.NamedExpr):
            targets = [(node.target, None)]
        for target, value in targets:
            if isinstance(target, ast.Name):
                bound.setdefault(target.id, []).append(value is not None and _constant(value))
            elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    if isinstance(t, ast.Name):
                        bound.setdefault(t.id, []).append(_constant(v))
            else:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        bound.setdefault(name.id, []).append(False)
    return {name for name, constant in bound.items() if constant == [True]}


def python_problems(code: str) -> list[str]:
    """Dead or generator-shaped code in one Python block: branches and loops on known values."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"the Python block does not parse: {exc}"]
    constants = _constant_names(tree)

    def known(test: ast.AST) -> bool:
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test = test.operand
        return _constant(test) or (isinstance(test, ast.Name) and test.id in constants)

    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.IfExp | ast.While) and known(node.test):
            problems.append(
                f"line {node.lineno}: a branch on a value known when it was generated: `{ast.unparse(node.test)}`"
            )
        elif isinstance(node, ast.BoolOp) and any(known(value) for value in node.values[:-1]):  # `x or 0` is a default
            problems.append(f"line {node.lineno}: `and`/`or` with an operand known when it was generated")
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple | ast.List) and not node.iter.elts:
            problems.append(f"line {node.lineno}: a loop over an empty literal")
        elif isinstance(node, ast.comprehension) and any(known(test) for test in node.ifs):
            problems.append(f"line {node.iter.lineno}: a comprehension filter known when it was generated")
    return problems


def solution_problems(solution: str) -> list[str]:
    """Everything that makes a reference solution read as generated rather than typed."""
    problems = []
    shell = PYTHON_BLOCK.sub("", solution)
    for what, pattern in SHELL_PROBLEMS.items():
        for match in pattern.finditer(shell):
            problems.append(f"{what}: `{match.group(0)}`")
    for match in PYTHON_BLOCK.finditer(solution):
        problems += python_problems(match.group(2))
    return problems


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reference_solutions_have_no_dead_branches(family):
    found = []
    for difficulty in DIFFICULTIES:
        for i in range(INSTANCES_PER_DIFFICULTY):
            seed = task_seed(31, i, attempt=DIFFICULTIES.index(difficulty))
            spec = FAMILIES[family].sample(random.Random(seed), difficulty, seed=seed)
            found += [f"{spec.name} ({difficulty}): {p}" for p in solution_problems(spec.solution)]
    assert not found, "\n".join(dict.fromkeys(found))


@pytest.mark.parametrize(
    "solution, problem",
    [
        ("python3 - <<'PY'\nif False:\n    print(1)\nPY", "a branch on a value known"),
        ("python3 - <<'PY'\nif None is not None:\n    x = 1\nPY", "a branch on a value known"),
        ("python3 - <<'PY'\nif 'a' == 'b':\n    x = 1\nPY", "a branch on a value known"),
        ("python3 - <<'PY'\ncache, volume = 'redis', None\nif volume:\n    x = 1\nPY", "`volume`"),
        ("python3 - <<'PY'\nok = os.path.isfile(p) or (None and p.endswith('.x'))\nPY", "`and`/`or` with an operand"),
        ("python3 - <<'PY'\nfor x in []:\n    print(x)\nPY", "a loop over an empty literal"),
        ("python3 - <<'PY'\nx = [p for p in 'ab' if True]\nPY", "a comprehension filter"),
        ("if true; then echo hi; fi", "a branch on a constant"),
        ('[ "medium" = "hard" ] && echo hi', "a test comparing two literals"),
        ("find . ! -path '*/None/*'", "None rendered"),
        ("python3 - <<'PY'\nif (\nPY", "does not parse"),
    ],
)
def test_the_check_catches_dead_code(solution, problem):
    assert any(problem in p for p in solution_problems(solution)), solution_problems(solution)


def test_the_check_passes_live_code():
    live = (
        'mkdir -p /out\n[ "$mode" = "x" ] && echo "$mode"\n'
        "python3 - <<'PY'\nimport os\nitems = os.listdir('/')\nif items:\n    print(sorted(items))\n"
        "base = '/srv'\nfor name in ['a', 'b']:\n    print(os.path.join(base, name))\nPY\n"
    )
    assert solution_problems(live) == []
