"""The import rules of docs/architecture.md, checked on the source (no import is executed)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("taskforge", "trainer")


def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every import statement, nested ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
    return found


def test_taskforge_core_never_imports_the_trainer():
    offenders = []
    for path, tree in _modules().items():
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0] != "taskforge" or relative.parts[1] == "commands":
            continue
        offenders += [
            f"{relative}:{line} imports {module}"
            for module, _, line in _imports(tree)
            if module.split(".")[0] == "trainer"
        ]
    assert not offenders, "taskforge's core must not import trainer/ (only taskforge/commands/ may):\n" + "\n".join(
        offenders
    )


def test_trainer_imports_only_lower_layers_of_taskforge():
    stages = {
        "taskforge.commands",
        "taskforge.filter",
        "taskforge.evaluate",
        "taskforge.report",
        "taskforge.validate",
        "taskforge.forge",
        "taskforge.harbor_backend",
    }
    offenders = []
    for path, tree in _modules().items():
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0] != "trainer":
            continue
        for module, _, line in _imports(tree):
            if any(module == stage or module.startswith(stage + ".") for stage in stages):
                offenders.append(f"{relative}:{line} imports {module}")
    assert not offenders, "trainer/ may import taskforge's lower layers only:\n" + "\n".join(offenders)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path, tree in _modules().items():
        for module, names, line in _imports(tree):
            if module.split(".")[0] in PACKAGES:
                offenders += [
                    f"{path.relative_to(REPO_ROOT)}:{line} takes {name} from {module}"
                    for name in names
                    if name.startswith("_") and not name.startswith("__")
                ]
    assert not offenders, "\n".join(offenders)


def test_generate_and_filter_do_not_load_torch():
    """The trainer's heavy dependencies belong to its extra: the task-side commands never load them."""
    probe = (
        "import sys; from taskforge.commands import app; "
        "import taskforge.forge.generate, taskforge.filter, taskforge.attempts; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert completed.stdout.split() == ["False", "False"]
