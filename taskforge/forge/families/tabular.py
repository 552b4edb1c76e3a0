"""CSV families: group-by aggregation, joins, deduplication, cleaning."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import bullets, csv_text, pick, python_block, test_module


@dataclass(frozen=True)
class Theme:
    """A kind of table: its file names, categorical columns (with value pools), numeric columns."""

    key: str
    files: tuple[str, ...]
    row_noun: str
    id_prefix: str
    cats: dict[str, list[str]]
    nums: dict[str, tuple[float, float, bool]]  # column -> (low, high, integer?)


THEMES = [
    Theme(
        "sales",
        ("sales.csv", "transactions.csv"),
        "one sale",
        "S",
        {"region": pools.REGIONS, "product": pools.PRODUCTS, "channel": pools.CHANNELS},
        {"amount": (5, 900, False), "units": (1, 60, True)},
    ),
    Theme(
        "inventory",
        ("inventory.csv", "stock.csv"),
        "one stock line",
        "I",
        {"warehouse": pools.WAREHOUSES, "category": pools.CATEGORIES},
        {"quantity": (0, 500, True), "unit_cost": (1, 250, False)},
    ),
    Theme(
        "tickets",
        ("tickets.csv", "incidents.csv"),
        "one support ticket",
        "T",
        {"team": pools.TEAMS, "priority": pools.PRIORITIES},
        {"hours": (0.5, 40, False), "reopened": (0, 6, True)},
    ),
    Theme(
        "traffic",
        ("traffic.csv", "visits.csv"),
        "one day of site traffic",
        "V",
        {"country": pools.COUNTRIES, "device": pools.DEVICES},
        {"sessions": (1, 3000, True), "load_ms": (80, 2500, True)},
    ),
]

STATUSES = ["completed", "refunded", "pending", "cancelled"]
NOTES = [
    "late delivery, refunded later",
    "ok",
    "customer called, twice",
    "gift wrap",
    "n/a, see ticket",
    "priority, rush",
    "damaged box",
]
MISSING = ["", "NA", "n/a"]

AGGS = {  # name -> (header prefix, phrase)
    "sum": ("total", "the sum of `{v}`"),
    "mean": ("avg", "the average of `{v}`"),
    "max": ("max", "the largest `{v}`"),
    "min": ("min", "the smallest `{v}`"),
    "count": ("rows", "the number of rows"),
}


def _agg_header(agg: str, value: str) -> str:
    prefix = AGGS[agg][0]
    return prefix if agg == "count" else f"{prefix}_{value}"


def _aggregate(agg: str, values: list[float]) -> float:
    if agg == "sum":
        return round(sum(values), 2)
    if agg == "mean":
        return round(sum(values) / len(values), 2)
    if agg == "max":
        return round(max(values), 2)
    if agg == "min":
        return round(min(values), 2)
    return len(values)


def _fmt(value: float, integer: bool) -> str:
    return str(int(value)) if integer else f"{value:.2f}"


def _messy(rng: random.Random, cell: str) -> str:
    """Pads a cell with stray spaces, sometimes."""
    roll = rng.random()
    if roll < 0.15:
        return " " + cell
    if roll < 0.3:
        return cell + "  "
    return cell


def _awk_aggregate(group: str, value: str, aggs: list[str], where: str = "", first_seen: bool = False) -> str:
    """An awk program aggregating `value` by `group` over CSV input with a header per file.

    first_seen prints the groups in the order they first occur (a near-miss that forgets to sort).
    """
    updates = ["n[k]++"]
    if {"sum", "mean"} & set(aggs):
        updates.append("s[k]+=$vi")
    if "max" in aggs:
        updates.append("if (!(k in mx) || $vi+0 > mx[k]) mx[k]=$vi+0")
    if "min" in aggs:
        updates.append("if (!(k in mn) || $vi+0 < mn[k]) mn[k]=$vi+0")
    if first_seen:
        updates.insert(0, "if (!(k in n)) order[++m]=k")
    outputs = {
        "sum": '"%.2f", s[k]',
        "mean": '"%.2f", s[k]/n[k]',
        "max": '"%.2f", mx[k]',
        "min": '"%.2f", mn[k]',
        "count": '"%d", n[k]',
    }
    parts = " ".join(f'printf ","; printf {outputs[a]};' for a in aggs)
    cond = f" && {where}" if where else ""
    status = '; si=h["status"]' if where else ""
    loop = "for (i=1; i<=m; i++) { k=order[i]; " if first_seen else "for (k in n) { "
    return (
        f"awk -F, -v g={group} -v v={value} '\n"
        f"  FNR==1 {{ for (i=1; i<=NF; i++) {{ h[$i]=i }}; gi=h[g]; vi=h[v]{status}; next }}\n"
        f"  NF>1{cond} {{ k=$gi; {'; '.join(updates)} }}\n"
        f'  END {{ {loop}printf "%s", k; {parts} printf "\\n" }} }}\''
    )


AGG_PY = {"sum": "sum(vals)", "mean": "sum(vals) / len(vals)", "max": "max(vals)", "min": "min(vals)"}


def _groupby_python(
    paths_code: str,
    group: str,
    value: str,
    out: str,
    header: list[str],
    aggs: list[str],
    *,
    naive_split: bool = False,
    lowercase: bool = True,
    rounded: bool = True,
) -> str:
    """The hard csv_groupby program; the keyword flags each bend one rule (near-miss solutions)."""
    reader = (
        ["rows = (line.rstrip('\\n').split(',') for line in handle)", "header = [h.strip() for h in next(rows)]"]
        if naive_split
        else ["rows = csv.reader(handle)", "header = [h.strip() for h in next(rows)]"]
    )
    key = f"rec[{group!r}].lower()" if lowercase else f"rec[{group!r}]"
    cells = ", ".join(f'"%.2f" % ({AGG_PY[a]})' if rounded else AGG_PY[a] for a in aggs)
    lines = [
        "import csv, glob" if "glob" in paths_code else "import csv",
        f"paths = {paths_code}",
        "groups = {}",
        "for path in paths:",
        '    with open(path, newline="") as handle:',
        *[f"        {line}" for line in reader],
        "        for row in rows:",
        "            if not any(cell.strip() for cell in row):",
        "                continue",
        "            rec = dict(zip(header, (cell.strip() for cell in row)))",
        f"            raw = rec[{value!r}]",
        '            if raw in ("", "NA", "n/a"):',
        "                continue",
        f"            groups.setdefault({key}, []).append(float(raw))",
        f'with open({out!r}, "w", newline="") as handle:',
        "    writer = csv.writer(handle)",
        f"    writer.writerow({header!r})",
        "    for key in sorted(groups):",
        "        vals = groups[key]",
        f"        writer.writerow([key, {cells}])",
    ]
    return python_block("\n".join(lines))


def _has_long_decimals(values: list[float]) -> bool:
    """Whether Python's str() of any value shows more than 2 decimals (so unrounded output is visible)."""
    return any(not re.fullmatch(r"-?\d+(\.\d{1,2})?", str(v)) for v in values)


class CsvGroupBy(Family):
    name = "csv_groupby"
    domain = "data_processing"
    summary = "aggregate a numeric CSV column per category (sum, mean, max, min, count)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        theme = rng.choice(THEMES)
        group = rng.choice(sorted(theme.cats))
        value = rng.choice(sorted(theme.nums))
        low, high, integer = theme.nums[value]
        groups = pick(rng, theme.cats[group], rng.randint(3, min(5, len(theme.cats[group]))))
        root = rng.choice(pools.DATA_ROOTS)
        out = f"{rng.choice(pools.OUT_DIRS)}/{group}_{rng.choice(['summary', 'report', 'stats', 'totals'])}.csv"

        if difficulty == "easy":
            aggs = [rng.choice(list(AGGS))]
        elif difficulty == "medium":
            aggs = [rng.choice(["sum", "mean", "max"]), "count"]
        else:
            aggs = rng.sample(["sum", "mean", "max", "min"], 3)
        header = [group] + [_agg_header(a, value) for a in aggs]
        keep_status = rng.choice(STATUSES[:2]) if difficulty == "medium" else None

        columns = ["id", "date", *sorted(theme.cats), *sorted(theme.nums)]
        if keep_status:
            columns.insert(2, "status")
        if difficulty == "hard":
            # the quoted `note` column comes before the grouped and summed columns, so splitting
            # lines on every comma shifts them (the trap the instruction warns about)
            columns.insert(2, "note")

        n_files = 1 if difficulty == "easy" else rng.randint(3, 5) if difficulty == "medium" else rng.randint(2, 3)
        serial = rng.randint(1000, 5000)
        months = sorted(rng.sample(pools.MONTHS, n_files))
        records: list[list[dict]] = []  # per file: records with their group and whether they count
        for f_index in range(n_files):
            rows = []
            for _ in range(rng.randint(12, 30)):
                serial += rng.randint(1, 9)
                g = rng.choice(groups)
                record = {"id": f"{theme.id_prefix}{serial}", "date": f"{months[f_index]}-{rng.randint(1, 28):02d}"}
                for col, col_pool in theme.cats.items():
                    record[col] = g if col == group else rng.choice(col_pool)
                for col, (lo, hi, is_int) in theme.nums.items():
                    record[col] = _fmt(rng.randint(int(lo), int(hi)) if is_int else rng.uniform(lo, hi), is_int)
                counted = True
                if keep_status:
                    record["status"] = rng.choice(STATUSES)
                    counted = record["status"] == keep_status
                if difficulty == "hard":
                    record["note"] = rng.choice(NOTES)
                    if rng.random() < 0.12:
                        record[value] = rng.choice(MISSING)
                        counted = False
                    record[group] = rng.choice([g, g.upper(), g.capitalize(), f" {g} "])
                rows.append({"record": record, "group": g, "counted": counted})
            records.append(rows)
        # Make every stated rule matter in this instance (each near-miss below must fail).
        first = records[0][0]
        if difficulty == "easy":  # the groups' first appearance is not already sorted
            seen = list(dict.fromkeys(r["group"] for r in records[0]))
            if len(seen) > 1 and seen == sorted(seen):
                first["group"] = first["record"][group] = seen[-1]
        elif difficulty == "medium" and all(r["counted"] for rows in records for r in rows):
            first["record"]["status"] = next(s for s in STATUSES if s != keep_status)
            first["counted"] = False
        elif difficulty == "hard":  # a counted row with a comma in its note and an uppercased group
            first["record"].update(note=rng.choice([n for n in NOTES if "," in n]), **{group: first["group"].upper()})
            if not first["counted"]:
                first["record"][value] = _fmt(rng.randint(int(low), int(high)) if integer else low + 1, integer)
                first["counted"] = True

        files: dict[str, str] = {}
        kept: dict[str, list[float]] = {g: [] for g in groups}
        for f_index, rows in enumerate(records):
            cells_rows = []
            for r in rows:
                if r["counted"]:
                    kept[r["group"]].append(float(r["record"][value]))
                cells = [r["record"][c] for c in columns]
                if difficulty == "hard":
                    cells = [_messy(rng, c) for c in cells]
                cells_rows.append(cells)
            text = csv_text(columns, cells_rows)
            if difficulty == "hard":
                lines = text.splitlines()
                for _ in range(rng.randint(1, 3)):
                    lines.insert(rng.randint(2, len(lines)), "")
                text = "\n".join(lines) + "\n"
            base = rng.choice(theme.files)
            name = base if n_files == 1 else f"{base[:-4]}-{months[f_index]}.csv"
            files[name] = text

        kept = {g: vals for g, vals in kept.items() if vals}
        table = [[g, *[_aggregate(a, vals) for a in aggs]] for g, vals in kept.items()]
        if difficulty == "medium":
            table.sort(key=lambda r: (-r[1], r[0]))
        else:
            table.sort(key=lambda r: r[0])

        if n_files == 1:
            (fname,) = files
            src = f"{root}/{fname}"
            image_files = {src: files[fname]}
            where = f"`{src}` holds {theme.row_noun} per row, with a header line."
        else:
            src_dir = f"{root}/{theme.key}"
            image_files = {f"{src_dir}/{n}": t for n, t in files.items()}
            where = f"The CSV files in `{src_dir}/` each hold {theme.row_noun} per row, with a header line."

        agg_text = "; ".join(AGGS[a][1].format(v=value) for a in aggs)
        lines = [
            f"`{out}` with the header `{','.join(header)}`",
            f"one row per `{group}` value: {agg_text}",
            "numbers rounded to 2 decimals",
        ]
        if difficulty == "medium":
            lines.insert(2, f"count only rows whose `status` is `{keep_status}`")
            lines.append(f"rows sorted by `{header[1]}`, largest first (ties by `{group}`)")
        else:
            lines.append(f"rows sorted by `{group}`")
        if difficulty == "hard":
            where += (
                " The data is messy: cells may carry stray spaces, blank lines occur, "
                "and quoted `note` cells contain commas."
            )
            lines[2:2] = [
                f"trim and lowercase the `{group}` values (they differ in case and spacing)",
                f"skip rows whose `{value}` is empty, `NA` or `n/a`",
            ]
        instruction = f"{where}\n\nWrite a report:\n{bullets(lines)}\n"

        out_dir = out.rsplit("/", 1)[0]
        near_misses: dict[str, str] = {}
        if difficulty == "hard":
            paths_code = (
                repr([next(iter(image_files))]) if n_files == 1 else f"sorted(glob.glob({src_dir + '/*.csv'!r}))"
            )

            def program(**bend: bool) -> str:
                return f"mkdir -p {out_dir}\n" + _groupby_python(paths_code, group, value, out, header, aggs, **bend)

            solution = program()
            near_misses["splits_quoted_commas"] = program(naive_split=True)
            near_misses["keeps_group_case"] = program(lowercase=False)
            unrounded = [v for vals in kept.values() for v in _unrounded(aggs, vals)]
            if _has_long_decimals(unrounded):
                near_misses["unrounded"] = program(rounded=False)
        else:
            where_cond = f'$si=="{keep_status}"' if keep_status else ""
            inputs = next(iter(image_files)) if n_files == 1 else f"{src_dir}/*.csv"
            sort = "sort -t, -k2,2gr -k1,1" if difficulty == "medium" else "sort -t, -k1,1"
            awk = _awk_aggregate(group, value, aggs, where_cond)
            solution = (
                f"mkdir -p {out_dir}\n"
                f"{awk} {inputs} | {sort} > /tmp/body.csv\n"
                f"{{ echo '{','.join(header)}'; cat /tmp/body.csv; }} > {out}\n"
            )
            near_misses["no_header"] = f"mkdir -p {out_dir}\n{awk} {inputs} | {sort} > {out}\n"
            if difficulty == "easy":
                near_misses["unsorted"] = (
                    f"mkdir -p {out_dir}\n"
                    f"{{ echo '{','.join(header)}'; {_awk_aggregate(group, value, aggs, first_seen=True)} {inputs}; }}"
                    f" > {out}\n"
                )
            else:
                near_misses["ignores_status"] = (
                    f"mkdir -p {out_dir}\n"
                    f"{_awk_aggregate(group, value, aggs)} {inputs} | {sort} > /tmp/body.csv\n"
                    f"{{ echo '{','.join(header)}'; cat /tmp/body.csv; }} > {out}\n"
                )

        rounded = [h for h, a in zip(header[1:], aggs, strict=True) if a != "count"]
        expected = {"path": out, "header": header, "rows": table, "numeric": header[1:], "rounded": rounded}
        tests = test_module(
            self.name,
            expected,
            """
            def test_report_table():
                check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)


            def test_numbers_rounded():
                check_rounded_cells(EXPECTED["path"], EXPECTED["rounded"])
            """,
            helpers=("csv", "rounded"),
        )
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=image_files,
            near_misses=near_misses,
        )


def _unrounded(aggs: list[str], values: list[float]) -> list[float]:
    """The aggregates as Python computes them before rounding."""
    exact = {"sum": sum(values), "mean": sum(values) / len(values), "max": max(values), "min": min(values)}
    return [exact[a] for a in aggs if a in exact]


# ------------------------------------------------------------------------------------------
# Joins


@dataclass(frozen=True)
class JoinTheme:
    entities: str  # table of things (customers), keyed by `key`
    key: str
    key_prefix: str
    label: str  # a descriptive column of the entity (name)
    attr: str  # a categorical column of the entity (country)
    attr_pool: list[str]
    events: str  # table of events referencing entities (orders)
    event_id: str
    count_col: str  # header of the event count column
    amount: str  # numeric column of events (easy/medium)
    amount_range: tuple[float, float]
    statuses: tuple[str, ...]
    items: str  # third table (hard): what events reference besides the entity
    item_key: str
    qty: str
    price: str
    price_range: tuple[float, float]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(pools.PEOPLE).capitalize()} {rng.choice(pools.SURNAMES)}"


def _host(rng: random.Random) -> str:
    return f"{rng.choice(pools.APPS)}-{rng.randint(1, 40):02d}"


JOIN_THEMES = [
    JoinTheme(
        "customers",
        "customer_id",
        "C",
        "name",
        "country",
        pools.COUNTRIES,
        "orders",
        "order_id",
        "orders",
        "amount",
        (5, 400),
        ("paid", "refunded", "pending"),
        "products",
        "sku",
        "quantity",
        "unit_price",
        (2, 120),
    ),
    JoinTheme(
        "employees",
        "employee_id",
        "E",
        "name",
        "team",
        pools.TEAMS,
        "timesheets",
        "entry_id",
        "entries",
        "hours",
        (0.5, 9),
        ("approved", "rejected", "draft"),
        "projects",
        "project_code",
        "hours",
        "hourly_rate",
        (20, 140),
    ),
    JoinTheme(
        "hosts",
        "host_id",
        "H",
        "hostname",
        "region",
        pools.REGIONS,
        "jobs",
        "job_id",
        "jobs",
        "cpu_minutes",
        (1, 300),
        ("succeeded", "failed", "queued"),
        "instance_types",
        "instance_type",
        "cpu_minutes",
        "price_per_minute",
        (0.01, 0.5),
    ),
]


class CsvJoin(Family):
    name = "csv_join"
    domain = "data_processing"
    summary = "join two or three CSV tables on a key and total per entity"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        t = rng.choice(JOIN_THEMES)
        root = rng.choice(pools.DATA_ROOTS)
        out = f"{rng.choice(pools.OUT_DIRS)}/{t.entities}_{rng.choice(['totals', 'summary', 'report', 'joined'])}.csv"
        by_total = difficulty != "easy" or rng.random() < 0.5
        n_entities = rng.randint(5, 8) if difficulty == "easy" else rng.randint(7, 12)
        serials = sorted(rng.sample(range(1, 999), n_entities))
        entities = []
        labels: set[str] = set()
        for s in serials:
            label = _person(rng) if t.label == "name" else _host(rng)
            while label in labels:
                label = _person(rng) if t.label == "name" else _host(rng)
            labels.add(label)
            entities.append({t.key: f"{t.key_prefix}{s:04d}", t.label: label, t.attr: rng.choice(t.attr_pool)})
        keep_status = rng.choice(t.statuses[:2])

        items = []
        if difficulty == "hard":
            for code in rng.sample(range(100, 999), rng.randint(4, 6)):
                items.append(
                    {t.item_key: f"{t.item_key[:1].upper()}{code}", t.price: f"{rng.uniform(*t.price_range):.2f}"}
                )
        price_of = {i[t.item_key]: float(i[t.price]) for i in items}

        # at least one entity has no events, so "with at least one row" / "including those without" matter
        active = rng.sample(entities, max(3, n_entities - rng.randint(1, 3)))
        events = []
        serial = rng.randint(10000, 50000)
        for e in active:
            for _ in range(rng.randint(1, 5)):
                serial += rng.randint(1, 17)
                ev = {t.event_id: str(serial), t.key: e[t.key]}
                if difficulty == "hard":
                    ev[t.item_key] = rng.choice(items)[t.item_key]
                    ev[t.qty] = str(rng.randint(1, 12))
                else:
                    ev[t.amount] = f"{rng.uniform(*t.amount_range):.2f}"
                ev["status"] = keep_status if difficulty == "easy" else rng.choice(t.statuses)
                events.append(ev)
        rng.shuffle(events)
        attr_filter = None
        if difficulty != "easy":  # make the status filter matter: some event has another status
            if all(ev["status"] == keep_status for ev in events):
                events[-1]["status"] = next(s for s in t.statuses if s != keep_status)
            if all(ev["status"] != keep_status for ev in events):
                events[0]["status"] = keep_status
        if difficulty == "hard":  # the filter keeps an entity without events and one with a counted event
            idle = [e for e in entities if e not in active]
            attr_filter = rng.choice(sorted({e[t.attr] for e in idle}))
            counted_event = next(ev for ev in events if ev["status"] == keep_status)
            next(e for e in entities if e[t.key] == counted_event[t.key])[t.attr] = attr_filter

        # Expected rows.
        totals: dict[str, list[float]] = {}
        for ev in events:
            if difficulty != "easy" and ev["status"] != keep_status:
                continue
            value = float(ev[t.qty]) * price_of[ev[t.item_key]] if difficulty == "hard" else float(ev[t.amount])
            totals.setdefault(ev[t.key], []).append(value)
        total_col = f"total_{'cost' if difficulty == 'hard' else t.amount}"
        header = [t.key, t.label, t.count_col, total_col]
        rows = []
        for e in entities:
            if attr_filter and e[t.attr] != attr_filter:
                continue
            vals = totals.get(e[t.key], [])
            if difficulty == "easy" and not vals:
                continue
            rows.append([e[t.key], e[t.label], len(vals), round(sum(vals), 2)])
        rows.sort(key=(lambda r: (-r[3], r[0])) if by_total else (lambda r: r[0]))

        if difficulty == "hard":  # keys in the events table are written sloppily
            for ev in events:
                if rng.random() < 0.4:
                    ev[t.key] = rng.choice([ev[t.key].lower(), f" {ev[t.key]}", f"{ev[t.key].lower()} "])
            counted_event[t.key] = counted_event[t.key].strip().lower()

        ent_cols = [t.key, t.label, t.attr]
        ev_cols = [t.event_id, t.key] + ([t.item_key, t.qty] if difficulty == "hard" else [t.amount]) + ["status"]
        d = f"{root}/{rng.choice([t.entities + '-db', 'export', 'tables'])}"
        files = {
            f"{d}/{t.entities}.csv": csv_text(ent_cols, [[e[c] for c in ent_cols] for e in entities]),
            f"{d}/{t.events}.csv": csv_text(ev_cols, [[ev[c] for c in ev_cols] for ev in events]),
        }
        if difficulty == "hard":
            files[f"{d}/{t.items}.csv"] = csv_text([t.item_key, t.price], [[i[t.item_key], i[t.price]] for i in items])

        if difficulty == "hard":
            intro = (
                f"The tables `{d}/{t.entities}.csv`, `{d}/{t.events}.csv` and `{d}/{t.items}.csv` each "
                f"have a header line; `{t.events}.csv` rows point to `{t.entities}.csv` by `{t.key}` and to "
                f"`{t.items}.csv` by `{t.item_key}`."
            )
        else:
            intro = (
                f"The tables `{d}/{t.entities}.csv` and `{d}/{t.events}.csv` each have a header line "
                f"and share the `{t.key}` column."
            )
        sort_line = (
            f"sort by `{total_col}` descending, ties by `{t.key}`" if by_total else f"sort the rows by `{t.key}`"
        )
        lines = [f"`{out}` with the header `{','.join(header)}`"]
        if difficulty == "easy":
            lines += [
                f"one row per {t.entities[:-1]} that has at least one row in `{t.events}.csv`",
                f"`{t.count_col}`: how many {t.events} rows it has; `{total_col}`: the sum of their `{t.amount}`",
                sort_line,
            ]
        elif difficulty == "medium":
            lines += [
                (
                    f"one row per {t.entities[:-1]} in `{t.entities}.csv`, including those "
                    f"without {t.events} (count 0, total 0)"
                ),
                f"only {t.events} rows whose `status` is `{keep_status}` count",
                f"`{t.count_col}`: how many such rows; `{total_col}`: the sum of their `{t.amount}`",
                sort_line,
            ]
        else:
            lines += [
                (
                    f"one row per {t.entities[:-1]} whose `{t.attr}` is `{attr_filter}`, including those "
                    f"without {t.events} (count 0, total 0)"
                ),
                f"only {t.events} rows whose `status` is `{keep_status}` count",
                (
                    f"the cost of a `{t.events}.csv` row is its `{t.qty}` times the `{t.price}` of its "
                    f"`{t.item_key}` in `{t.items}.csv`"
                ),
                (
                    f"`{t.key}` values in `{t.events}.csv` may be lowercase or padded with spaces: "
                    f"match them to `{t.entities}.csv` after trimming and uppercasing"
                ),
                f"`{t.count_col}`: how many such rows; `{total_col}`: the sum of their costs",
                sort_line,
            ]
        lines.append("totals rounded to 2 decimals")
        lines[0] = f"`{out}`, a CSV with the header `{','.join(header)}`"
        instruction = f"{intro}\n\nWrite:\n{bullets(lines)}\n"

        out_dir = out.rsplit("/", 1)[0]
        near_misses: dict[str, str] = {}
        if difficulty == "easy":
            sort = "sort -t, -k4,4gr -k1,1" if by_total else "sort -t, -k1,1"
            tables = f"{d}/{t.entities}.csv {d}/{t.events}.csv"
            awk = (
                "awk -F, 'NR==FNR { if (FNR>1) name[$1]=$2; next } FNR>1 { n[$2]++; s[$2]+=$3 }\n"
                '  END { for (k in n) printf "%s,%s,%d,%.2f\\n", k, name[k], n[k], s[k] }\''
            )
            solution = (
                f"mkdir -p {out_dir}\n{awk} {tables} \\\n  | {sort} > /tmp/joined.csv\n"
                f"{{ echo '{','.join(header)}'; cat /tmp/joined.csv; }} > {out}\n"
            )
            near_misses["no_header"] = f"mkdir -p {out_dir}\n{awk} {tables} \\\n  | {sort} > {out}\n"
            near_misses["keeps_entities_without_events"] = (
                f"mkdir -p {out_dir}\n{awk.replace('for (k in n)', 'for (k in name)').replace('n[k]', 'n[k]+0')} "
                f"{tables} \\\n  | {sort} > /tmp/joined.csv\n"
                f"{{ echo '{','.join(header)}'; cat /tmp/joined.csv; }} > {out}\n"
            )
        else:

            def program(**bend: bool) -> str:
                return f"mkdir -p {out_dir}\n" + _join_python(
                    t, d, out, header, keep_status, attr_filter, hard=difficulty == "hard", **bend
                )

            solution = program()
            near_misses["ignores_status"] = program(filter_status=False)
            near_misses["drops_entities_without_events"] = program(keep_idle=False)
            if difficulty == "hard":
                near_misses["keys_not_normalised"] = program(normalise_keys=False)
        expected = {
            "path": out,
            "header": header,
            "rows": rows,
            "numeric": [t.count_col, total_col],
            "rounded": [total_col],
        }
        tests = test_module(
            self.name,
            expected,
            """
            def test_joined_table():
                check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)


            def test_totals_rounded():
                check_rounded_cells(EXPECTED["path"], EXPECTED["rounded"])
            """,
            helpers=("csv", "rounded"),
        )
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            near_misses=near_misses,
        )


def _join_python(
    t: JoinTheme,
    d: str,
    out: str,
    header: list[str],
    keep_status: str,
    attr_filter: str | None,
    *,
    hard: bool,
    filter_status: bool = True,
    keep_idle: bool = True,
    normalise_keys: bool = True,
) -> str:
    """The medium/hard csv_join program; the keyword flags each bend one rule (near-miss solutions)."""
    value = f"float(ev[{t.qty!r}]) * prices[ev[{t.item_key!r}]]" if hard else f"float(ev[{t.amount!r}])"
    lines = [
        "import csv",
        "",
        "",
        "def rows(name):",
        f'    with open(f"{d}/{{name}}.csv", newline="") as handle:',
        "        return list(csv.DictReader(handle))",
        "",
        "",
    ]
    if hard:
        lines.append(f"prices = {{r[{t.item_key!r}]: float(r[{t.price!r}]) for r in rows({t.items!r})}}")
    lines += ["totals = {}", f"for ev in rows({t.events!r}):"]
    if filter_status:
        lines += [f'    if ev["status"] != {keep_status!r}:', "        continue"]
    key = f"ev[{t.key!r}].strip().upper()" if normalise_keys else f"ev[{t.key!r}]"
    lines += [f"    totals.setdefault({key}, []).append({value})", "out = []", f"for e in rows({t.entities!r}):"]
    if attr_filter is not None:
        lines += [f"    if e[{t.attr!r}] != {attr_filter!r}:", "        continue"]
    lines.append(f"    vals = totals.get(e[{t.key!r}], [])")
    if not keep_idle:
        lines += ["    if not vals:", "        continue"]
    lines += [
        f"    out.append([e[{t.key!r}], e[{t.label!r}], len(vals), round(sum(vals), 2)])",
        "out.sort(key=lambda r: (-r[3], r[0]))",
        f'with open({out!r}, "w", newline="") as handle:',
        "    w = csv.writer(handle)",
        f"    w.writerow({header!r})",
        '    w.writerows([r[0], r[1], r[2], "%.2f" % r[3]] for r in out)',
    ]
    return python_block("\n".join(lines))


# ------------------------------------------------------------------------------------------
# Deduplication


@dataclass(frozen=True)
class DedupeTheme:
    file: str
    key: str
    columns: tuple[str, ...]  # besides key and the timestamp column
    stamp: str


DEDUPE_THEMES = [
    DedupeTheme("contacts.csv", "email", ("name", "city"), "updated_at"),
    DedupeTheme("devices.csv", "serial", ("hostname", "owner"), "last_seen"),
    DedupeTheme("subscribers.csv", "username", ("plan", "country"), "modified"),
    DedupeTheme("members.csv", "email", ("name", "plan"), "joined_at"),
    DedupeTheme("assets.csv", "serial", ("owner", "city"), "checked_at"),
]
PLANS = ["free", "basic", "pro", "team"]
CITIES = ["berlin", "lyon", "austin", "osaka", "lagos", "toronto", "lima", "oslo"]


def _dedupe_value(rng: random.Random, column: str) -> str:
    return {
        "name": lambda: _person(rng),
        "city": lambda: rng.choice(CITIES),
        "hostname": lambda: _host(rng),
        "owner": lambda: rng.choice(pools.PEOPLE),
        "plan": lambda: rng.choice(PLANS),
        "country": lambda: rng.choice(pools.COUNTRIES),
    }[column]()


def _dedupe_key(rng: random.Random, key: str, used: set[str]) -> str:
    while True:
        if key == "email":
            value = (
                f"{rng.choice(pools.PEOPLE)}.{rng.choice(pools.SURNAMES).lower()}{rng.randint(1, 99)}@"
                f"{rng.choice(pools.MAIL_DOMAINS)}"
            )
        elif key == "serial":
            value = f"SN-{rng.randrange(16**6):06X}"
        else:
            value = f"{rng.choice(pools.PEOPLE)}{rng.randint(10, 999)}"
        if value not in used:
            used.add(value)
            return value


def _stamp(rng: random.Random, used: set[str]) -> str:
    while True:
        value = (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        )
        if value not in used:
            used.add(value)
            return value


def _case_variant(rng: random.Random, key: str) -> str:
    return rng.choice([key.upper(), key.capitalize(), f" {key}", f"{key} ", key.swapcase()])


class DedupeRecords(Family):
    name = "dedupe_records"
    domain = "data_processing"
    summary = "remove duplicate records: exact lines, by key keeping the latest, by normalised key"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        t = rng.choice(DEDUPE_THEMES)
        root = rng.choice(pools.DATA_ROOTS)
        out_dir = rng.choice(pools.OUT_DIRS)
        stem = t.file[:-4]
        src_name = rng.choice([t.file, f"{stem}_export.csv", f"{stem}-2024.csv"])
        out = f"{out_dir}/{stem}_{rng.choice(['dedup', 'unique', 'clean'])}.csv"
        header = [t.key, *t.columns, t.stamp]
        used_keys: set[str] = set()
        stamps: set[str] = set()
        n_keys = rng.randint(8, 14) if difficulty == "easy" else rng.randint(10, 18)

        def record(key: str) -> list[str]:
            return [key, *[_dedupe_value(rng, c) for c in t.columns], _stamp(rng, stamps)]

        files: dict[str, str] = {}
        summary_path = None
        if difficulty == "easy":
            unique = [record(_dedupe_key(rng, t.key, used_keys)) for _ in range(n_keys)]
            rows = list(unique)
            for _ in range(rng.randint(3, 7)):
                rows.insert(rng.randint(0, len(rows)), list(rng.choice(unique)))
            expected_rows, seen = [], set()
            for r in rows:
                if tuple(r) not in seen:
                    seen.add(tuple(r))
                    expected_rows.append(r)
            sort_by_key = rng.random() < 0.5
            src = f"{root}/{src_name}"
            files[src] = csv_text(header, rows)
            lines = [
                f"`{out}` with the same header and columns",
                "every row exactly once: drop rows that repeat an earlier row exactly",
            ]
            first_seen = f"mkdir -p {out_dir}\nawk '!seen[$0]++' {src} > {out}\n"
            if sort_by_key:
                expected_rows.sort(key=lambda r: r[0])
                lines.append(f"rows sorted by `{t.key}`")
                solution = f"mkdir -p {out_dir}\n{{ head -n 1 {src}; tail -n +2 {src} | sort -t, -k1,1 -u; }} > {out}\n"
                near_misses = {
                    "keeps_duplicates": (
                        f"mkdir -p {out_dir}\n{{ head -n 1 {src}; tail -n +2 {src} | sort -t, -k1,1; }} > {out}\n"
                    ),
                    "unsorted": first_seen,
                }
            else:
                lines.append("keep the remaining rows in their original order")
                solution = first_seen
                near_misses = {
                    "keeps_duplicates": f"mkdir -p {out_dir}\ncp {src} {out}\n",
                    "sorts_rows": f"mkdir -p {out_dir}\n{{ head -n 1 {src}; tail -n +2 {src} | sort -u; }} > {out}\n",
                }
            instruction = f"`{src}` has a header line and contains duplicated rows.\n\nWrite:\n{bullets(lines)}\n"
        else:
            versions: dict[str, list[list[str]]] = {}
            for _ in range(n_keys):
                key = _dedupe_key(rng, t.key, used_keys)
                # the first key has two versions, so which one is kept matters
                versions[key] = [record(key) for _ in range(2 if not versions else rng.choice([1, 1, 2, 3]))]
            keep_latest = rng.random() < 0.6
            by_stamp = rng.random() < 0.35
            pick_row = max if keep_latest else min
            expected_rows = [list(pick_row(v, key=lambda r: r[-1])) for v in versions.values()]
            all_rows = [list(r) for v in versions.values() for r in v]
            rng.shuffle(all_rows)
            if difficulty == "medium":
                src = f"{root}/{src_name}"
                files[src] = csv_text(header, all_rows)
                where = f"`{src}` has a header line; some `{t.key}` values occur in several rows."
            else:
                for i, r in enumerate(all_rows):
                    if i == 0 or rng.random() < 0.45:  # at least one key needs normalising
                        r[0] = _case_variant(rng, r[0])
                n_parts = rng.randint(2, 3)
                src = f"{root}/{stem}"
                for p in range(n_parts):
                    part = all_rows[p::n_parts]
                    files[f"{src}/part-{p + 1}.csv"] = csv_text(header, part)
                where = (
                    f"The CSV files in `{src}/` (header line each) hold records; the same `{t.key}` may repeat across "
                    "files, in any letter case, with stray spaces."
                )
                summary_path = f"{out_dir}/{stem}_{rng.choice(['dedup_summary', 'counts', 'stats'])}.json"
            which = "latest" if keep_latest else "earliest"
            order = f"newest `{t.stamp}` first" if by_stamp else f"sorted by `{t.key}`"
            lines = [
                (
                    f"`{out}` with the header `{','.join(header)}`: one row per `{t.key}`, "
                    f"the one with the {which} `{t.stamp}`, {order}"
                )
            ]
            if difficulty == "hard":
                lines[0] = (
                    f"`{out}` with the header `{','.join(header)}`: one row per `{t.key}` (compared trimmed and "
                    f"lowercase, written that way), the one with the {which} `{t.stamp}`, {order}"
                )
                lines.append(
                    f'`{summary_path}`: JSON `{{"input_rows": <data rows read>, "unique": <rows written>, '
                    '"removed": <the difference>}`'
                )
                for r in expected_rows:
                    r[0] = r[0].strip().lower()
            expected_rows.sort(key=(lambda r: r[-1]) if by_stamp else (lambda r: r[0]), reverse=by_stamp)
            instruction = f"{where}\n\nWrite:\n{bullets(lines)}\n"
            paths_code = repr([src]) if difficulty == "medium" else f"sorted(glob.glob({src + '/*.csv'!r}))"
            settings = {"keep_latest": keep_latest, "by_stamp": by_stamp, "normalise": difficulty == "hard"}

            def program(**bend: bool) -> str:
                return f"mkdir -p {out_dir}\n" + _dedupe_python(paths_code, out, summary_path, **{**settings, **bend})

            solution = program()
            near_misses = {
                "keeps_other_version": program(keep_latest=not keep_latest),
                "wrong_order": program(by_stamp=not by_stamp),
            }
            if difficulty == "hard":
                near_misses["keys_not_normalised"] = program(normalise=False)
                near_misses["counts_header_lines"] = program(count_headers=True)
        expected = {"path": out, "header": header, "rows": expected_rows, "summary_path": summary_path}
        body = """
            def test_deduplicated_rows():
                check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(), ordered=True)
            """
        outputs = [out]
        if summary_path:
            n_input = sum(len(v) for v in versions.values())
            expected["summary"] = {
                "input_rows": n_input,
                "unique": len(expected_rows),
                "removed": n_input - len(expected_rows),
            }
            outputs.append(summary_path)
            body += """

            def test_summary_counts():
                data = load_json(EXPECTED["summary_path"])
                assert isinstance(data, dict), "the summary must be a JSON object"
                for key, value in EXPECTED["summary"].items():
                    assert key in data, f"missing key {key}"
                    assert int(data[key]) == value, f"{key} is {data[key]}, expected {value}"
            """
        tests = test_module(self.name, expected, body, helpers=("csv", "json"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            near_misses=near_misses,
        )


def _dedupe_python(
    paths_code: str,
    out: str,
    summary_path: str | None,
    *,
    keep_latest: bool,
    by_stamp: bool,
    normalise: bool,
    count_headers: bool = False,
) -> str:
    """The medium/hard dedupe_records program; count_headers is a near-miss (header lines counted as input)."""
    imports = "import csv" + (", glob" if "glob" in paths_code else "") + (", json" if summary_path else "")
    lines = [
        imports,
        f"paths = {paths_code}",
        "best, n = {}, 0",
        "for path in paths:",
        '    with open(path, newline="") as handle:',
        "        reader = csv.reader(handle)",
        "        header = next(reader)",
    ]
    if count_headers:
        lines.append("        n += 1")
    lines += ["        for row in reader:", "            if not row:", "                continue", "            n += 1"]
    if normalise:
        lines.append("            row[0] = row[0].strip().lower()")
    lines += [
        "            key = row[0]",
        f"            if key not in best or row[-1] {'>' if keep_latest else '<'} best[key][-1]:",
        "                best[key] = row",
        "rows = sorted(best.values(), key=lambda r: r[-1], reverse=True)"
        if by_stamp
        else "rows = sorted(best.values(), key=lambda r: r[0])",
        f'with open({out!r}, "w", newline="") as handle:',
        "    w = csv.writer(handle)",
        "    w.writerow(header)",
        "    w.writerows(rows)",
    ]
    if summary_path:
        lines += [
            f'with open({summary_path!r}, "w") as handle:',
            '    json.dump({"input_rows": n, "unique": len(best), "removed": n - len(best)}, handle)',
        ]
    return python_block("\n".join(lines))


# ------------------------------------------------------------------------------------------
# Cleaning


CLEANUP_KINDS = {  # kind -> (date column, amount column, extra column, its values)
    "signups": ("signup_date", "credit", "plan", PLANS),
    "payments": ("paid_on", "amount", "method", ["card", "transfer", "cash", "voucher"]),
    "shipments": ("shipped_on", "weight_kg", "carrier", ["dhl", "ups", "fedex", "post"]),
    "refunds": ("refunded_on", "amount", "reason", ["damaged", "late", "wrong_item", "other"]),
}
MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class CsvCleanup(Family):
    name = "csv_cleanup"
    domain = "data_processing"
    summary = "clean a messy CSV: trim cells, drop incomplete rows, normalise dates and amounts"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        kind = rng.choice(sorted(CLEANUP_KINDS))
        date_col, amount_col, extra_col, extra_pool = CLEANUP_KINDS[kind]
        required = rng.choice(["email", "name", extra_col])
        header = ["id", "name", "email", date_col, amount_col, extra_col]
        root = rng.choice(pools.DATA_ROOTS)
        src = f"{root}/{kind}_{rng.choice(['raw', 'export', 'dump'])}.csv"
        out = f"{rng.choice(pools.OUT_DIRS)}/{kind}_{rng.choice(['clean', 'tidy', 'normalized'])}.csv"
        formats = {"easy": ["iso"], "medium": ["iso", "dmy"], "hard": ["iso", "dmy", "mon"]}[difficulty]
        lower_email = difficulty != "easy" and rng.random() < 0.5
        sort_by_date = difficulty != "easy" and rng.random() < 0.4

        raw_rows, expected, seen = [], [], set()
        serial = rng.randint(100, 900)
        n_rows = rng.randint(14, 24)
        # rows that make each rule matter: one is incomplete, one has an unusual date format, one repeats
        drop_at, odd_date_at, repeat_at = rng.sample(range(n_rows), 3)
        for i in range(n_rows):
            serial += rng.randint(1, 5)
            person = rng.choice(pools.PEOPLE)
            y, m, d = 2024, rng.randint(1, 12), rng.randint(1, 28)
            amount = round(rng.uniform(1, 2500), 2)
            clean = [
                str(serial),
                f"{person.capitalize()} {rng.choice(pools.SURNAMES)}",
                f"{person}{rng.randint(1, 99)}@{rng.choice(pools.MAIL_DOMAINS)}",
                f"{y}-{m:02d}-{d:02d}",
                f"{amount:.2f}",
                rng.choice(extra_pool),
            ]
            fmt = rng.choice(formats[1:]) if i == odd_date_at and difficulty != "easy" else rng.choice(formats)
            date_raw = {"iso": clean[3], "dmy": f"{d:02d}/{m:02d}/{y}", "mon": f"{MONTH_NAMES[m - 1]} {d:02d} {y}"}[fmt]
            if difficulty == "hard":
                amount_raw = rng.choice([f"{amount:.2f}", f"${amount:,.2f}", f"{amount:g}", f"USD {amount:.2f}"])
            else:
                amount_raw = clean[4]
            email_raw = "".join(ch.upper() if lower_email and rng.random() < 0.3 else ch for ch in clean[2])
            raw = [clean[0], clean[1], email_raw, date_raw, amount_raw, clean[5]]
            raw = [rng.choice([c, f" {c}", f"{c}  ", f"  {c} "]) for c in raw]
            drop = i == drop_at or rng.random() < 0.15
            if drop:
                raw[header.index(required)] = rng.choice(["", "  "])
            raw_rows.append(raw)
            if not drop:
                if difficulty == "hard" and tuple(clean) in seen:
                    continue
                seen.add(tuple(clean))
                expected.append(clean)
            if difficulty == "hard" and not drop and (i == repeat_at or rng.random() < 0.15):  # a duplicate once clean
                raw_rows.append([c.strip() for c in raw])
        text = csv_text(header, raw_rows)
        lines = text.splitlines()
        for _ in range(rng.randint(1, 3)):
            lines.insert(rng.randint(2, len(lines)), rng.choice(["", "   "]))
        files = {src: "\n".join(lines) + "\n"}

        rules = ["trim spaces around every cell; drop blank lines", f"drop rows with an empty `{required}`"]
        if difficulty != "easy":
            fmts = {"dmy": "`DD/MM/YYYY`", "mon": "`Mon DD YYYY` (`Mar 05 2024`)"}
            rules.append(
                f"`{date_col}` as `YYYY-MM-DD` (it also occurs as " + " and ".join(fmts[f] for f in formats[1:]) + ")"
            )
        if lower_email:
            rules.append("`email` in lowercase")
        if difficulty == "hard":
            rules.append(
                f"`{amount_col}` as a plain number with 2 decimals (it occurs with `$`, "
                "`USD ` and thousands separators)"
            )
            rules.append("then drop rows that repeat an earlier row")
        if sort_by_date:
            expected.sort(key=lambda r: (r[3], int(r[0])))
            rules.append(f"rows sorted by `{date_col}`, then by `id`")
        else:
            rules.append("rows in the original order")
        instruction = (
            f"`{src}` is a messy CSV export (header line). Write the cleaned table, same columns, "
            f"to `{out}`:\n{bullets(rules)}\n"
        )

        settings = {"formats": formats, "lower_email": lower_email, "sort_by_date": sort_by_date}

        def program(**bend: bool) -> str:
            return f"mkdir -p {out.rsplit('/', 1)[0]}\n" + _cleanup_python(
                src, out, header.index(required), hard=difficulty == "hard", **{**settings, **bend}
            )

        solution = program()
        near_misses = {"keeps_incomplete_rows": program(drop_incomplete=False), "untrimmed_cells": program(trim=False)}
        if difficulty == "medium":
            near_misses["dates_not_normalised"] = program(formats=["iso"])
        if difficulty == "hard":
            near_misses["keeps_duplicates"] = program(drop_repeats=False)
        # hard states the amount's format (2 decimals), so it is compared as text there
        exp = {"path": out, "header": header, "rows": expected, "numeric": [] if difficulty == "hard" else [amount_col]}
        tests = test_module(
            self.name,
            exp,
            """
            def test_cleaned_table():
                check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)


            def test_cells_trimmed():
                for row in csv.reader(io.StringIO(read_text(EXPECTED["path"]))):
                    for cell in row:
                        assert cell == cell.strip(), f"{EXPECTED['path']}: the cell {cell!r} has spaces around it"
            """,
            helpers=("csv",),
        )
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            near_misses=near_misses,
        )


def _cleanup_python(
    src: str,
    out: str,
    required_index: int,
    *,
    hard: bool,
    formats: list[str],
    lower_email: bool,
    sort_by_date: bool,
    drop_incomplete: bool = True,
    trim: bool = True,
    drop_repeats: bool = True,
) -> str:
    """The csv_cleanup program; the keyword flags after sort_by_date each bend one rule (near-miss solutions)."""
    strptime = {"iso": "%Y-%m-%d", "dmy": "%d/%m/%Y", "mon": "%b %d %Y"}
    lines = ["import csv" + (", re" if hard else "")]
    if len(formats) > 1:
        lines += [
            "from datetime import datetime",
            "",
            "",
            "def clean_date(s):",
            f"    for fmt in {tuple(strptime[f] for f in formats)!r}:",
            "        try:",
            '            return datetime.strptime(s, fmt).strftime("%Y-%m-%d")',
            "        except ValueError:",
            "            pass",
            "    return s",
        ]
    if hard:
        lines += ["", "", "def clean_amount(s):", '    return "%.2f" % float(re.sub(r"[^0-9.]", "", s))']
    lines += ["", "", "rows = []"]
    if hard and drop_repeats:
        lines.append("seen = set()")
    lines += [
        f'with open({src!r}, newline="") as handle:',
        "    reader = csv.reader(handle)",
        "    header = [h.strip() for h in next(reader)]",
        "    for row in reader:",
    ]
    if trim:
        lines.append("        row = [c.strip() for c in row]")
    blank = "not any(row)" if trim else "not any(c.strip() for c in row)"
    empty = f"not row[{required_index}]" if trim else f"not row[{required_index}].strip()"
    lines += [f"        if {blank} or {empty}:" if drop_incomplete else f"        if {blank}:", "            continue"]
    if len(formats) > 1:
        lines.append("        row[3] = clean_date(row[3])")
    if lower_email:
        lines.append("        row[2] = row[2].lower()")
    if hard:
        lines.append("        row[4] = clean_amount(row[4])")
    if hard and drop_repeats:
        lines += ["        if tuple(row) in seen:", "            continue", "        seen.add(tuple(row))"]
    lines.append("        rows.append(row)")
    if sort_by_date:
        lines.append("rows.sort(key=lambda r: (r[3], int(r[0])))")
    lines += [
        f'with open({out!r}, "w", newline="") as handle:',
        "    w = csv.writer(handle)",
        "    w.writerow(header)",
        "    w.writerows(rows)",
    ]
    return python_block("\n".join(lines))
