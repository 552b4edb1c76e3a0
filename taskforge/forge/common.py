"""Pieces every family shares: CSV text, shell snippets, and the test module scaffold.

Tests run inside the task container with the image's python3 (3.11) and pytest, offline, after
the agent; they may not import taskforge. So each test_outputs.py is self-contained: a header,
the expected values as one embedded JSON document, the helper snippets it needs, then the
family's test functions.
"""

from __future__ import annotations

import csv
import io
import json
import random
import textwrap
from collections.abc import Iterable, Sequence


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def pick(rng: random.Random, pool: Sequence, k: int) -> list:
    """k distinct items of pool, in the pool's order (stable, readable instructions)."""
    chosen = set(rng.sample(range(len(pool)), k))
    return [item for i, item in enumerate(pool) if i in chosen]


def bullets(lines: Iterable[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def python_block(code: str) -> str:
    """A bash snippet running `code` with python3 (a quoted heredoc: no shell expansion)."""
    return "python3 - <<'PY'\n" + textwrap.dedent(code).strip() + "\nPY"


def heredoc(path: str, text: str, delimiter: str = "FORGE_EOF") -> str:
    """A bash snippet writing `text` to `path` verbatim."""
    if not text.endswith("\n"):
        text += "\n"
    return f"cat > {path} <<'{delimiter}'\n{text}{delimiter}"


# ------------------------------------------------------------------------------------------
# Test scaffold

_HEADER = '''"""Outcome checks for a taskforge task (family: {family}). Generated; expected values embedded."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess

'''

# Snippets whose generated lines exceed this file's line limit are split into adjacent string
# literals (mid-line); the joined text, which is what test_outputs.py gets, is unchanged.
HELPERS = {
    "base": '''
def read_text(path):
    p = pathlib.Path(path)
    assert p.is_file(), f"{path} does not exist or is not a regular file"
    return p.read_text(errors="replace")


def num(value):
    try:
        return float(str(value).strip())
    except ValueError:
        raise AssertionError(f"{value!r} is not a number") from None


def close(actual, expected, tol=0.011):
    return abs(num(actual) - float(expected)) <= tol


def content_lines(path):
    """Non-blank lines of a file, stripped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
''',
    "csv": '''
def csv_rows(path):
    """Rows of a CSV file, cells stripped, blank rows dropped; the header is rows[0]."""
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(read_text(path)))]
    rows = [row for row in rows if any(row)]
    assert rows, f"{path} is empty"
    return rows


def check_csv_table(path, header, rows, numeric, ordered):
    """The CSV at path has exactly this header and these rows (numbers within tolerance)."""
    got = csv_rows(path)
    assert [h.lower() for h in got[0]] == [h.lower() for h in header], f"{path}: header {got[0]} != {header}"
    body = got[1:]
    assert len(body) == len(rows), f"{path}: {len(body)} data rows, expected {len(rows)}"
    if not ordered:
        body = sorted(body, key=lambda r: r[0])
        rows = sorted(rows, key=lambda r: str(r[0]))
    for got_row, want_row in zip(body, rows):
        assert len(got_row) == len(want_row), f"{path}: row {got_row} should have {len(want_row)} fields"
        for i, (g, w) in enumerate(zip(got_row, want_row)):
            if header[i] in numeric:
                assert close(g, w), f"{path}: {header[i]}={g!r} in row {got_row}, expected {w}"
            else:
                assert g == str(w), f"{path}: {header[i]}={g!r} in row {got_row}, expected {w!r}"
''',
    "json": """
def load_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{path} is not valid JSON: {exc}") from None
""",
    "nobody": '''
def run_as_nobody(args, cwd, timeout=60):
    """Runs agent-written code without root (it must not touch the verifier's files)."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *args], '''
    '''cwd=cwd, capture_output=True, text=True, timeout=timeout)


def copy_for_nobody(src, dst):
    """A copy of src at dst owned by nobody, so agent-written code runs in a scratch tree."""
    subprocess.run(["rm", "-rf", dst], check=True)
    subprocess.run(["cp", "-a", src, dst], check=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", dst], check=True)
''',
    "stat": """
import grp
import pwd
import stat as statmod


def mode_of(path):
    return statmod.S_IMODE(os.lstat(path).st_mode)


def owner_of(path):
    st = os.lstat(path)
    return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
""",
    "rounded": r'''
def is_rounded(value, places=2):
    """A number with at most `places` decimals (12.5 and 12.50 are; 12.345 and 12.3400000001 are not)."""
    x = num(value)
    return round(x, places) == x


def check_rounded_cells(path, columns, places=2):
    """The CSV cells of these columns are written with at most `places` decimals."""
    rows = csv_rows(path)
    header = [h.lower() for h in rows[0]]
    for col in columns:
        i = header.index(col.lower())
        for row in rows[1:]:
            cell = row[i] if i < len(row) else ""
            ok = re.fullmatch(r"-?\d+(\.\d{1,%d})?" % places, cell)
            assert ok, f"{path}: {col}={cell!r} is not rounded to {places} decimals"
''',
    "git": '''
def git(repo, *args):
    """Read-only git with hooks and fsmonitor disabled (the repository is agent-controlled)."""
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", "-c", "core.fsmonitor=false",'''
    """ "-c", "core.hooksPath=/dev/null", "-C", repo, *args],
        capture_output=True, text=True, timeout=60,
    )
    return done.stdout.strip() if done.returncode == 0 else None
""",
}


def test_module(family: str, expected: object, body: str, helpers: Sequence[str] = ("base",)) -> str:
    """test_outputs.py: header, EXPECTED (embedded JSON), helper snippets, the tests in `body`."""
    names = ["base", *[h for h in helpers if h != "base"]]
    parts = [
        _HEADER.replace("{family}", family),
        "EXPECTED = json.loads(" + json.dumps(json.dumps(expected, sort_keys=True)) + ")\n",
        *[HELPERS[name] for name in names],
        "\n" + textwrap.dedent(body).strip() + "\n",
    ]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


# ------------------------------------------------------------------------------------------
# Build-time setup commands


def add_group(name: str) -> str:
    return f"getent group {name} >/dev/null || groupadd {name}"


def add_user(
    name: str, *, system: bool = False, shell: str = "/usr/sbin/nologin", group: str | None = None, home: bool = False
) -> str:
    """useradd for a build script; a no-op when the account exists already."""
    flags = ["-m" if home else "-M", "-s", shell]
    if system:
        flags.append("-r")
    if group:
        flags += ["-g", group]
    return f"id -u {name} >/dev/null 2>&1 || useradd {' '.join(flags)} {name}"
