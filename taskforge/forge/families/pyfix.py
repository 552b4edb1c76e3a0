"""Python bug-fix family: a small package whose unit tests fail because of planted bugs.

Each kata is a correct function with one planted bug (a source substitution). The generator runs
the correct and the buggy code to pick visible test cases that expose the bug and hidden cases
that the fixed code must pass; expected values come from running the correct code, so the
instruction never has to state them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import bullets, heredoc, python_block, test_module


@dataclass(frozen=True)
class Kata:
    key: str
    names: tuple[str, ...]
    source: str  # uses @name@ and @a@/@b@ for constants
    bug: tuple[str, str]  # (correct text, buggy text) in the rendered source
    consts: Callable[[random.Random], dict[str, int]]
    cases: Callable[[random.Random, dict[str, int]], list[list]]  # argument lists
    imports: str = ""


def _ints(rng, n, lo=0, hi=50):
    return [rng.randint(lo, hi) for _ in range(n)]


WORDS = ["Alpha", "beta", "GAMMA", "delta", "alpha", "Beta", "gamma", "ALPHA"]

KATAS = [
    Kata(
        "chunk",
        ("chunk", "batched", "split_chunks"),
        (
            "def @name@(items, size):\n"
            '    """Split items into consecutive lists of at most `size` elements (the last may be shorter)."""\n'
            "    return [items[i:i + size] for i in range(0, len(items), size)]\n"
        ),
        ("range(0, len(items), size)", "range(0, len(items) - size, size)"),
        lambda rng: {},
        lambda rng, c: [
            [list(range(1, n + 1)), s]
            for n, s in [
                (7, 3),
                (rng.randint(5, 12), rng.randint(2, 4)),
                (rng.randint(1, 3), 5),
                (0, 2),
                (rng.randint(6, 10), 1),
            ]
        ],
    ),
    Kata(
        "grade",
        ("grade", "letter_grade", "classify_score"),
        (
            "def @name@(score):\n"
            '    """Letter grade: "A" from @a@ points up, "B" from @b@ points up, otherwise "C"."""\n'
            "    if score >= @a@:\n"
            '        return "A"\n'
            "    if score >= @b@:\n"
            '        return "B"\n'
            '    return "C"\n'
        ),
        ("if score >= @a@:", "if score > @a@:"),
        lambda rng: {"a": rng.randint(80, 95), "b": rng.randint(50, 70)},
        lambda rng, c: [[c["a"]], [c["a"] + 1], [c["b"]], [c["b"] - 1], [rng.randint(0, 100)], [rng.randint(0, 100)]],
    ),
    Kata(
        "duration",
        ("parse_duration", "to_seconds", "duration_seconds"),
        (
            "def @name@(text):\n"
            '    """Seconds in a duration such as "1h30m", "90s" or "2h5m10s"."""\n'
            "    total = 0\n"
            '    for value, unit in re.findall(r"(\\d+)([hms])", text):\n'
            '        total += int(value) * {"h": 3600, "m": 60, "s": 1}[unit]\n'
            "    return total\n"
        ),
        (r'r"(\d+)([hms])"', r'r"(\d)([hms])"'),
        lambda rng: {},
        lambda rng, c: [
            ["90s"],
            ["1h30m"],
            [f"{rng.randint(2, 9)}h{rng.randint(10, 59)}m"],
            [f"{rng.randint(10, 99)}m{rng.randint(1, 9)}s"],
            ["5s"],
            [f"{rng.randint(1, 3)}h"],
        ],
        imports="import re\n",
    ),
    Kata(
        "median",
        ("median", "middle_value"),
        (
            "def @name@(values):\n"
            '    """Median of a non-empty list of numbers."""\n'
            "    ordered = sorted(values)\n"
            "    mid = len(ordered) // 2\n"
            "    if len(ordered) % 2:\n"
            "        return ordered[mid]\n"
            "    return (ordered[mid - 1] + ordered[mid]) / 2\n"
        ),
        ("ordered = sorted(values)", "ordered = list(values)"),
        lambda rng: {},
        lambda rng, c: [[[5, 1, 3]], [[4, 1, 3, 2]], [_ints(rng, 5)], [_ints(rng, 6)], [[7]], [_ints(rng, 7)]],
    ),
    Kata(
        "discount",
        ("apply_discount", "discounted_price"),
        (
            "def @name@(price, percent):\n"
            '    """Price after a discount of `percent` per cent, rounded to cents."""\n'
            "    return round(price * (1 - percent / 100), 2)\n"
        ),
        ("round(price * (1 - percent / 100), 2)", "round(price * (1 - percent / 100))"),
        lambda rng: {},
        lambda rng, c: [
            [19.99, 10],
            [rng.randint(100, 9999) / 100, rng.choice([5, 15, 25, 33])],
            [rng.randint(100, 9999) / 100, rng.choice([12, 20, 50])],
            [10.0, 0],
        ],
    ),
    Kata(
        "slug",
        ("slugify", "make_slug"),
        (
            "def @name@(title):\n"
            '    """URL slug: lowercase letters and digits, runs of anything else become one "-", '
            'no leading or trailing "-"."""\n'
            '    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")\n'
        ),
        ('title.lower()).strip("-")', "title.lower())"),
        lambda rng: {},
        lambda rng, c: [
            ["  Hello, World! "],
            ["Release 2.0 -- notes"],
            [f"{rng.choice(WORDS)} {rng.choice(WORDS)}!"],
            ["plain"],
            [f"({rng.choice(WORDS)}) & {rng.choice(WORDS)}"],
        ],
        imports="import re\n",
    ),
    Kata(
        "ranges",
        ("merge_ranges", "merge_intervals"),
        (
            "def @name@(ranges):\n"
            '    """Merge overlapping or touching [start, end] ranges; returns sorted [start, end] lists."""\n'
            "    merged = []\n"
            "    for start, end in sorted(ranges):\n"
            "        if merged and start <= merged[-1][1]:\n"
            "            merged[-1][1] = max(merged[-1][1], end)\n"
            "        else:\n"
            "            merged.append([start, end])\n"
            "    return merged\n"
        ),
        ("start <= merged[-1][1]", "start < merged[-1][1]"),
        lambda rng: {},
        lambda rng, c: [
            [[[1, 3], [3, 5], [8, 9]]],
            [[[5, 6], [1, 2]]],
            [sorted([sorted(_ints(rng, 2, 0, 20)) for _ in range(4)])],
            [[[2, 4], [1, 3], [4, 7]]],
            [[]],
        ],
    ),
    Kata(
        "words",
        ("word_counts", "count_words"),
        (
            "def @name@(text):\n"
            '    """How often each word occurs, ignoring letter case; words are separated by whitespace."""\n'
            "    counts = {}\n"
            "    for word in text.lower().split():\n"
            "        counts[word] = counts.get(word, 0) + 1\n"
            "    return counts\n"
        ),
        ("text.lower().split()", "text.split()"),
        lambda rng: {},
        lambda rng, c: [
            ["the The THE end"],
            [" ".join(rng.choice(WORDS) for _ in range(6))],
            [" ".join(rng.choice(WORDS) for _ in range(4))],
            [""],
        ],
    ),
    Kata(
        "moving",
        ("moving_average", "rolling_mean"),
        (
            "def @name@(values, window):\n"
            '    """Average of every run of `window` consecutive values, in order."""\n'
            "    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]\n"
        ),
        ("range(len(values) - window + 1)", "range(len(values) - window)"),
        lambda rng: {},
        lambda rng, c: [[[1, 2, 3, 4], 2], [_ints(rng, 6), 3], [_ints(rng, 5), 5], [_ints(rng, 7), 2]],
    ),
    Kata(
        "leap",
        ("is_leap", "is_leap_year"),
        (
            "def @name@(year):\n"
            '    """True for leap years of the Gregorian calendar."""\n'
            "    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n"
        ),
        ("year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)", "year % 4 == 0 and year % 100 != 0"),
        lambda rng: {},
        lambda rng, c: [[2000], [1900], [2024], [2023], [rng.choice([1600, 2400])], [rng.randint(1901, 2099)]],
    ),
    Kata(
        "email",
        ("normalize_email", "clean_email"),
        (
            "def @name@(address):\n"
            '    """An email address without surrounding whitespace, in lowercase."""\n'
            "    return address.strip().lower()\n"
        ),
        ("address.strip().lower()", "address.lower()"),
        lambda rng: {},
        lambda rng, c: [
            ["  Alice@Example.COM "],
            [f"{rng.choice(pools.PEOPLE).upper()}@{rng.choice(pools.MAIL_DOMAINS)}\n"],
            [f" {rng.choice(pools.PEOPLE)}@{rng.choice(pools.MAIL_DOMAINS)}"],
        ],
    ),
    Kata(
        "celsius",
        ("to_fahrenheit", "celsius_to_fahrenheit"),
        (
            "def @name@(celsius):\n"
            '    """Degrees Fahrenheit for a Celsius temperature, rounded to one decimal."""\n'
            "    return round(celsius * 9 / 5 + 32, 1)\n"
        ),
        ("celsius * 9 / 5 + 32", "celsius * 5 / 9 + 32"),
        lambda rng: {},
        lambda rng, c: [[100], [0], [-40], [rng.randint(-30, 45)], [rng.randint(-300, 450) / 10]],
    ),
    Kata(
        "clamp",
        ("clamp", "bounded"),
        (
            "def @name@(value, low, high):\n"
            '    """`value` limited to the range from `low` to `high` (inclusive)."""\n'
            "    return max(low, min(value, high))\n"
        ),
        ("max(low, min(value, high))", "min(low, max(value, high))"),
        lambda rng: {},
        lambda rng, c: [
            [5, 0, 10],
            [-3, 0, 10],
            [15, 0, 10],
            [rng.randint(20, 80), 10, 90],
            [rng.randint(100, 200), 0, 50],
        ],
    ),
    Kata(
        "title",
        ("title_case", "capitalize_words"),
        (
            "def @name@(text):\n"
            '    """Each whitespace-separated word capitalized, joined by single spaces."""\n'
            '    return " ".join(word.capitalize() for word in text.split())\n'
        ),
        ("text.split())", 'text.split(" "))'),
        lambda rng: {},
        lambda rng, c: [
            ["hello  world"],
            ["one"],
            [f"  {rng.choice(WORDS)} {rng.choice(WORDS)}"],
            [f"{rng.choice(WORDS)}   {rng.choice(WORDS)}\tend"],
            ["a b c"],
        ],
    ),
    Kata(
        "vowels",
        ("count_vowels", "vowel_count"),
        (
            "def @name@(text):\n"
            '    """Number of vowels (a, e, i, o, u) in the text, in either letter case."""\n'
            '    return sum(1 for ch in text.lower() if ch in "aeiou")\n'
        ),
        ("for ch in text.lower()", "for ch in text"),
        lambda rng: {},
        lambda rng, c: [
            ["HELLO"],
            ["banana"],
            [" ".join(rng.choice(WORDS) for _ in range(3))],
            [rng.choice(WORDS).upper()],
            ["rhythm"],
        ],
    ),
    Kata(
        "running",
        ("running_total", "cumulative_sum"),
        (
            "def @name@(values):\n"
            '    """The running totals of the values: element i is the sum of the first i + 1 values."""\n'
            "    out, total = [], 0\n"
            "    for value in values:\n"
            "        total += value\n"
            "        out.append(total)\n"
            "    return out\n"
        ),
        ("out, total = [], 0", "out, total = [], values[0] if values else 0"),
        lambda rng: {},
        lambda rng, c: [[[1, 2, 3]], [[]], [_ints(rng, 5, 1, 20)], [[rng.randint(1, 9)]], [_ints(rng, 4, 1, 50)]],
    ),
    Kata(
        "pairs",
        ("parse_pairs", "parse_settings"),
        (
            "def @name@(text):\n"
            '    """A dict from text like "a=1; b=2": `;`-separated `key=value` pairs, '
            'keys and values stripped of spaces."""\n'
            '    pairs = (part.split("=", 1) for part in text.split(";") if "=" in part)\n'
            "    return {key.strip(): value.strip() for key, value in pairs}\n"
        ),
        ("{key.strip(): value.strip() for key, value in pairs}", "{key: value for key, value in pairs}"),
        lambda rng: {},
        lambda rng, c: [
            ["a=1; b=2"],
            ["x=1"],
            [f"host = {rng.choice(pools.APPS)}; port = {rng.randint(1000, 9999)}"],
            [f"mode=fast;level={rng.randint(1, 9)}"],
            [f" user={rng.choice(pools.PEOPLE)} ;debug=on"],
        ],
    ),
    Kata(
        "percent",
        ("percent_of", "share_percent"),
        (
            "def @name@(part, whole):\n"
            '    """`part` as a percentage of `whole`, rounded to one decimal; 0.0 when `whole` is 0."""\n'
            "    return round(part / whole * 100, 1) if whole else 0.0\n"
        ),
        ("round(part / whole * 100, 1)", "round(part / whole * 100)"),
        lambda rng: {},
        lambda rng, c: [[1, 3], [1, 2], [2, 3], [rng.randint(1, 50), rng.choice([7, 9, 11, 13])], [5, 0]],
    ),
    Kata(
        "palindrome",
        ("is_palindrome", "reads_same_backwards"),
        (
            "def @name@(text):\n"
            '    """True when the letters and digits of the text read the same backwards, ignoring case."""\n'
            "    cleaned = [ch.lower() for ch in text if ch.isalnum()]\n"
            "    return cleaned == cleaned[::-1]\n"
        ),
        ("[ch.lower() for ch in text if ch.isalnum()]", "[ch for ch in text if ch.isalnum()]"),
        lambda rng: {},
        lambda rng, c: [
            ["Racecar"],
            ["abc"],
            ["A man, a plan, a canal: Panama"],
            ["No lemon, no melon"],
            [rng.choice(["level", "kayak", "python", "Noon"])],
        ],
    ),
    Kata(
        "days",
        ("days_between", "day_distance"),
        (
            "def @name@(first, second):\n"
            '    """Number of days between two `YYYY-MM-DD` dates, whichever comes first."""\n'
            "    return abs((date.fromisoformat(second) - date.fromisoformat(first)).days)\n"
        ),
        (
            "abs((date.fromisoformat(second) - date.fromisoformat(first)).days)",
            "(date.fromisoformat(second) - date.fromisoformat(first)).days",
        ),
        lambda rng: {},
        lambda rng, c: [
            ["2024-01-01", "2024-01-31"],
            ["2024-03-01", "2024-02-01"],
            [
                f"2024-{rng.randint(7, 12):02d}-{rng.randint(10, 28)}",
                f"2024-{rng.randint(1, 6):02d}-0{rng.randint(1, 9)}",
            ],
            ["2023-12-31", "2024-01-01"],
        ],
        imports="from datetime import date\n",
    ),
    Kata(
        "truncate",
        ("truncate", "shorten"),
        (
            "def @name@(text, width):\n"
            '    """The text cut to at most `width` characters, ending in "..." when it was cut."""\n'
            '    return text if len(text) <= width else text[: width - 3] + "..."\n'
        ),
        ('text[: width - 3] + "..."', 'text[:width] + "..."'),
        lambda rng: {},
        lambda rng, c: [
            ["hello world", 8],
            ["short", 10],
            [" ".join(rng.choice(WORDS) for _ in range(4)), rng.randint(6, 12)],
            ["exactly10!", 10],
        ],
    ),
]


def _render(kata: Kata, name: str, consts: dict[str, int], buggy: bool) -> str:
    text = kata.source
    if buggy:
        assert kata.bug[0] in text, f"kata {kata.key}: the bug's correct text is not in the source"
        text = text.replace(kata.bug[0], kata.bug[1])
    text = text.replace("@name@", name)
    for key, value in consts.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def _run(source: str, imports: str, name: str, cases: list[list]) -> list:
    namespace: dict = {}
    exec(compile(imports + source, "<kata>", "exec"), namespace)  # noqa: S102 - our own generated code
    return [json.loads(json.dumps(namespace[name](*json.loads(json.dumps(args))))) for args in cases]


PYFIX_TEST = """
import hashlib
import shutil

WORK = "/tmp/forge-pyfix-check"


def test_test_files_unchanged():
    for path, digest in EXPECTED["test_files"].items():
        data = open(path, "rb").read()
        assert hashlib.sha256(data).hexdigest() == digest, f"{path} was modified; fix the package, not the tests"


def same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) < 1e-6
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and sorted(got) == sorted(want) and all(same(got[k], want[k]) for k in want)
    return got == want


def test_functions_behave():
    copy_for_nobody(EXPECTED["project"], WORK)
    for target, cases in EXPECTED["hidden"].items():
        module, name = target.split(":")
        script = (
            "import json, sys\\n"
            "sys.path.insert(0, '.')\\n"
            f"from {module} import {name} as f\\n"
            "print(json.dumps([f(*args) for args in json.loads(sys.argv[1])]))\\n"
        )
        done = run_as_nobody(["python3", "-c", script, json.dumps([args for args, _ in cases])], cwd=WORK)
        assert done.returncode == 0, f"calling {target} failed: {done.stderr[-1500:]}"
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for (args, want), got in zip(cases, results):
            assert same(got, want), f"{name}{tuple(args)} returned {got!r}, expected {want!r}"


def test_visible_suite_passes():
    copy_for_nobody(EXPECTED["project"], WORK)
    for path, digest in EXPECTED["test_files"].items():
        shutil.copy(path, os.path.join(WORK, os.path.basename(path)))
    done = run_as_nobody(["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", *[os.path.basename(p) for p in EXPECTED["test_files"]]], cwd=WORK, timeout=120)
    assert done.returncode == 0, f"the project's tests fail: {done.stdout[-2000:]}"
"""


class PythonBugfix(Family):
    name = "python_bugfix"
    domain = "development_tooling"
    summary = "fix planted bugs in a small Python package until its unit tests (and hidden cases) pass"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        project = f"/home/user/{app}-{rng.choice(['lib', 'utils', 'kit'])}"
        pkg = rng.choice(["toolkit", "helpers", "common", "shared", "corelib"])
        module_names = rng.sample(["text", "numbers", "dates", "ranges", "pricing", "parsing", "stats", "convert"], 2)
        plan = {"easy": [(2, 1)], "medium": [(3, 2)], "hard": [(2, 1), (2, 2)]}[
            difficulty
        ]  # (functions, bugs) per module
        katas = rng.sample(KATAS, sum(n for n, _ in plan))
        files: dict[str, str] = {f"{project}/{pkg}/__init__.py": ""}
        hidden: dict[str, list] = {}
        test_files: dict[str, str] = {}
        fixes: list[tuple[str, str, str, str]] = []  # (path, function, buggy text, correct text)
        # near-miss material: per module, buggy functions with their visible cases; tests rewritten to the bugs
        special_cases: dict[str, list] = {f"{project}/{pkg}/{m}.py": [] for m in module_names}
        tests_matching_bugs: dict[str, str] = {}
        k = 0
        for (n_funcs, n_bugs), module in zip(plan, module_names, strict=False):
            chosen = katas[k : k + n_funcs]
            k += n_funcs
            drawn = []
            for kata in chosen:
                fname = rng.choice(kata.names)
                consts = kata.consts(rng)
                good = _render(kata, fname, consts, buggy=False)
                bad = _render(kata, fname, consts, buggy=True)
                cases = kata.cases(rng, consts)
                want = _run(good, kata.imports, fname, cases)
                got_bad = _run(bad, kata.imports, fname, cases)
                exposing = [j for j, (a, b) in enumerate(zip(want, got_bad, strict=False)) if a != b]
                assert exposing, f"kata {kata.key} has no case exposing its bug"
                visible = sorted({exposing[0], 0 if 0 != exposing[0] else len(cases) - 1})
                drawn.append(
                    (kata, fname, consts, good, bad, cases, want, got_bad, visible, set(exposing) - set(visible))
                )
            # plant bugs first where a hidden case also shows them, so that "for any input" is checked
            order = list(range(n_funcs))
            rng.shuffle(order)
            order.sort(key=lambda i: not drawn[i][9])
            buggy = set(order[:n_bugs])
            sources, imports, tests, bent_tests = [], "", [], []
            for i, (kata, fname, consts, good, bad, cases, want, got_bad, visible, hidden_only) in enumerate(drawn):
                if i in buggy:
                    bug_old = kata.bug[1].replace("@name@", fname)
                    bug_new = kata.bug[0].replace("@name@", fname)
                    for key, value in consts.items():
                        bug_old, bug_new = (
                            bug_old.replace(f"@{key}@", str(value)),
                            bug_new.replace(f"@{key}@", str(value)),
                        )
                    fixes.append((f"{project}/{pkg}/{module}.py", fname, bug_old, bug_new))
                    if hidden_only:
                        special_cases[f"{project}/{pkg}/{module}.py"].append(
                            (fname, [[cases[j], want[j]] for j in visible])
                        )
                else:
                    visible = [0, len(cases) - 1]
                sources.append(bad if i in buggy else good)
                if kata.imports and kata.imports not in imports:
                    imports += kata.imports
                hidden[f"{pkg}.{module}:{fname}"] = [[args, w] for args, w in zip(cases, want, strict=False)]
                for expected_values, suite in ((want, tests), (got_bad if i in buggy else want, bent_tests)):
                    asserts = "".join(
                        f"    assert {fname}({', '.join(repr(a) for a in cases[j])}) == {expected_values[j]!r}\n"
                        for j in visible
                    )
                    suite.append((fname, f"def test_{fname}():\n{asserts}"))
            header = f'"""{module.capitalize()} helpers for {app}."""\n\n' + (imports + "\n\n" if imports else "")
            files[f"{project}/{pkg}/{module}.py"] = header + "\n\n".join(sources)
            test_path = f"{project}/test_{module}.py"
            test_text, bent_text = (
                f"from {pkg}.{module} import {', '.join(n for n, _ in suite)}\n\n\n" + "\n\n".join(t for _, t in suite)
                for suite in (tests, bent_tests)
            )
            test_files[test_path] = test_text
            files[test_path] = test_text
            tests_matching_bugs[test_path] = bent_text
        instruction = (
            (
                f"`{project}` is a small Python project; its unit tests (the `test_*.py` files in that folder, "
                "run with pytest from there) fail.\n\n"
            )
            + bullets(
                [
                    f"fix the bugs in the package `{project}/{pkg}/` (in "
                    + " and ".join(f"`{m}.py`" for m in module_names[: len(plan)])
                    + ") so that the tests pass",
                    (
                        "the docstrings describe what each function must do; the fixed functions must behave that way "
                        "for any input, not only the tested ones"
                    ),
                    "do not modify the test files",
                ]
            )
            + "\n"
        )
        solution = _apply_fixes(fixes)
        near_misses = {
            "edits_tests_to_match": "".join(heredoc(p, t) + "\n" for p, t in tests_matching_bugs.items()),
            "special_cases_tested_inputs": _special_cases(special_cases),
        }
        if len(fixes) > 1:
            near_misses["fixes_one_bug"] = _apply_fixes(fixes[:1])
        expected = {
            "project": project,
            "hidden": hidden,
            "test_files": {p: hashlib.sha256(t.encode()).hexdigest() for p, t in test_files.items()},
        }
        tests = test_module(self.name, expected, PYFIX_TEST, helpers=("nobody",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[project],
            files=files,
            extra={"bugs": len(fixes)},
            near_misses=near_misses,
        )


def _apply_fixes(fixes: list[tuple[str, str, str, str]]) -> str:
    """Edits each buggy function in place (the fix is searched from the function's `def` on)."""
    return python_block(f"""
        fixes = {json.dumps(fixes)}
        for path, function, old, new in fixes:
            text = open(path).read()
            start = text.index(f"def {{function}}(")
            assert old in text[start:], (path, function, old)
            open(path, "w").write(text[:start] + text[start:].replace(old, new, 1))
        """)


def _special_cases(by_module: dict[str, list]) -> str:
    """A near-miss: wrappers that return the tested answers and leave every bug in place for other inputs."""
    parts = []
    for path, functions in by_module.items():
        for name, pairs in functions:
            wrapper = (
                f"\n\n_untested_{name} = {name}\n\n\n"
                f"def {name}(*args):\n"
                f"    for tested, result in {pairs!r}:\n"
                "        if list(args) == tested:\n"
                "            return result\n"
                f"    return _untested_{name}(*args)\n"
            )
            parts.append(f"cat >> {path} <<'FORGE_EOF'\n{wrapper}FORGE_EOF\n")
    return "".join(parts)
