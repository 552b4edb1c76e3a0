"""A deterministic corpus of terminal-flavoured text for training the offline tokenizer.

No tokenizer can be downloaded on the machines this project runs on, so the tiny default
policy's byte-level BPE is trained locally on text generated here: shell commands, the output
they typically print (listings, counts, errors, tracebacks), JSON and CSV snippets and file
paths. The text only has to make the merges useful for terminal episodes (paths, flags,
`-rw-r--r--`, JSON punctuation); it does not have to be true.

The same seed always gives the same corpus, so the same tokenizer, so cached checkpoints stay
valid across machines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

DIRS = [
    "/app",
    "/data",
    "/var/log",
    "/etc",
    "/home/user",
    "/tmp",
    "/srv/www",
    "/opt/tools",
    "/usr/local/bin",
    "/workspace",
    "/root",
    "/var/lib/app",
    "/home/alice",
    "/mnt/backup",
]
NAMES = [
    "data",
    "report",
    "config",
    "users",
    "sales",
    "access",
    "error",
    "notes",
    "main",
    "utils",
    "server",
    "events",
    "metrics",
    "inventory",
    "orders",
    "backup",
    "readme",
    "settings",
    "records",
    "output",
    "input",
    "summary",
    "test_app",
    "schema",
    "app",
]
EXTS = [
    ".csv",
    ".json",
    ".log",
    ".txt",
    ".py",
    ".sh",
    ".conf",
    ".yaml",
    ".md",
    ".tar.gz",
    ".ini",
    ".xml",
    ".sql",
    ".toml",
    ".tsv",
]
USERS = ["root", "alice", "bob", "www-data", "deploy", "postgres", "nobody", "carol", "dave"]
COLUMNS = [
    "id",
    "name",
    "email",
    "age",
    "city",
    "price",
    "quantity",
    "status",
    "date",
    "amount",
    "category",
    "score",
    "region",
    "timestamp",
    "level",
    "message",
    "user_id",
]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "error",
    "warning",
    "info",
    "debug",
    "success",
    "failed",
    "timeout",
    "connected",
    "started",
    "stopped",
    "pending",
    "active",
    "done",
]
CITIES = ["Berlin", "Paris", "Tokyo", "Lima", "Oslo", "Austin", "Madrid", "Seoul", "Cairo"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
PERMS = ["-rw-r--r--", "-rwxr-xr-x", "drwxr-xr-x", "-rw-------", "-rw-rw-r--", "drwx------", "lrwxrwxrwx", "-r--r--r--"]
ERRORS = [
    "No such file or directory",
    "Permission denied",
    "Is a directory",
    "command not found",
    "Not a directory",
    "File exists",
    "Directory not empty",
    "Operation not permitted",
    "syntax error near unexpected token `fi'",
]
PY_ERRORS = [
    "KeyError: 'name'",
    "ValueError: invalid literal for int() with base 10: 'abc'",
    "FileNotFoundError: [Errno 2] No such file or directory: 'data.csv'",
    "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
    "ModuleNotFoundError: No module named 'pandas'",
    "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
    "IndexError: list index out of range",
    "ZeroDivisionError: division by zero",
]

# A few hundred everyday words of READMEs, help texts, logs and code, so the BPE learns whole-word
# merges beyond the closed pools above.
WORD_BANK = """
able about above accept access account action active add added address after again against agent
algorithm all allow already also always amount analysis and any api append application apply archive
argument array assert attempt attribute auth author available average back backup base bash batch
because before begin below between binary block body bool boolean branch buffer bug build builder
bundle but byte cache call can cannot case cat change channel char check child chunk class clean
clear client clone close cluster code collect column command comment commit common compile complete
compress compute condition config configure connect connection console constant container content
context continue control copy core correct count create cron current cursor daemon data database date
debug default define delete dependency deploy describe destination detail device dict directory
disable disk display does domain done download driver during each echo edit element else empty enable
encode end engine entry environment equal error event every example except exception exec execute
exist exit expect export expression extension extract factory fail false feature fetch field file
filter final find first fix flag float folder follow for force format found frame from function
generate get given global group handle handler hash have header help hidden history home host http
https image import include index info init initial input insert install instance int integer
interface internal invalid item iterator job join json just key keyword kill label language last
later layer length level library limit line link list listen load local lock log logger long lookup
loop main make manager map mask match maximum memory merge message method minimum missing mode model
module mount move must name network never new next node none normal not note null number object
offset old only open operation option order other output owner package page parameter parent parse
parser pass password patch path pattern permission pipe plugin point pool port position post print
private process profile program project property protocol public pull push query queue quit random
range read reader ready record recursive reference refresh register regular release remote remove
rename replace report repository request required reset resource response restart result return
reverse role root route row rule run running runtime sample save scan schema scope script search
second section secret select send sequence server service session set setting setup shell should
show signal simple single size skip socket sort source space split stack standard start state
statement status stderr stdin stdout step stop storage store stream string struct submit success
support symbol sync syntax system table tag target task template temporary test text thread time
timeout token tool total trace track transform tree true type undefined unique unit unknown update
upgrade upload usage use user using valid validate value variable verbose version view virtual
volume wait warning watch when where which while width window with without word worker write writer
yaml yield zero
""".split()


def _path(rng: random.Random) -> str:
    return f"{rng.choice(DIRS)}/{rng.choice(NAMES)}{rng.choice(EXTS)}"


def _file(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)}{rng.choice(EXTS)}"


def _command(rng: random.Random) -> str:
    p, f, col = _path(rng), _file(rng), rng.randint(1, 6)
    word, user, n = rng.choice(WORDS), rng.choice(USERS), rng.randint(1, 500)
    templates = [
        f"ls -la {rng.choice(DIRS)}",
        f"cat {p}",
        f"head -n {n % 40 + 1} {p}",
        f"tail -f {p}",
        f"wc -l {p}",
        f"grep -c '{word}' {p}",
        f'grep -rn "{word}" {rng.choice(DIRS)}',
        f"awk -F, '{{sum += ${col}}} END {{print sum}}' {p}",
        f"cut -d, -f{col} {p} | sort -u",
        f"sort -t, -k{col} -n {p} | head",
        f"sed -i 's/{word}/{rng.choice(WORDS)}/g' {p}",
        f"find {rng.choice(DIRS)} -name '*{rng.choice(EXTS)}'",
        f"find {rng.choice(DIRS)} -type f -size +{n}k",
        f"chmod {rng.choice(['644', '755', '600', '+x'])} {p}",
        f"chown {user}:{user} {p}",
        f"mkdir -p {rng.choice(DIRS)}/{rng.choice(NAMES)}",
        f"cp {p} {_path(rng)}",
        f"mv {f} {rng.choice(DIRS)}/",
        f"rm -f {p}",
        f"tar -czf {rng.choice(NAMES)}.tar.gz --exclude='*.log' {rng.choice(DIRS)}",
        f"tar -xzf {rng.choice(NAMES)}.tar.gz -C {rng.choice(DIRS)}",
        f"python3 -c \"import json; print(json.load(open('{f}'))['{rng.choice(COLUMNS)}'])\"",
        f"python3 {rng.choice(NAMES)}.py --input {p}",
        f"pip install {rng.choice(['requests', 'pyyaml', 'pytest'])}",
        f"jq '.{rng.choice(COLUMNS)}' {p}",
        f'echo "{word}" >> {p}',
        f"uniq -c {p} | sort -rn | head -{n % 9 + 1}",
        f"du -sh {rng.choice(DIRS)}",
        "df -h",
        "ps aux | grep python",
        f"id {user}",
        "whoami",
        "pwd",
        f"git log --oneline -n {n % 20 + 1}",
        "git status",
        f"diff {p} {_path(rng)}",
        f"xargs -I{{}} cp {{}} {rng.choice(DIRS)} < files.txt",
        f"test -f {p} && echo ok || echo missing",
        f'for f in {rng.choice(DIRS)}/*.log; do wc -l "$f"; done',
        f"export PATH=$PATH:{rng.choice(DIRS)}",
        f"cd {rng.choice(DIRS)} && ls",
        f"stat -c '%a %U' {p}",
        "crontab -l",
        f"sqlite3 app.db 'SELECT count(*) FROM {rng.choice(NAMES)};'",
    ]
    return rng.choice(templates)


def _ls_output(rng: random.Random) -> str:
    lines = [f"total {rng.randint(0, 200)}"]
    for _ in range(rng.randint(1, 8)):
        user = rng.choice(USERS)
        lines.append(
            f"{rng.choice(PERMS)} {rng.randint(1, 4)} {user} {user} {rng.randint(0, 99999):>6} "
            f"{rng.choice(MONTHS)} {rng.randint(1, 28):>2} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {_file(rng)}"
        )
    return "\n".join(lines)


def _csv(rng: random.Random) -> str:
    cols = rng.sample(COLUMNS, rng.randint(2, 5))
    rows = [",".join(cols)]
    for i in range(rng.randint(1, 6)):
        rows.append(",".join(_cell(rng, c, i) for c in cols))
    return "\n".join(rows)


def _cell(rng: random.Random, column: str, row: int) -> str:
    if column in ("id", "user_id", "quantity", "age"):
        return str(rng.randint(1, 999))
    if column in ("price", "amount", "score"):
        return f"{rng.uniform(0, 1000):.2f}"
    if column == "city":
        return rng.choice(CITIES)
    if column == "email":
        return f"{rng.choice(USERS)}{row}@example.com"
    if column in ("date", "timestamp"):
        return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return rng.choice(WORDS)


def _json(rng: random.Random) -> str:
    record = {c: _cell(rng, c, i) for i, c in enumerate(rng.sample(COLUMNS, rng.randint(2, 6)))}
    if rng.random() < 0.3:
        record["tags"] = rng.sample(WORDS, 2)
    if rng.random() < 0.5:
        return json.dumps(record, indent=2)
    return json.dumps(record)


def _error(rng: random.Random) -> str:
    kind = rng.randint(0, 2)
    if kind == 0:
        return (
            f"{rng.choice(['ls', 'cat', 'cd', 'rm', 'cp', 'mkdir'])}: cannot access '{_path(rng)}': "
            f"{rng.choice(ERRORS)}"
        )
    if kind == 1:
        return (
            f'Traceback (most recent call last):\n  File "{_path(rng)}", line {rng.randint(1, 300)}, in <module>\n'
            f"    main()\n{rng.choice(PY_ERRORS)}"
        )
    return f"bash: {rng.choice(NAMES)}: {rng.choice(ERRORS)}"


def _log_lines(rng: random.Random) -> str:
    return "\n".join(
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
        f"{rng.randint(0, 59):02d} [{rng.choice(['INFO', 'WARN', 'ERROR', 'DEBUG'])}] {rng.choice(WORDS)} "
        f"{rng.choice(NAMES)} user={rng.choice(USERS)} took {rng.randint(1, 999)}ms"
        for _ in range(rng.randint(1, 5))
    )


def _counts(rng: random.Random) -> str:
    return "\n".join(
        f"{rng.randint(1, 9999):>7} {_path(rng) if rng.random() < 0.5 else rng.choice(WORDS)}"
        for _ in range(rng.randint(1, 4))
    )


def _pytest(rng: random.Random) -> str:
    passed, failed = rng.randint(0, 30), rng.randint(0, 3)
    head = (
        "============================= test session starts ==============================\n"
        f"collected {passed + failed} items\n"
    )
    body = f"tests/test_{rng.choice(NAMES)}.py {'.' * min(passed, 20)}{'F' * failed}"
    tail = (
        f"========================= {passed} passed, {failed} failed in {rng.uniform(0, 9):.2f}s "
        "========================="
    )
    return head + body + "\n" + tail


def _identifier(rng: random.Random) -> str:
    parts = rng.sample(WORD_BANK, rng.randint(1, 3))
    style = rng.randint(0, 3)
    if style == 0:
        return "_".join(parts)
    if style == 1:
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == 2:
        return "-".join(parts)
    return "".join(p.capitalize() for p in parts)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORD_BANK) for _ in range(rng.randint(4, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ":", "?"])


def _python(rng: random.Random) -> str:
    fn, arg, var = _identifier(rng).replace("-", "_"), rng.choice(WORD_BANK), rng.choice(WORD_BANK)
    return (
        f'def {fn}({arg}, {var}=None):\n    """{_sentence(rng)}"""\n'
        f"    if {var} is None:\n        {var} = {rng.choice(['[]', '{}', '0', repr(rng.choice(WORD_BANK))])}\n"
        f"    for {rng.choice(['item', 'line', 'row', 'key'])} in {arg}:\n"
        f"        {var}.{rng.choice(['append', 'update', 'add', 'extend'])}({arg})\n    return {var}"
    )


def _help_text(rng: random.Random) -> str:
    tool = _identifier(rng).replace("_", "-").lower()
    options = [
        f"  --{_identifier(rng).replace('_', '-').lower()} {rng.choice(['', 'N', 'PATH', 'NAME'])}".rstrip()
        + f"  {_sentence(rng)}"
        for _ in range(rng.randint(1, 4))
    ]
    return (
        f"usage: {tool} [-h] [--verbose] {rng.choice(WORD_BANK).upper()}\n\n{_sentence(rng)}\n\noptions:\n"
        + "\n".join(options)
    )


def _git_log(rng: random.Random) -> str:
    return "\n".join(
        f"{rng.getrandbits(28):07x} {rng.choice(['Fix', 'Add', 'Update', 'Remove', 'Refactor'])} "
        f"{' '.join(rng.sample(WORD_BANK, rng.randint(1, 4)))}"
        for _ in range(rng.randint(1, 5))
    )


def _config(rng: random.Random) -> str:
    keys = rng.sample(WORD_BANK, rng.randint(2, 5))
    style = rng.randint(0, 2)
    values = [rng.choice([str(rng.randint(0, 9000)), "true", "false", rng.choice(WORD_BANK), _path(rng)]) for _ in keys]
    if style == 0:
        return "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
    if style == 1:
        return f"[{rng.choice(WORD_BANK)}]\n" + "\n".join(f'{k} = "{v}"' for k, v in zip(keys, values, strict=True))
    return "\n".join(f"{k.upper()}={v}" for k, v in zip(keys, values, strict=True))


def _pip_list(rng: random.Random) -> str:
    rows = [
        f"{_identifier(rng).replace('_', '-').lower():<24} {rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
        for _ in range(rng.randint(1, 5))
    ]
    return "Package                  Version\n------------------------ -------\n" + "\n".join(rows)


def _snippet(rng: random.Random) -> str:
    makers: list[Callable[[random.Random], str]] = [
        _ls_output,
        _csv,
        _json,
        _error,
        _log_lines,
        _counts,
        _pytest,
        lambda r: "\n".join(_path(r) for _ in range(r.randint(1, 6))),
        lambda r: str(r.randint(0, 100000)),
        lambda r: f"exit code: {r.choice([0, 0, 0, 1, 2, 127])}",
        _python,
        _help_text,
        _git_log,
        _config,
        _pip_list,
        lambda r: " ".join(_sentence(r) for _ in range(r.randint(1, 4))),
    ]
    return rng.choice(makers)(rng)


def _instruction(rng: random.Random) -> str:
    p, col = _path(rng), rng.choice(COLUMNS)
    templates = [
        f"Count the lines in {p} that contain '{rng.choice(WORDS)}' and write the number to /app/answer.txt.",
        f"Sum the {col} column of {p} and print the result.",
        f"Make {p} executable by its owner only.",
        f"Find every file under {rng.choice(DIRS)} larger than {rng.randint(1, 900)}k and list them in {_path(rng)}.",
        f"Replace every '{rng.choice(WORDS)}' with '{rng.choice(WORDS)}' in {p}.",
        f"Archive {rng.choice(DIRS)} into /tmp/{rng.choice(NAMES)}.tar.gz, excluding log files.",
        f"Write the unique values of the {col} column of {p}, sorted, to {_path(rng)}.",
        f"The script {p} fails with an error. Fix it so that the tests pass.",
        f"Create a user {rng.choice(USERS)} and give it ownership of {rng.choice(DIRS)}.",
    ]
    return rng.choice(templates)


def iter_corpus(seed: int = 0, n_snippets: int = 40_000) -> Iterator[str]:
    """Yield `n_snippets` terminal-style documents: a task instruction, or a command often
    followed by its output."""
    rng = random.Random(seed)
    for _ in range(n_snippets):
        if rng.random() < 0.1:
            yield _instruction(rng)
            continue
        command = f"$ {_command(rng)}"
        yield command if rng.random() < 0.2 else f"{command}\n{_snippet(rng)}"
