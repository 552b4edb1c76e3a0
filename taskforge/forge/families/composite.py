"""Composite families: multi-stage tasks over one data bundle (restore it, tidy it, report on it).

A task is a sequence of stages drawn per task (which stages, in what order, each with its own
options and one of several phrasings): e.g. restore `/var/backups/ledger/ledger-data.tar.xz` into
`/srv/data/ledger`, delete its `*.tmp` files, convert the CSVs to Unix line endings, then write
per-region totals of completed orders. The ground truth is composed by running the stages in the
stated order over a model of the bundle (file name -> text, modes), so an order that matters (a
checksum list written before or after the junk is deleted) changes the expected answer; the tests
check each stage's stated result and nothing else. Each stage also knows how to be skipped or
bent, which gives the near-miss solutions.

Three families differ in their stage menus: `restore_and_report` (a restore stage, then fixes and
reports on the data), `tidy_and_verify` (the bundle is in place; fixes interleaved with checksum
lists, archives and counts, whose results depend on the order), `restore_and_ship` (restore, fix,
summarise, then checksum and package). They are drawn `schedule_weight` times per round of
`generate`'s schedule because each composes many different programs (see skeleton.py).

Most medium and hard tasks are goal-style ([metadata] style = "symptom"): the instruction says what
went wrong and what must hold afterwards, and hides what a look around shows: which backup to
restore (several sit in the store; the newest is meant), the junk files' names, that the loader
chokes on carriage returns, the measure column's name. Each such task also holds a decoy, last
year's copy of the data beside the real folder, which must be left as it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import add_group, add_user, python_block, test_module
from taskforge.forge.families.diagnosis import HARD_MAX_TURNS

# The share of tasks per difficulty that are goal-style (see the module docstring); easy tasks stay
# step-by-step specs.
SYMPTOM_SHARE = {"easy": 0.0, "medium": 0.8, "hard": 0.9}

STAGE_DIR = "/tmp/forge-stage"
OLD_STAGE_DIR = "/tmp/forge-stage-old"  # an older backup's files, packed at build time
# key column, its values, value column, (low, high), integer values?
THEMES = [
    ("region", pools.REGIONS, "amount", (5, 400), False),
    ("product", pools.PRODUCTS, "units", (1, 60), True),
    ("team", pools.TEAMS, "hours", (1, 12), False),
    ("warehouse", pools.WAREHOUSES, "stock", (1, 500), True),
    ("category", pools.CATEGORIES, "revenue", (10, 900), False),
    ("channel", pools.CHANNELS, "orders", (1, 40), True),
    ("country", pools.COUNTRIES, "price", (2, 250), False),
]
STATUSES = ["completed", "refunded", "pending"]
JUNK = {"*.tmp": ["scratch{}.tmp", "~lock{}.tmp"], "*.bak": ["{month}.csv.bak"], "*.old": ["{month}.old"]}
ARCHIVE_FORMATS = {  # extension -> (how the setup packs names from the stage dir, how a person unpacks)
    "tar.gz": ("tar -czf {archive} {names}", "tar -xzf {archive} -C {dest}"),
    "tar.bz2": ("tar -cjf {archive} {names}", "tar -xjf {archive} -C {dest}"),
    "tar.xz": ("tar -cJf {archive} {names}", "tar -xJf {archive} -C {dest}"),
    "zip": ("zip -q {archive} {names}", "unzip -q {archive} -d {dest}"),
}
SYMPTOM_PHRASES = {  # what a goal-style task says instead of naming the measure column
    "sum": "the sum of the files' numeric measure",
    "mean": "the mean of the files' numeric measure",
    "max": "the largest value of the files' numeric measure",
    "min": "the smallest value of the files' numeric measure",
    "count": "the number of rows",
}
AGGREGATES = {  # name -> (column header prefix, phrase, python expression over vals)
    "sum": ("total", "the sum of `{value}`", "sum(vals)"),
    "mean": ("mean", "the mean of `{value}`", "sum(vals) / len(vals)"),
    "max": ("max", "the largest `{value}`", "max(vals)"),
    "min": ("min", "the smallest `{value}`", "min(vals)"),
    "count": ("rows", "the number of rows", "len(vals)"),
}


# The same aggregates computed here, for the expected answers.
AGGREGATE_VALUES: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "mean": lambda vals: sum(vals) / len(vals),
    "max": max,
    "min": min,
    "count": len,
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Bundle:
    """The data bundle as the stages see it, and what the task accumulates while they run."""

    app: str
    data_dir: str
    out_dir: str
    key: str
    value: str
    files: dict[str, str]  # name -> text with LF endings (what the CSVs hold once fixed)
    crlf: bool = False  # the CSVs have CRLF endings right now
    junk: list[str] = field(default_factory=list)  # junk file names present right now
    expected: dict = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    out_made: bool = False  # a solution line creating out_dir has been emitted
    symptom: bool = False  # goal-style task: stages state outcomes and hide what exploring shows
    image_files: dict[str, str] = field(default_factory=dict)  # more files for the image (path -> text)

    def csv_names(self) -> list[str]:
        return sorted(n for n in self.files if n.endswith(".csv"))

    def current(self) -> dict[str, str]:
        """Every file of the data folder with its bytes right now (junk included)."""
        crlf = {n: t.replace("\n", "\r\n") if self.crlf and n.endswith(".csv") else t for n, t in self.files.items()}
        return {**crlf, **{n: junk_text(n) for n in self.junk}}

    def rows(self) -> list[dict[str, str]]:
        return [row for n in self.csv_names() for row in csv.DictReader(io.StringIO(self.files[n]))]

    def ensure_out_dir(self, lines: list[str]) -> None:
        if not self.out_made:
            lines.insert(0, f"mkdir -p {self.out_dir}")
            self.out_made = True


def junk_text(name: str) -> str:
    return f"leftover {name}\n"


@dataclass
class Step:
    """One stage as drawn for one task: its text, its commands and how it can be skipped or bent."""

    kind: str
    text: str
    solution: list[str]
    bends: dict[str, list[str]] = field(default_factory=dict)  # near-miss name -> replacement commands


# ------------------------------------------------------------------------------------------
# Stages. Each draws its options, updates the bundle model (so later stages see its effect) and
# returns a Step. `first` is True when the stage is the task's first.


def stage_restore(rng: random.Random, b: Bundle) -> Step:
    fmt = rng.choice(sorted(ARCHIVE_FORMATS))
    store = rng.choice([f"/var/backups/{b.app}", f"/srv/backups/{b.app}", f"/backup/{b.app}"])
    archive = f"{store}/{b.app}-{rng.choice(['data', 'export', 'bundle'])}.{fmt}"
    b.expected["restored"] = True
    if b.symptom:
        return restore_newest(rng, b, store, archive.removesuffix(f".{fmt}"), fmt)
    pack, unpack = ARCHIVE_FORMATS[fmt]
    names = " ".join(sorted(b.current()))
    b.setup += [
        f"mkdir -p {store} {STAGE_DIR}",
        f"cd {STAGE_DIR} && {pack.format(archive=archive, names=names)} && cd / && rm -rf {STAGE_DIR}",
    ]
    text = rng.choice(
        [
            f"restore the archive `{archive}` into `{b.data_dir}` (its files sit at the top of the archive)",
            f"unpack `{archive}` so that its files land directly in `{b.data_dir}` (create the folder)",
            f"the bundle only exists as `{archive}`: extract it into `{b.data_dir}`, files at the top level",
        ]
    )
    return Step("restore", text, [f"mkdir -p {b.data_dir}", unpack.format(archive=archive, dest=b.data_dir)])


BACKUP_DATES = [("2025-03-02", "2024-11-30"), ("2025-06-01", "2025-02-28"), ("2025-09-14", "2025-05-31")]


def restore_newest(rng: random.Random, b: Bundle, store: str, stem: str, fmt: str) -> Step:
    """The goal-style restore: `store` holds the newest backup and an older one whose CSVs lack their
    last row (file names and modification times both date them); only the store is named."""
    old_fmt = rng.choice(sorted(ARCHIVE_FORMATS))
    new_date, old_date = rng.choice(BACKUP_DATES)
    newest, older = f"{stem}-{new_date}.{fmt}", f"{stem}-{old_date}.{old_fmt}"
    stale = {name: stale_text(text) if name.endswith(".csv") else text for name, text in b.files.items()}
    stale.update({name: junk_text(name) for name in b.junk})
    b.image_files.update({f"{OLD_STAGE_DIR}/{name}": text for name, text in stale.items()})
    b.setup += [
        f"mkdir -p {store} {STAGE_DIR}",
        *([f"sed -i 's/$/\\r/' {OLD_STAGE_DIR}/*.csv"] if b.crlf else []),
        pack_line(STAGE_DIR, newest, fmt, sorted(b.current())),
        pack_line(OLD_STAGE_DIR, older, old_fmt, sorted(stale)),
        f"touch -d '{old_date} 02:00' {older}",
        f"touch -d '{new_date} 02:00' {newest}",
    ]
    text = rng.choice(
        [
            f"the data only survives as backups in `{store}`: restore the most recent one into `{b.data_dir}` "
            "(its files at the top level of the folder)",
            f"bring back the newest backup kept in `{store}`, its files directly in `{b.data_dir}`",
        ]
    )
    restore = [f"mkdir -p {b.data_dir}", ARCHIVE_FORMATS[fmt][1].format(archive=newest, dest=b.data_dir)]
    older_restore = [f"mkdir -p {b.data_dir}", ARCHIVE_FORMATS[old_fmt][1].format(archive=older, dest=b.data_dir)]
    return Step("restore", text, [f"ls -lt {store}", *restore], {"restores_an_older_backup": older_restore})


def pack_line(stage_dir: str, archive: str, fmt: str, names: list[str]) -> str:
    """A setup line that packs `names` of stage_dir into archive, then removes stage_dir."""
    pack = ARCHIVE_FORMATS[fmt][0].format(archive=archive, names=" ".join(names))
    return f"cd {stage_dir} && {pack} && cd / && rm -rf {stage_dir}"


def stale_text(csv_text: str) -> str:
    """An older export of a CSV: its last data row not there yet."""
    return "".join(csv_text.splitlines(keepends=True)[:-1])


def stage_decompress(rng: random.Random, b: Bundle) -> Step:
    gz = [f"{n}.gz" for n in b.csv_names()]
    b.setup += [f"gzip -n {b.data_dir}/{n}" for n in b.csv_names()]
    b.expected["restored"] = True
    b.expected["no_gz"] = gz
    if b.symptom:
        text = rng.choice(
            [
                f"the loader only reads plain `*.csv` files, but the ones in `{b.data_dir}` arrived compressed: "
                "make them plain CSV files again, with no compressed copies left",
                f"the CSV exports in `{b.data_dir}` came in compressed; the import wants them uncompressed, "
                "in place, and nothing compressed left over",
            ]
        )
        return Step("decompress", text, [f"ls {b.data_dir}", f"gunzip {b.data_dir}/*.csv.gz"])
    text = rng.choice(
        [
            f"the CSV files in `{b.data_dir}` arrived gzip-compressed (`*.csv.gz`): decompress them in place, "
            "leaving the `.csv` files and no `.gz` files",
            f"decompress every `*.csv.gz` file in `{b.data_dir}` in place (the `.gz` files must be gone afterwards)",
        ]
    )
    return Step("decompress", text, [f"gunzip {b.data_dir}/*.csv.gz"])


def stage_junk(rng: random.Random, b: Bundle) -> Step:
    patterns = b.expected["junk_patterns"]  # drawn with the initial state (the junk exists from the start)
    listed = ", ".join(f"`{p}`" for p in patterns)
    text = rng.choice(
        [
            f"delete the leftover files matching {listed} from `{b.data_dir}` (and nothing else)",
            f"remove every {listed} file in `{b.data_dir}`; keep all other files",
            f"clean `{b.data_dir}` of stray {listed} files, leaving the rest untouched",
        ]
    )
    b.junk = []
    if b.symptom:  # the names are for the agent to find: every junk file is something other than a *.csv
        text = rng.choice(
            [
                f"the failed job left scratch and backup copies in `{b.data_dir}`: only the monthly `*.csv` "
                "files may stay in that folder",
                f"clear out the leftovers in `{b.data_dir}`; the monthly `*.csv` exports are all that belongs there",
            ]
        )
        command = f"find {b.data_dir} -type f ! -name '*.csv' -delete"
        # A sweep over the parent folder also empties the decoy copy beside the data (see decoy_copy).
        parent = b.data_dir.rsplit("/", 1)[0]
        bends = {"cleans_the_decoy_too": [f"find {parent} -type f ! -name '*.csv' -delete"]}
        if len(patterns) > 1:
            bends["deletes_one_pattern_only"] = [f"find {b.data_dir} -type f -name '{patterns[0]}' -delete"]
        return Step("junk", text, [f"ls -la {b.data_dir}", command], bends)
    if len(patterns) == 1:
        return Step("junk", text, [f"find {b.data_dir} -type f -name '{patterns[0]}' -delete"])
    command = f"find {b.data_dir} -type f \\( -name '{patterns[0]}' -o -name '{patterns[1]}' \\) -delete"
    bend = [f"find {b.data_dir} -type f -name '{patterns[0]}' -delete"]
    return Step("junk", text, [command], {"deletes_one_pattern_only": bend})


def draw_junk(rng: random.Random, b: Bundle) -> None:
    patterns = sorted(rng.sample(sorted(JUNK), rng.choice([1, 2])))
    months = [n.removesuffix(".csv") for n in b.csv_names()]
    b.junk = sorted({t.format(rng.randint(1, 9), month=rng.choice(months)) for p in patterns for t in JUNK[p]})
    b.expected["junk_patterns"] = patterns


def stage_crlf(rng: random.Random, b: Bundle) -> Step:
    b.crlf = False
    b.expected["lf_checked"] = True
    if b.symptom:
        text = rng.choice(
            [
                f"the loader rejects the CSV files in `{b.data_dir}` with `unexpected character at end of line`: "
                "fix the files so that it accepts them, without changing any value",
                f"every import of `{b.data_dir}/*.csv` fails with `malformed line ending`; repair the files "
                "(their values must stay as they are)",
            ]
        )
        return Step("crlf", text, [f"head -n 2 {b.data_dir}/*.csv | cat -A", f"sed -i 's/\r$//' {b.data_dir}/*.csv"])
    text = rng.choice(
        [
            f"the CSV files in `{b.data_dir}` have Windows (CRLF) line endings: convert them to Unix (LF) endings",
            f"strip the carriage returns from the line endings of every `*.csv` file in `{b.data_dir}`",
        ]
    )
    return Step("crlf", text, [f"sed -i 's/\\r$//' {b.data_dir}/*.csv"])


def stage_perms(rng: random.Random, b: Bundle) -> Step:
    file_mode = rng.choice(["640", "644", "600", "664"])
    # A restored folder starts as mkdir makes it (755): then 755 would not show a skipped chmod.
    dir_mode = rng.choice(["750", "700", "2750", "2770"] + ([] if b.expected.get("restored") else ["755"]))
    parts = [f"every file in `{b.data_dir}` gets mode `{file_mode}`", f"the folder itself mode `{dir_mode}`"]
    lines = [f"find {b.data_dir} -type f -exec chmod {file_mode} {{}} +", f"chmod {dir_mode} {b.data_dir}"]
    b.expected["file_mode"] = int(file_mode, 8)
    b.expected["dir_mode"] = int(dir_mode, 8)
    owner = rng.choice([None, "user", "group"])
    bends = {"leaves_folder_mode": lines[:1]}
    if owner:
        user, group = rng.choice(pools.SERVICE_ACCOUNTS), rng.choice(pools.GROUPS)
        b.setup.insert(0, add_group(group))
        if owner == "user":
            b.setup.insert(1, add_user(user, system=True))
            parts.append(f"the folder and its files owned by user `{user}` and group `{group}`")
            lines.insert(0, f"chown -R {user}:{group} {b.data_dir}")
            b.expected["owner"] = f"{user}:{group}"
        else:
            parts.append(f"the folder and its files belong to group `{group}` (owner unchanged)")
            lines.insert(0, f"chgrp -R {group} {b.data_dir}")
            b.expected["group"] = group
    intro = rng.choice(["set the permissions: ", "fix the access rights: ", "apply this policy to the bundle: "])
    return Step("perms", intro + "; ".join(parts), lines, bends)


def stage_aggregate(rng: random.Random, b: Bundle) -> Step:
    agg = rng.choice(sorted(AGGREGATES))
    prefix, phrase, expr = AGGREGATES[agg]
    only = rng.random() < 0.6
    fmt = rng.choice(["csv", "json"])
    by_value = fmt == "csv" and rng.random() < 0.5
    # A goal-style task does not name the measure column (the files' one numeric column besides id).
    column = "rows" if agg == "count" else prefix if b.symptom else f"{prefix}_{b.value}"
    path = f"{b.out_dir}/{b.key}_{prefix}.{fmt}"
    groups: dict[str, list[float]] = {}
    for row in b.rows():
        if not only or row["status"] == "completed":
            groups.setdefault(row[b.key], []).append(float(row[b.value]))
    result = {k: round(AGGREGATE_VALUES[agg](v), 2) for k, v in groups.items()}
    rows = sorted(result.items(), key=(lambda kv: (-kv[1], kv[0])) if by_value else (lambda kv: kv[0]))
    where = " (only rows whose `status` is `completed`)" if only else " (every row, whatever its `status`)"
    what = phrase.format(value=b.value) if not b.symptom else SYMPTOM_PHRASES[agg]
    rounding = "" if agg == "count" else ", rounded to 2 decimals"
    if fmt == "csv":
        order = "largest first, ties by key" if by_value else f"sorted by `{b.key}`"
        spec = (
            f"write `{path}` with the header `{b.key},{column}` and one row per `{b.key}` of all the CSV files: "
            f"{what}{where}{rounding}; rows {order}"
        )
    else:
        spec = f"write `{path}`: a JSON object mapping each `{b.key}` of all the CSV files to {what}{where}{rounding}"
    text = rng.choice([spec, spec.replace("write", "report into", 1), spec.replace("write", "produce", 1)])
    code = aggregate_code(b, expr, only, "json" if fmt == "json" else "")
    if fmt == "csv":
        key = "lambda item: (-item[1], item[0])" if by_value else "lambda item: item[0]"
        code += [
            f'with open("{path}", "w", newline="") as handle:',
            "    writer = csv.writer(handle)",
            f'    writer.writerow(["{b.key}", "{column}"])',
            f"    writer.writerows(sorted(result.items(), key={key}))",
        ]
    else:
        code += [f'json.dump(result, open("{path}", "w"), indent=2)']
    lines = [python_block("\n".join(code))]
    b.ensure_out_dir(lines)
    if b.symptom:  # the measure column is not named: look at a file first
        lines.insert(0, f"head -n 3 {b.data_dir}/{b.csv_names()[0]}")
    bends = {}
    if only:
        loose = aggregate_code(b, expr, False, "json" if fmt == "json" else "") + code[-4 if fmt == "csv" else -1 :]
        bends["counts_every_status"] = [f"mkdir -p {b.out_dir}", python_block("\n".join(loose))]
    b.outputs.append(path)
    b.expected.setdefault("aggregates", []).append(
        {"path": path, "format": fmt, "header": [b.key, column], "rows": [list(r) for r in rows], "ordered": True}
    )
    return Step("aggregate", text, lines, bends)


def aggregate_code(b: Bundle, expr: str, only: bool, extra_import: str) -> list[str]:
    """Python lines that read every CSV of the bundle into `result` (key -> aggregate, 2 decimals)."""
    append = f'groups.setdefault(row["{b.key}"], []).append(float(row["{b.value}"]))'
    body = (
        ['            if row["status"] == "completed":', "                " + append]
        if only
        else ["            " + append]
    )
    return [
        "import csv, glob" + (f", {extra_import}" if extra_import else ""),
        "groups = {}",
        f'for path in sorted(glob.glob("{b.data_dir}/*.csv")):',
        '    with open(path, newline="") as handle:',
        "        for row in csv.DictReader(handle):",
        *body,
        f"result = {{key: round({expr}, 2) for key, vals in groups.items()}}",
    ]


def stage_rowcount(rng: random.Random, b: Bundle) -> Step:
    path = f"{b.out_dir}/{rng.choice(['row_counts', 'rows', 'line_counts'])}.txt"
    counts = {n: len(list(csv.DictReader(io.StringIO(b.files[n])))) for n in b.csv_names()}
    b.outputs.append(path)
    b.expected["rowcount"] = {"path": path, "counts": counts}
    text = rng.choice(
        [
            f"write `{path}`: for each CSV file in `{b.data_dir}`, a line `<file name> <number of data rows>` "
            "(the header line does not count)",
            f"count the data rows (header excluded) of each `*.csv` file in `{b.data_dir}` into `{path}`, "
            "one line `<file name> <count>` per file",
        ]
    )
    lines = [
        f"for f in {b.data_dir}/*.csv; do",
        '  printf \'%s %s\\n\' "$(basename "$f")" "$(tail -n +2 "$f" | wc -l)"',
        f"done > {path}",
    ]
    b.ensure_out_dir(lines)
    return Step("rowcount", text, lines)


def stage_merge(rng: random.Random, b: Bundle) -> Step:
    path = f"{b.out_dir}/{rng.choice(['all', 'combined', 'merged'])}.csv"
    names = b.csv_names()
    header = b.files[names[0]].splitlines()[0].split(",")
    rows = [line.split(",") for n in names for line in b.files[n].splitlines()[1:] if line]
    b.outputs.append(path)
    b.expected["merge"] = {"path": path, "header": header, "rows": rows}
    text = rng.choice(
        [
            f"combine the CSV files of `{b.data_dir}` into `{path}`: one header line, then every data row, "
            "files in name order",
            f"write `{path}`: all the rows of the `*.csv` files in `{b.data_dir}` (taken in file-name order) "
            "under a single header line",
        ]
    )
    first = f"{b.data_dir}/{names[0]}"
    lines = [f'{{ head -n 1 {first}; for f in {b.data_dir}/*.csv; do tail -n +2 "$f"; done; }} > {path}']
    b.ensure_out_dir(lines)
    return Step("merge", text, lines)


def stage_checksums(rng: random.Random, b: Bundle) -> Step:
    path = f"{b.out_dir}/{rng.choice(['SHA256SUMS', 'checksums.txt', 'manifest.sha256'])}"
    snapshot = {n: sha(t) for n, t in b.current().items()}
    b.outputs.append(path)
    b.expected["checksums"] = {"path": path, "digests": snapshot}
    text = rng.choice(
        [
            f"write `{path}` in the format of `sha256sum`: one line `<sha256>  <file name>` per file in "
            f"`{b.data_dir}` as it is at this step",
            f"record the SHA-256 of every file in `{b.data_dir}` at this point in `{path}` "
            "(`sha256sum` output, bare file names)",
        ]
    )
    lines = [f"(cd {b.data_dir} && sha256sum -- *) > {path}"]
    b.ensure_out_dir(lines)
    return Step("checksums", text, lines)


def stage_package(rng: random.Random, b: Bundle) -> Step:
    path = f"{b.out_dir}/{b.app}-{rng.choice(['bundle', 'snapshot', 'handover'])}.tar.gz"
    folder = b.data_dir.rsplit("/", 1)[1]
    parent = b.data_dir.rsplit("/", 1)[0]
    snapshot = {f"{folder}/{n}": sha(t) for n, t in b.current().items()}
    b.outputs.append(path)
    b.expected["package"] = {"path": path, "members": snapshot}
    text = rng.choice(
        [
            f"pack `{b.data_dir}` as it is at this step into the gzip-compressed tar archive `{path}` "
            f"(member paths start with `{folder}/`)",
            f"archive the folder `{b.data_dir}` at this point as `{path}` (tar + gzip, members under `{folder}/`)",
        ]
    )
    lines = [f"tar -czf {path} -C {parent} {folder}"]
    b.ensure_out_dir(lines)
    return Step("package", text, lines)


StageFn = Callable[[random.Random, Bundle], Step]
SOURCES: dict[str, StageFn] = {"restore": stage_restore, "decompress": stage_decompress}
FIXES: dict[str, StageFn] = {"junk": stage_junk, "crlf": stage_crlf, "perms": stage_perms}
REPORTS: dict[str, StageFn] = {
    "aggregate": stage_aggregate,
    "rowcount": stage_rowcount,
    "merge": stage_merge,
    "checksums": stage_checksums,
    "package": stage_package,
}


# ------------------------------------------------------------------------------------------
# Tests (one function per stated result; the composed task includes those its stages need)

TEST_SNIPPETS = {
    "restored": """
def test_data_files_restored():
    for name, digest in EXPECTED["final"].items():
        path = os.path.join(EXPECTED["data_dir"], name)
        data = pathlib.Path(path).read_bytes() if os.path.isfile(path) else None
        assert data is not None, f"{path} does not exist"
        assert hashlib.sha256(data).hexdigest() == digest, f"{path}: content differs from the expected file"
""",
    "no_gz": """
def test_no_compressed_files_left():
    left = [n for n in EXPECTED["no_gz"] if os.path.exists(os.path.join(EXPECTED["data_dir"], n))]
    assert not left, f"still compressed: {left}"
""",
    "junk_patterns": """
def test_junk_deleted_and_the_rest_kept():
    names = os.listdir(EXPECTED["data_dir"])
    junk = [n for n in names if any(fnmatch.fnmatch(n, p) for p in EXPECTED["junk_patterns"])]
    assert not junk, f"left over: {junk}"
    missing = [n for n in EXPECTED["final"] if n not in names]
    assert not missing, f"deleted although they match no pattern: {missing}"
""",
    "lf_checked": """
def test_unix_line_endings():
    for name in EXPECTED["final"]:
        if name.endswith(".csv"):
            data = pathlib.Path(EXPECTED["data_dir"], name).read_bytes()
            assert b"\\r" not in data, f"{name} still has carriage returns"
            assert hashlib.sha256(data).hexdigest() == EXPECTED["final"][name], f"{name}: rows changed"
""",
    "file_mode": """
def test_modes():
    folder = EXPECTED["data_dir"]
    assert mode_of(folder) == EXPECTED["dir_mode"], f"{folder}: mode {mode_of(folder):o}"
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        assert mode_of(path) == EXPECTED["file_mode"], f"{path}: mode {mode_of(path):o}"
""",
    "owner": """
def test_owner():
    folder = EXPECTED["data_dir"]
    for path in [folder, *[os.path.join(folder, n) for n in os.listdir(folder)]]:
        assert owner_of(path) == EXPECTED["owner"], f"{path}: owned by {owner_of(path)}"
""",
    "group": """
def test_group():
    folder = EXPECTED["data_dir"]
    for path in [folder, *[os.path.join(folder, n) for n in os.listdir(folder)]]:
        assert owner_of(path).split(":")[1] == EXPECTED["group"], f"{path}: group {owner_of(path)}"
""",
    "aggregates": r"""
def two_decimals(value):
    assert re.fullmatch(r"-?\d+(\.\d{1,2})?", str(value).strip()), f"{value!r} is not rounded to 2 decimals"


def test_aggregates():
    for want in EXPECTED["aggregates"]:
        if want["format"] == "csv":
            check_csv_table(want["path"], want["header"], want["rows"], {want["header"][1]}, ordered=True)
            for row in csv_rows(want["path"])[1:]:
                two_decimals(row[1])
        else:
            got = load_json(want["path"])
            assert isinstance(got, dict), f"{want['path']} must hold a JSON object"
            assert sorted(got) == sorted(k for k, _ in want["rows"]), f"{want['path']}: keys {sorted(got)}"
            for key, value in want["rows"]:
                assert close(got[key], value), f"{want['path']}: {key} = {got[key]}, expected {value}"
                two_decimals(got[key])
""",
    "untouched": """
def test_decoy_copy_left_alone():
    changed = [p for p, want in EXPECTED["untouched"].items()
               if not os.path.isfile(p) or hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest() != want]
    assert not changed, f"changed or deleted, though the task says to leave them: {changed}"
""",
    "rowcount": """
def test_row_counts():
    want = EXPECTED["rowcount"]
    got = dict(line.split() for line in content_lines(want["path"]))
    assert {k: int(v) for k, v in got.items()} == want["counts"], f"{want['path']}: {got}"
""",
    "merge": """
def test_merged_csv():
    want = EXPECTED["merge"]
    rows = csv_rows(want["path"])
    assert rows[0] == want["header"], f"{want['path']}: header {rows[0]}"
    assert rows[1:] == want["rows"], f"{want['path']}: {len(rows) - 1} data rows, not the expected ones in order"
""",
    "checksums": """
def test_checksums():
    want = EXPECTED["checksums"]
    got = {}
    for line in content_lines(want["path"]):
        digest, _, name = line.partition("  ")
        got[name.strip().lstrip("*")] = digest.strip()
    assert got == want["digests"], f"{want['path']}: {got} != {want['digests']}"
""",
    "package": """
import tarfile


def test_package():
    want = EXPECTED["package"]
    assert os.path.isfile(want["path"]), f"{want['path']} does not exist"
    with tarfile.open(want["path"], "r:gz") as tar:
        got = {m.name.removeprefix("./"): hashlib.sha256(tar.extractfile(m).read()).hexdigest()
               for m in tar.getmembers() if m.isfile()}
    assert got == want["members"], f"{want['path']}: members {sorted(got)} != {sorted(want['members'])}"
""",
}


# ------------------------------------------------------------------------------------------
# Composition


@dataclass(frozen=True)
class Menu:
    """Which stages a family composes: a source stage or none, the fixes and reports to draw from."""

    sources: tuple[str, ...]
    fixes: tuple[str, ...]
    reports: tuple[str, ...]
    min_reports: int = 1


STAGE_COUNTS = {"easy": (2, 2), "medium": (3, 3), "hard": (4, 5)}


def draw_plan(rng: random.Random, menu: Menu, difficulty: str) -> list[str]:
    """Stage kinds in order: the source first (if the menu has one), then fixes and reports interleaved."""
    low, high = STAGE_COUNTS[difficulty]
    total = rng.randint(low, high)
    plan = [rng.choice(menu.sources)] if menu.sources else []
    rest = total - len(plan)
    n_reports = rng.randint(menu.min_reports, min(rest, len(menu.reports)))
    n_fixes = min(rest - n_reports, len(menu.fixes))
    if not menu.sources and n_fixes == 0:  # a bundle already in place needs something to fix
        n_fixes, n_reports = 1, rest - 1
    chosen = rng.sample(list(menu.fixes), n_fixes) + rng.sample(list(menu.reports), n_reports)
    rng.shuffle(chosen)
    return plan + chosen


def make_bundle(rng: random.Random) -> Bundle:
    app = rng.choice(pools.APPS)
    key, values, value, (low, high), integer = rng.choice(THEMES)
    keys = rng.sample(values, min(len(values), rng.randint(3, 5)))
    months = sorted(rng.sample(pools.MONTHS, rng.randint(2, 4)))
    files = {}
    for month in months:
        rows = []
        for i in range(rng.randint(4, 9)):
            number = rng.randint(low, high) if integer else round(rng.uniform(low, high), 2)
            rows.append([f"{month}-{i + 1:02d}", rng.choice(keys), number, rng.choice(STATUSES)])
        # One row per file that is not completed and tops its key: a filter that is skipped shows.
        rows.append([f"{month}-28", rows[0][1], high * 3, rng.choice(STATUSES[1:])])
        rows.append([f"{month}-29", rows[0][1], 0 if integer else 0.5, rng.choice(STATUSES[1:])])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([["id", key, value, "status"], *rows])
        files[f"{month}.csv"] = text.getvalue()
    return Bundle(
        app=app,
        data_dir=f"{rng.choice(pools.DATA_ROOTS)}/{app}",
        out_dir=rng.choice(pools.OUT_DIRS),
        key=key,
        value=value,
        files=files,
    )


# Goal-style openings: what went wrong, then the outcomes wanted (the stages), in order.
SYMPTOM_INTROS = [
    "The `{app}` dashboard has shown nothing since its nightly data job crashed halfway. Nobody wrote down "
    "what the job does; this is what it must leave behind, in this order (later steps see the effect of "
    "earlier ones):",
    "{person} reports that the `{app}` reports are stale: the job that prepares their data stopped working "
    "last week. Get the data into the state the reports need, step by step and in this order:",
    "The `{app}` data hand-over is overdue and its script is gone. What the script used to achieve, in order "
    "(each step sees the effect of the ones before it):",
]
DECOY_NOTES = [
    "`{decoy}` is last year's copy of the data, kept for the auditors: leave it exactly as it is.",
    "Do not touch `{decoy}`: it is an older copy that another team still reads.",
]
INTROS = [
    "The `{app}` team hands over a data bundle. Do these steps in this order:",
    "Prepare the `{app}` data bundle in `{data_dir}`. Work through the steps below, in order (later steps see "
    "the effect of earlier ones):",
    "A job that processes `{app}` data failed halfway; redo its steps by hand, in this order:",
]


def initial_setup(b: Bundle, plan: list[str], folder: str) -> tuple[dict[str, str], list[str]]:
    """The bundle's files before any stage runs, placed in `folder`: image files and setup lines."""
    files = {f"{folder}/{name}": text for name, text in b.files.items()}
    files.update({f"{folder}/{name}": junk_text(name) for name in b.junk})
    setup = []
    if b.crlf:
        setup.append(f"sed -i 's/$/\\r/' {folder}/*.csv")
    if "perms" in plan:  # modes no policy of the permissions stage asks for
        setup += [f"chmod 666 {folder}/*", f"chmod 777 {folder}"]
    return files, setup


def decoy_copy(rng: random.Random, b: Bundle) -> tuple[str, dict[str, str], dict[str, str]]:
    """Last year's copy of the data beside the real folder, in the state the task starts from (stale
    rows, a junk file, CRLF endings when the real files have them): (folder, image files, final
    bytes' digests)."""
    folder = f"{b.data_dir}-{rng.choice(['2023', '2024', 'old', 'archive'])}"
    texts = {name: stale_text(text) for name, text in b.files.items()}
    texts[f"scratch{rng.randint(1, 9)}.tmp"] = junk_text("scratch")
    final = {
        f"{folder}/{name}": sha(text.replace("\n", "\r\n") if b.crlf and name.endswith(".csv") else text)
        for name, text in texts.items()
    }
    return folder, {f"{folder}/{name}": text for name, text in texts.items()}, final


def compose(rng: random.Random, menu: Menu, difficulty: str, family: str) -> Draft:
    b = make_bundle(rng)
    plan = draw_plan(rng, menu, difficulty)
    b.symptom = difficulty != "easy" and rng.random() < SYMPTOM_SHARE[difficulty]
    # The initial state: junk present when a stage deletes it, CRLF endings when a stage fixes them.
    b.crlf = "crlf" in plan
    if "junk" in plan:
        draw_junk(rng, b)
    source = plan[0] if plan[0] in SOURCES else None
    files, setup = initial_setup(b, plan, STAGE_DIR if source == "restore" else b.data_dir)
    if b.symptom:
        decoy, decoy_files, b.expected["untouched"] = decoy_copy(rng, b)
        files.update(decoy_files)
        if b.crlf:
            setup.append(f"sed -i 's/$/\\r/' {decoy}/*.csv")
    steps = [{**SOURCES, **FIXES, **REPORTS}[kind](rng, b) for kind in plan]
    files.update(b.image_files)
    b.setup = setup + b.setup  # the stages' setup (archive packing, users) runs after the files are placed
    b.expected["data_dir"] = b.data_dir
    b.expected["final"] = {name: sha(text) for name, text in sorted(b.current().items())}

    if b.symptom:
        intro = rng.choice(SYMPTOM_INTROS).format(app=b.app, person=rng.choice(pools.PEOPLE))
    else:
        intro = rng.choice(INTROS).format(app=b.app, data_dir=b.data_dir)
    numbered = rng.random() < 0.5
    lines = [f"{i}. {s.text}" if numbered else f"- {s.text}" for i, s in enumerate(steps, 1)]
    instruction = intro + "\n\n" + "\n".join(lines) + "\n"
    if b.symptom:
        instruction += "\n" + rng.choice(DECOY_NOTES).format(decoy=decoy) + "\n"

    snippets = [name for name in TEST_SNIPPETS if name in b.expected]
    helpers = ["base", "csv", "json", "stat"]
    body = "import fnmatch\nimport hashlib\n" + "\n".join(TEST_SNIPPETS[name] for name in snippets)
    tests = test_module(family, b.expected, body, helpers=helpers)
    solution = "\n".join(line for step in steps for line in step.solution) + "\n"
    return Draft(
        instruction=instruction,
        tests=tests,
        solution=solution,
        outputs=b.outputs,
        files=files,
        setup=b.setup,
        extra=task_metadata(plan, difficulty, b.symptom),
        near_misses=near_misses(steps),
    )


def task_metadata(plan: list[str], difficulty: str, symptom: bool) -> dict[str, str | int | float | bool]:
    """[metadata] of a composite task: its stages, its style and (goal-style hard) its turn cap."""
    extra: dict[str, str | int | float | bool] = {"stages": " ".join(plan), "style": "symptom" if symptom else "spec"}
    if symptom and difficulty == "hard":
        extra["max_turns"] = HARD_MAX_TURNS  # looking around before each step takes turns
    return extra


def near_misses(steps: list[Step], most: int = 3) -> dict[str, str]:
    """Bent stages first, then skipped ones from the last stage back (the source stage last)."""
    found: dict[str, str] = {}
    for i, step in enumerate(steps):
        for name, lines in step.bends.items():
            found[name] = script([*steps[:i], Step(step.kind, "", lines), *steps[i + 1 :]])
    for i in sorted(range(len(steps)), key=lambda i: (steps[i].kind in SOURCES, -i)):
        found.setdefault(f"skips_{steps[i].kind}", script(steps[:i] + steps[i + 1 :]))
    return dict(list(found.items())[:most])


def script(steps: list[Step]) -> str:
    return "\n".join(line for step in steps for line in step.solution) + "\n"


class CompositeFamily(Family):
    """A family that composes stages from a menu (see the module docstring)."""

    menu: ClassVar[Menu]
    schedule_weight: ClassVar[int] = 6

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        return compose(rng, self.menu, difficulty, self.name)


class RestoreAndReport(CompositeFamily):
    name = "restore_and_report"
    domain = "data_processing"
    summary = "restore or decompress a CSV bundle, tidy it (junk, line endings, modes), then aggregate/count/merge it"
    menu = Menu(
        sources=("restore", "decompress"), fixes=("junk", "crlf", "perms"), reports=("aggregate", "rowcount", "merge")
    )


class TidyAndVerify(CompositeFamily):
    name = "tidy_and_verify"
    domain = "system_operations"
    summary = "tidy a data folder in a stated order, with checksum lists, archives and counts taken between steps"
    menu = Menu(sources=(), fixes=("junk", "crlf", "perms"), reports=("checksums", "package", "rowcount", "aggregate"))


class RestoreAndShip(CompositeFamily):
    name = "restore_and_ship"
    domain = "system_operations"
    summary = "restore a bundle, fix it, summarise it, then checksum and package it for hand-over"
    menu = Menu(
        sources=("restore", "decompress"),
        fixes=("perms", "junk", "crlf"),
        reports=("aggregate", "merge", "checksums", "package"),
    )
