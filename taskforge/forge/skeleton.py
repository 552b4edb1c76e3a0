"""Skeletons: a task's instruction or solution with its data abstracted away.

Two instances of one template with new data (other paths, numbers, names, file contents) have the
same skeleton; two different programs do not. `generate` counts distinct skeletons to measure how
many different programs a task set holds, and caps how many tasks may share one.

What is abstracted, in this order:
- solutions: comment lines, the bodies of data heredocs (`cat > f <<'EOF' ... EOF`), quoted strings;
  instructions: fenced code blocks and `backticked` spans (every path, value and name an
  instruction names is in backticks), quoted strings;
- then in both: dates and times, paths, file names, hex digests, numbers and the words of the
  closed pools in pools.py (people, apps, groups, regions, ...);
- runs of one placeholder (a list of 2 or of 5 paths) become one; repeated identical lines (a
  bullet per file, a command per user) become one; whitespace is collapsed (and instructions are
  lowercased).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache

from taskforge.forge import pools

_DATE = re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?(?:\.\d+)?Z?)?|\b\d\d:\d\d(?::\d\d)?\b")
_PATH = re.compile(r"(?<![\w<])(?:~|\.{1,2})?(?:/[\w.*?@%+=<>{}-]+)+/?|(?<![\w/<])[\w.-]+(?:/[\w.*<>{}-]+)+/?")
_EXTENSIONS = (
    "sh|py|txt|csv|tsv|json|jsonl|log|conf|cfg|ini|md|ya?ml|toml|tar|gz|tgz|bz2|xz|zip|sql|db|sqlite3?|env|"
    "service|timer|jpe?g|png|bin|bak|tmp|old|lock|xml|html?|js|css|out|err|pid|key|pem|crt|dat|rules|list"
)
_FILE = re.compile(rf"(?<![\w<])[\w-]*(?:\.(?:{_EXTENSIONS}))+\b|(?<![\w<])\.[\w-]+rc\b", re.IGNORECASE)
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,64}\b")
_NUMBER = re.compile(r"(?<![\w<])(?:0[oxb][0-9a-f]+|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", re.IGNORECASE)
_SHELL_VALUE = re.compile(r"(?<=[\w-]=)[\w.@%+-]+")  # bash `-v col=units`, `key=value`
_PLACEHOLDER_RUN = re.compile(
    r"(<[A-Z]+>|[\[({](?:<[A-Z]+>|[\s,:])*[\])}])(?:\s*(?:,|\band\b|\bor\b)?\s*\1)+", re.IGNORECASE
)
_SPACES = re.compile(r"[ \t]+")

# Bash heredocs: `cmd <<'EOF'` ... `EOF`. A heredoc fed to cat/tee holds data; any other (python3,
# psql, ...) holds a program and keeps its text.
_HEREDOC = re.compile(r"^(?P<head>.*?)<<-?\s*(?P<q>['\"]?)(?P<tag>\w+)(?P=q)(?P<tail>.*)$")
_DATA_COMMANDS = re.compile(r"^\s*(?:\w+=\S*\s+)*(?:cat|tee)\b")

# Strings: python triple quotes, then double and single quotes on one line. Single quotes need a
# non-word character before them so that apostrophes in prose ("don't", "the app's") stay.
_TRIPLE = re.compile(r"(?:'''|\"\"\")(?:.|\n)*?(?:'''|\"\"\")")
_DOUBLE = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"")
_SINGLE = re.compile(r"(?<!\w)'[^'\n]*'")
_BACKTICKS = re.compile(r"`[^`\n]+`")
_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)


# Pool words that are also ordinary words of instructions or code; they are left alone.
_PROSE_WORDS = {
    "store",
    "online",
    "data",
    "test",
    "search",
    "reports",
    "low",
    "high",
    "medium",
    "info",
    "error",
    "debug",
}


_WORD = re.compile(r"(?<![\w<-])[A-Za-z][\w-]*(?![\w>])")


@cache
def _pool_words() -> frozenset[str]:
    """Every word of the closed pools (names, apps, groups, ...), lowercased."""
    words: set[str] = set()
    for value in vars(pools).values():
        if isinstance(value, list) and all(isinstance(item, str) and "/" not in item for item in value):
            words.update(w.lower() for item in value for w in re.findall(r"[A-Za-z][\w-]*", item) if len(w) > 2)
    return frozenset(words - _PROSE_WORDS)


def _name_or_word(match: re.Match[str]) -> str:
    return "<NAME>" if match.group().lower() in _pool_words() else match.group()


def _abstract_values(text: str) -> str:
    text = _DATE.sub("<DATE>", text)
    text = _PATH.sub("<PATH>", text)
    text = _FILE.sub("<FILE>", text)
    text = _HEX.sub("<HEX>", text)
    text = _NUMBER.sub("<N>", text)
    return _WORD.sub(_name_or_word, text)


def _collapse_runs(text: str) -> str:
    """A list of placeholders, of any length, becomes one; so does a repeated phrase holding one."""
    text = _collapse_lists(text)
    return _collapse_lists("\n".join(_collapse_repeats(line) for line in text.split("\n")))


def _collapse_lists(text: str) -> str:
    while True:
        collapsed = _PLACEHOLDER_RUN.sub(r"\1", text)
        if collapsed == text:
            return text
        text = collapsed


def _collapse_repeats(line: str, longest: int = 4) -> str:
    """`<v> to <v>, <v> to <v> and <v> to <v>` -> `<v> to <v>`: a phrase of up to `longest` words
    holding a placeholder, repeated right after itself, is kept once. Commas and `and` are dropped
    from every line so that lists of one and of many items read alike."""
    tokens = [t for t in re.findall(r"[^\s,]+", line) if t != "and"]
    if line.count("<") < 2:  # a repeat needs two placeholders
        return " ".join(tokens)
    i = 0
    while i < len(tokens):
        for size in range(longest, 0, -1):
            gram = tokens[i : i + size]
            if len(gram) == size and any("<" in t for t in gram) and tokens[i + size : i + 2 * size] == gram:
                end = i + size
                while tokens[end : end + size] == gram:
                    end += size
                del tokens[i + size : end]
                break
        i += 1
    return " ".join(tokens)


def _normalise_lines(text: str) -> str:
    """Whitespace collapsed, blank lines dropped, a line repeated right after itself dropped."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _SPACES.sub(" ", raw).strip()
        if line and (not lines or lines[-1] != line):
            lines.append(line)
    return "\n".join(lines)


def _drop_data_heredocs(script: str) -> str:
    out: list[str] = []
    lines = script.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _HEREDOC.match(line)
        if not match or line.lstrip().startswith("#"):
            out.append(line)
            i += 1
            continue
        tag = match["tag"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == tag), len(lines))
        body = lines[i + 1 : end]
        out.append(f"{match['head']}<<{tag}{match['tail']}")
        out.extend(["<DATA>"] if _DATA_COMMANDS.match(match["head"]) else body)
        out.append(tag)
        i = end + 1
    return "\n".join(out)


def _drop_comments(script: str) -> str:
    """Full-line comments (a shebang stays); inline ones are handled after strings are gone."""
    return "\n".join(line for line in script.splitlines() if not re.match(r"\s*#(?!!)", line))


def solution_skeleton(text: str) -> str:
    """A solution script (bash, with embedded python) with its data abstracted."""
    text = _drop_comments(_drop_data_heredocs(text))
    text = _TRIPLE.sub("<S>", text)
    text = _DOUBLE.sub("<S>", text)
    text = _SINGLE.sub("<S>", text)
    text = re.sub(r"(?m)\s+#\s.*$", "", text)  # inline comments, now that no string holds a '#'
    text = _SHELL_VALUE.sub("<V>", text)
    return _normalise_lines(_collapse_runs(_abstract_values(text)))


def instruction_skeleton(text: str) -> str:
    """An instruction (markdown) with its data abstracted; lowercased."""
    text = _FENCE.sub("<BLOCK>", text)
    text = _BACKTICKS.sub("<V>", text)
    text = _DOUBLE.sub("<S>", text)
    text = _SINGLE.sub("<S>", text)
    text = _abstract_values(text)
    return _normalise_lines(_collapse_runs(text)).lower()


def skeleton_key(skeleton: str) -> str:
    """A short stable digest of a skeleton (what manifest.jsonl records per task)."""
    return hashlib.sha256(skeleton.encode()).hexdigest()[:16]
