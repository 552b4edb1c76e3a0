"""JSON families: roll-ups of event records, and conversions between CSV, TSV, JSON, JSONL and YAML."""

from __future__ import annotations

import json
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import csv_text, pick, python_block, test_module

EVENT_TYPES = ["click", "view", "purchase", "signup", "download", "share"]
VALUE_FIELDS = {"duration_ms": (20, 5000, True), "amount": (1, 300, False), "bytes": (100, 90000, True)}
META_FIELDS = {"region": pools.REGIONS, "device": pools.DEVICES, "country": pools.COUNTRIES}


def _event(rng: random.Random, serial: int, users: list[str], types: list[str], value_field: str) -> dict:
    lo, hi, integer = VALUE_FIELDS[value_field]
    value = rng.randint(lo, hi) if integer else round(rng.uniform(lo, hi), 2)
    return {
        "id": f"ev-{serial}",
        "user": rng.choice(users),
        "type": rng.choice(types),
        value_field: value,
        "ts": (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        ),
        "meta": {k: rng.choice(v) for k, v in META_FIELDS.items()},
    }


class JsonRollup(Family):
    name = "json_rollup"
    domain = "data_processing"
    summary = "roll up JSON / JSON Lines event records per key into a JSON report"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        value_field = rng.choice(sorted(VALUE_FIELDS))
        users = pick(rng, pools.PEOPLE, rng.randint(3, 6))
        types = pick(rng, EVENT_TYPES, rng.randint(3, 5))
        root = rng.choice(pools.DATA_ROOTS)
        out_dir = rng.choice(pools.OUT_DIRS)
        serial = rng.randint(1000, 9000)
        n = rng.randint(15, 30) if difficulty == "easy" else rng.randint(30, 60)
        events = []
        for _ in range(n):
            serial += rng.randint(1, 20)
            events.append(_event(rng, serial, users, types, value_field))

        files: dict[str, str] = {}
        outputs: list[str] = []
        # rounding is stated (and checked) only where the summed field has decimals
        decimals = not VALUE_FIELDS[value_field][2]
        rounding = ", totals rounded to 2 decimals" if decimals else ""
        total = f"((map(.{value_field}) | add) * 100 | round / 100)" if decimals else f"(map(.{value_field}) | add)"
        if difficulty == "easy":
            group = rng.choice(["user", "type"])
            out = f"{out_dir}/{group}_{rng.choice(['rollup', 'totals', 'summary'])}.json"
            src = f"{root}/{rng.choice(['events', 'activity', 'audit'])}.json"
            files[src] = json.dumps(events, indent=2) + "\n"
            result: dict = {}
            for ev in events:
                slot = result.setdefault(ev[group], {"count": 0, "total": 0.0})
                slot["count"] += 1
                slot["total"] += ev[value_field]
            for slot in result.values():
                slot["total"] = round(slot["total"], 2)
            instruction = (
                f"`{src}` is a JSON array of event objects with the fields `id`, `user`, `type`, "
                f"`{value_field}`, `ts` and `meta`.\n\n"
                f"Write `{out}`: a JSON object with one key per distinct `{group}`; each value is an object "
                f'`{{"count": <number of events>, "total": <sum of {value_field}>}}`{rounding}.\n'
            )

            def rollup(key: str, entries: str = " | from_entries") -> str:
                return (
                    f"mkdir -p {out_dir}\njq 'group_by(.{key}) | map({{key: .[0].{key}, value: {{count: length, "
                    f"total: {total}}}}}){entries}' {src} > {out}\n"
                )

            solution = rollup(group)
            near_misses = {
                "array_not_object": rollup(group, entries=""),
                "groups_by_other_field": rollup("type" if group == "user" else "user"),
            }
            expected = {"path": out, "result": result}
            body = """
                def test_rollup():
                    data = load_json(EXPECTED["path"])
                    want = EXPECTED["result"]
                    assert isinstance(data, dict), "the report must be a JSON object"
                    assert sorted(data) == sorted(want), f"keys {sorted(data)} != {sorted(want)}"
                    for key, slot in want.items():
                        got = data[key]
                        assert int(got["count"]) == slot["count"], f"{key}: count {got['count']} != {slot['count']}"
                        assert close(got["total"], slot["total"]), f"{key}: total {got['total']} != {slot['total']}"
                        assert is_rounded(got["total"]), f"{key}: total {got['total']} is not rounded to 2 decimals"
                """
            outputs.append(out)
        elif difficulty == "medium":
            keep_type = rng.choice(types)
            out = f"{out_dir}/{keep_type}_by_user.json"
            src = f"{root}/{rng.choice(['events', 'activity', 'stream'])}"
            n_files = rng.randint(2, 4)
            for i in range(n_files):
                part = events[i::n_files]
                files[f"{src}/part-{i + 1:02d}.jsonl"] = "".join(json.dumps(ev) + "\n" for ev in part)
            result = {}
            for ev in events:
                if ev["type"] != keep_type:
                    continue
                slot = result.setdefault(ev["user"], {"count": 0, "total": 0.0, "max": None})
                slot["count"] += 1
                slot["total"] += ev[value_field]
                slot["max"] = ev[value_field] if slot["max"] is None else max(slot["max"], ev[value_field])
            for slot in result.values():
                slot["total"] = round(slot["total"], 2)
            instruction = (
                f"The `.jsonl` files in `{src}/` hold one JSON event per line with the fields `id`, `user`, `type`, "
                f"`{value_field}`, `ts` and `meta`.\n\n"
                f"Write `{out}`: a JSON object with one key per `user` that has `{keep_type}` "
                "events; each value is an object "
                f'`{{"count": ..., "total": ..., "max": ...}}` over that user\'s `{keep_type}` '
                "events only: how many there are, "
                f"the sum of their `{value_field}`{' (rounded to 2 decimals)' if decimals else ''} "
                f"and the largest `{value_field}`.\n"
            )

            def rollup(inputs: str, select: str = f'map(select(.type == "{keep_type}")) | ') -> str:
                return (
                    f"mkdir -p {out_dir}\n"
                    f"cat {inputs} | jq -s '{select}group_by(.user)"
                    f" | map({{key: .[0].user, value: {{count: length, total: {total}, "
                    f"max: (map(.{value_field}) | max)}}}}) | from_entries' > {out}\n"
                )

            solution = rollup(f"{src}/*.jsonl")
            near_misses = {
                "ignores_type": rollup(f"{src}/*.jsonl", select=""),
                "reads_one_file": rollup(f"{src}/part-01.jsonl"),
            }
            expected = {"path": out, "result": result}
            body = """
                def test_rollup():
                    data = load_json(EXPECTED["path"])
                    want = EXPECTED["result"]
                    assert isinstance(data, dict), "the report must be a JSON object"
                    assert sorted(data) == sorted(want), f"keys {sorted(data)} != {sorted(want)}"
                    for key, slot in want.items():
                        got = data[key]
                        for field in ("count", "total", "max"):
                            assert field in got, f"{key}: missing {field}"
                            assert close(got[field], slot[field]), f"{key}: {field} {got[field]} != {slot[field]}"
                        assert is_rounded(got["total"]), f"{key}: total {got['total']} is not rounded to 2 decimals"
                """
            outputs.append(out)
        else:
            meta_field = rng.choice(sorted(META_FIELDS))
            top_n = rng.randint(2, 4)
            out = (
                f"{out_dir}/top_{ {'region': 'regions', 'device': 'devices', 'country': 'countries'}[meta_field] }.json"
            )
            src = f"{root}/{rng.choice(['events', 'activity', 'stream'])}"
            lines_by_file: list[list[str]] = [[] for _ in range(rng.randint(2, 3))]
            totals: dict[str, dict] = {}
            bad = 0
            for i, ev in enumerate(events):
                roll = rng.random()
                if roll < 0.08:
                    ev.pop(value_field)
                elif roll < 0.14:
                    ev[value_field] = None
                line = json.dumps(ev)
                lines_by_file[i % len(lines_by_file)].append(line)
                if ev.get(value_field) is not None:
                    key = ev["meta"][meta_field]
                    slot = totals.setdefault(key, {meta_field: key, "events": 0, "total": 0.0})
                    slot["events"] += 1
                    slot["total"] += ev[value_field]
                if rng.random() < 0.1:
                    lines_by_file[i % len(lines_by_file)].append(
                        rng.choice(['{"id": "ev-broken", "user": ', "not json at all", "]"])
                    )
                    bad += 1
            ranked = sorted(totals.values(), key=lambda s: (-round(s["total"], 2), s[meta_field]))
            for s in ranked:
                s["total"] = round(s["total"], 2)
            top = ranked[:top_n]
            # an event without a value in the top group: counting it as an event is wrong
            serial += rng.randint(1, 20)
            valueless = _event(rng, serial, users, types, value_field)
            valueless[value_field] = None
            valueless["meta"][meta_field] = top[0][meta_field]
            lines_by_file[-1].append(json.dumps(valueless))
            for i, lines in enumerate(lines_by_file):
                files[f"{src}/batch-{i + 1}.jsonl"] = "\n".join(lines) + "\n"
            instruction = (
                f"The `.jsonl` files in `{src}/` hold JSON events (`meta` is a nested object); "
                f"some lines are not valid JSON and some events lack a numeric `{value_field}`: skip both.\n\n"
                f"Write `{out}`: a JSON array of the top {top_n} `meta.{meta_field}` values by total `{value_field}`, "
                f"largest first (ties by `{meta_field}`), "
                f'each as `{{"{meta_field}": ..., "events": <events counted>, "total": <sum{", 2 decimals" if decimals else ""}>}}`.\n'
            )

            def top_list(valued: str, rank: str, value: str = f"ev[{value_field!r}]") -> str:
                return f"mkdir -p {out_dir}\n" + python_block(f"""
                    import glob, json
                    totals = {{}}
                    for path in sorted(glob.glob({src!r} + "/*.jsonl")):
                        for line in open(path):
                            try:
                                ev = json.loads(line)
                            except json.JSONDecodeError:
                                continue
                            if not isinstance(ev, dict){valued}:
                                continue
                            key = ev["meta"][{meta_field!r}]
                            slot = totals.setdefault(key, {{{meta_field!r}: key, "events": 0, "total": 0.0}})
                            slot["events"] += 1
                            slot["total"] += {value}
                    for slot in totals.values():
                        slot["total"] = round(slot["total"], 2)
                    ranked = sorted(totals.values(), key=lambda s: ({rank}, s[{meta_field!r}]))
                    json.dump(ranked[:{top_n}], open({out!r}, "w"), indent=2)
                    """)

            numeric = f" or not isinstance(ev.get({value_field!r}), (int, float))"
            solution = top_list(numeric, '-s["total"]')
            near_misses = {
                "counts_valueless_events": top_list("", '-s["total"]', f"ev.get({value_field!r}) or 0"),
                "smallest_first": top_list(numeric, 's["total"]'),
            }
            expected = {"path": out, "top": top, "field": meta_field}
            body = """
                def test_top_list():
                    data = load_json(EXPECTED["path"])
                    want = EXPECTED["top"]
                    field = EXPECTED["field"]
                    assert isinstance(data, list), "the report must be a JSON array"
                    assert len(data) == len(want), f"{len(data)} elements, expected {len(want)}"
                    for got, slot in zip(data, want):
                        assert str(got.get(field)) == slot[field], f"expected {slot[field]} in this position, got {got.get(field)}"
                        assert int(got["events"]) == slot["events"], f"{slot[field]}: events {got['events']} != {slot['events']}"
                        assert close(got["total"], slot["total"]), f"{slot[field]}: total {got['total']} != {slot['total']}"
                        assert is_rounded(got["total"]), f"{slot[field]}: total {got['total']} is not rounded to 2 decimals"
                """
            outputs.append(out)
        tests = test_module(self.name, expected, body, helpers=("json", "rounded"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            near_misses=near_misses,
        )


# ------------------------------------------------------------------------------------------
# Format conversion

RECORD_KINDS = {  # kind -> fields: name -> generator kind
    "servers": {
        "hostname": "host",
        "cpus": "int",
        "memory_gb": "int",
        "load": "float",
        "os": ["debian", "ubuntu", "alpine", "rhel"],
    },
    "books": {"title": "title", "year": "year", "price": "float", "genre": ["fiction", "history", "science", "poetry"]},
    "sensors": {"sensor_id": "code", "reading": "float", "battery": "int", "site": pools.WAREHOUSES},
    "employees": {"name": "person", "age": "age", "salary": "int", "team": pools.TEAMS},
}
KIND_FILES = {
    "servers": ["servers", "hosts", "fleet"],
    "books": ["books", "catalog", "library"],
    "sensors": ["sensors", "readings", "probes"],
    "employees": ["employees", "staff", "people"],
}
TITLE_WORDS = ["River", "Glass", "Winter", "Signal", "Garden", "Iron", "Paper", "Silent", "Amber", "North"]


def _field_value(rng: random.Random, kind) -> object:
    if isinstance(kind, list):
        return rng.choice(kind)
    return {
        "host": lambda: f"{rng.choice(pools.APPS)}-{rng.randint(1, 60):02d}",
        "int": lambda: rng.randint(1, 512),
        "float": lambda: round(rng.uniform(0.1, 99.9), 2),
        "title": lambda: f"{rng.choice(TITLE_WORDS)} {rng.choice(TITLE_WORDS)}",
        "year": lambda: rng.randint(1950, 2024),
        "code": lambda: f"S-{rng.randint(100, 999)}",
        "person": lambda: f"{rng.choice(pools.PEOPLE).capitalize()} {rng.choice(pools.SURNAMES)}",
        "age": lambda: rng.randint(19, 66),
    }[kind]()


def _records(rng: random.Random, kind: str, n: int) -> list[dict]:
    fields = RECORD_KINDS[kind]
    out = []
    for i in range(n):
        rec = {"id": i + 1}
        rec.update({name: _field_value(rng, gen) for name, gen in fields.items()})
        out.append(rec)
    return out


def _cell(value) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


class FormatConvert(Family):
    name = "format_convert"
    domain = "data_processing"
    summary = "convert records between CSV, TSV, JSON, JSON Lines and YAML, with typing and flattening"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        kind = rng.choice(sorted(RECORD_KINDS))
        base = rng.choice(KIND_FILES[kind])
        records = _records(rng, kind, rng.randint(6, 14))
        fields = ["id", *RECORD_KINDS[kind]]
        selected = ["id", *rng.sample(fields[1:], rng.randint(2, len(fields) - 2))]  # at least one field left out
        root = rng.choice(pools.DATA_ROOTS)
        out_dir = rng.choice(pools.OUT_DIRS)
        mode = rng.choice(
            {"easy": ["csv2json", "tsv2csv"], "medium": ["json2csv", "jsonl2json"], "hard": ["yaml2csv", "nested2csv"]}[
                difficulty
            ]
        )
        files: dict[str, str] = {}
        typing_rule = (
            "numbers become JSON numbers (integers stay integers), empty cells become `null`, "
            "everything else stays a string"
        )

        if mode in ("csv2json", "tsv2csv", "json2csv", "jsonl2json"):
            for rec in records:  # some values are missing, one of them in a selected field
                if rng.random() < 0.25:
                    rec[rng.choice(fields[1:])] = None
            records[0][selected[1]] = None
        if mode == "csv2json":
            src, out = f"{root}/{base}.csv", f"{out_dir}/{base}.json"
            files[src] = csv_text(fields, [[_cell(r[f]) for f in fields] for r in records])
            want = [{f: r[f] for f in selected} for r in records]
            keys = ", ".join(f"`{f}`" for f in selected)
            instruction = (
                f"Convert `{src}` (CSV with a header line) to `{out}`: a JSON array with one object per row, "
                f"in file order, holding only the keys {keys}; {typing_rule}.\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import csv, json
                def typed(v):
                    if v == "":
                        return None
                    for cast in (int, float):
                        try:
                            return cast(v)
                        except ValueError:
                            pass
                    return v
                rows = [{{k: typed(row[k]) for k in {selected!r}}} for row in csv.DictReader(open({src!r}, newline=""))]
                json.dump(rows, open({out!r}, "w"), indent=2)
                """)
            near_misses = {
                "values_stay_strings": bent(solution, "typed(row[k])", "row[k] or None"),
                "keeps_all_columns": bent(solution, f"for k in {selected!r}", "for k in row"),
            }
            expected = {"path": out, "records": want, "format": "json"}
        elif mode == "tsv2csv":
            src, out = f"{root}/{base}.tsv", f"{out_dir}/{base}.csv"
            text_key = next(
                f
                for f in fields
                if isinstance(RECORD_KINDS[kind].get(f), str)
                and RECORD_KINDS[kind][f] in ("host", "title", "person", "code")
            )
            if text_key not in selected:  # the text column is converted, so its quoting is checked
                selected[-1] = text_key
            for i, rec in enumerate(records):  # text with commas needs CSV quoting
                if (i == 1 or rng.random() < 0.3) and rec[text_key] is not None:
                    rec[text_key] = f"{rec[text_key]}, {rng.choice(['Jr.', 'old', 'spare', 'draft'])}"
            columns = [selected[0], *rng.sample(selected[1:], len(selected) - 1)]
            files[src] = (
                "\t".join(fields) + "\n" + "".join("\t".join(_cell(r[f]) for f in fields) + "\n" for r in records)
            )
            want = [{f: _cell(r[f]) for f in columns} for r in records]
            instruction = (
                f"Convert `{src}` (tab-separated, header line) to `{out}`: standard CSV with the header "
                f"`{','.join(columns)}` (in that order) and the rows in file order; "
                "fields that contain commas must be quoted so that a CSV parser reads the original values back.\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import csv
                rows = list(csv.DictReader(open({src!r}, newline=""), delimiter="\\t"))
                with open({out!r}, "w", newline="") as handle:
                    w = csv.writer(handle)
                    w.writerow({columns!r})
                    w.writerows([row[c] for c in {columns!r}] for row in rows)
                """)
            picks = ", ".join(f"${fields.index(c) + 1}" for c in columns)
            near_misses = {
                "unquoted_commas": f"mkdir -p {out_dir}\nawk -F'\\t' -v OFS=, '{{ print {picks} }}' {src} > {out}\n",
                "keeps_all_columns": bent(solution, f"[row[c] for c in {columns!r}]", "list(row.values())"),
            }
            expected = {"path": out, "records": want, "format": "csv", "columns": columns}
        elif mode == "json2csv":
            columns = [selected[0], *rng.sample(selected[1:], len(selected) - 1)]
            src, out = f"{root}/{base}.json", f"{out_dir}/{base}.csv"
            floats = [c for c in columns if RECORD_KINDS[kind].get(c) == "float"]
            if floats:  # a value whose default text has one decimal, so the 2-digit rule shows
                records[-1][floats[0]] = round(rng.uniform(1, 90), 1) + 0.0
            data = [{k: v for k, v in r.items() if v is not None} for r in records]  # missing keys, not nulls
            files[src] = json.dumps(data, indent=2) + "\n"
            want = [{f: _cell(r[f]) for f in columns} for r in records]
            decimals = "; write decimals with 2 digits after the point" if floats else ""
            instruction = (
                f"Convert `{src}` (a JSON array of objects) to `{out}`: CSV with the header "
                f"`{','.join(columns)}` (in that order), "
                f"one row per object in array order; a key missing from an object gives an empty cell{decimals}.\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import csv, json
                cols = {columns!r}
                def cell(v):
                    return "" if v is None else "%.2f" % v if isinstance(v, float) else str(v)
                with open({out!r}, "w", newline="") as handle:
                    w = csv.writer(handle)
                    w.writerow(cols)
                    for obj in json.load(open({src!r})):
                        w.writerow([cell(obj.get(c)) for c in cols])
                """)
            near_misses = {
                "missing_as_none_text": bent(solution, "cell(obj.get(c))", "str(obj.get(c))"),
                "skips_incomplete_objects": bent(
                    solution,
                    "w.writerow([cell(obj.get(c)) for c in cols])",
                    "if all(c in obj for c in cols):\n            w.writerow([cell(obj.get(c)) for c in cols])",
                ),
            }
            if floats:
                near_misses["default_float_format"] = bent(solution, '"%.2f" % v if', "str(v) if")
            expected = {"path": out, "records": want, "format": "csv", "columns": columns}
        elif mode == "jsonl2json":
            sort_key = rng.choice(
                ["id"] + [f for f in fields[1:] if RECORD_KINDS[kind][f] in ("int", "year", "age")][:1]
            )
            src_dir, out = f"{root}/{base}", f"{out_dir}/{base}_{rng.choice(['merged', 'all', 'combined'])}.json"
            for rec in records:
                rec[sort_key] = rec[sort_key] if rec[sort_key] is not None else rng.randint(1, 99)
            parts = rng.randint(2, 3)
            shuffled = records[:]
            rng.shuffle(shuffled)
            for i in range(parts):
                files[f"{src_dir}/part{i + 1}.jsonl"] = "".join(
                    json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in shuffled[i::parts]
                )
            want = sorted(
                ([{k: v for k, v in r.items() if v is not None} for r in records]), key=lambda r: (r[sort_key], r["id"])
            )
            instruction = (
                f"The `.jsonl` files in `{src_dir}/` hold one JSON object per line. Merge them into `{out}`: "
                "a single JSON array of all objects, "
                f"unchanged, sorted by `{sort_key}` ascending (ties by `id`).\n"
            )
            solution = f"mkdir -p {out_dir}\ncat {src_dir}/*.jsonl | jq -s 'sort_by(.{sort_key}, .id)' > {out}\n"
            near_misses = {
                "unsorted": f"mkdir -p {out_dir}\ncat {src_dir}/*.jsonl | jq -s . > {out}\n",
                "reads_one_file": f"mkdir -p {out_dir}\njq -s 'sort_by(.{sort_key}, .id)' {src_dir}/part1.jsonl > {out}\n",
            }
            expected = {"path": out, "records": want, "format": "json", "ordered": True}
        else:
            # Nested records: YAML list or JSON Lines; flatten to dotted CSV columns.
            nested = []
            for i, r in enumerate(records):  # the first record has two tags or more, so the joining shows
                tags = rng.sample(
                    ["prod", "staging", "edge", "legacy", "gpu", "spot"], rng.randint(2 if i == 0 else 0, 3)
                )
                owner = {
                    "team": rng.choice(pools.TEAMS),
                    "contact": f"{rng.choice(pools.PEOPLE)}@{rng.choice(pools.MAIL_DOMAINS)}",
                }
                nested.append(
                    {
                        "id": r["id"],
                        "name": _field_value(rng, "host"),
                        "owner": owner,
                        "limits": {"cpu": rng.randint(1, 16), "memory_mb": rng.choice([256, 512, 1024, 2048, 4096])},
                        "tags": tags,
                    }
                )
            columns = ["id", "name", "owner.team", "owner.contact", "limits.cpu", "limits.memory_mb", "tags"]
            columns = columns[:2] + rng.sample(columns[2:6], rng.randint(2, 4)) + ["tags"]
            sep = rng.choice([";", "|", " "])
            want = []
            for r in nested:
                flat = {
                    "id": str(r["id"]),
                    "name": r["name"],
                    "owner.team": r["owner"]["team"],
                    "owner.contact": r["owner"]["contact"],
                    "limits.cpu": str(r["limits"]["cpu"]),
                    "limits.memory_mb": str(r["limits"]["memory_mb"]),
                    "tags": sep.join(r["tags"]),
                }
                want.append({c: flat[c] for c in columns})
            stem = rng.choice(["inventory", "hosts", "nodes"])
            if mode == "yaml2csv":
                src = f"{root}/{stem}.yaml"
                files[src] = _yaml_list(nested)
                what = f"`{src}` is a YAML list of records"
                loader = "import yaml\nrecords = yaml.safe_load(open(SRC))"
            else:
                src = f"{root}/{stem}.jsonl"
                files[src] = "".join(json.dumps(r) + "\n" for r in nested)
                what = f"`{src}` holds one JSON record per line"
                loader = "import json\nrecords = [json.loads(line) for line in open(SRC) if line.strip()]"
            out = f"{out_dir}/{stem}_{rng.choice(['flat', 'table', 'export'])}.csv"
            sep_name = {";": "`;`", "|": "`|`", " ": "single spaces"}[sep]
            instruction = (
                f"{what} with nested objects (`owner`, `limits`) and a `tags` list. "
                f"Flatten it into `{out}`: CSV with the header `{','.join(columns)}`, "
                "one row per record in input order; "
                "`owner.team` is `team` inside `owner`, and so on; `tags` joined "
                f"with {sep_name} (empty for no tags).\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import csv
                SRC = {src!r}
                {loader.splitlines()[0]}
                {loader.splitlines()[1]}
                cols = {columns!r}
                def get(rec, col):
                    if col == "tags":
                        return {sep!r}.join(rec.get("tags") or [])
                    value = rec
                    for part in col.split("."):
                        value = value[part]
                    return str(value)
                with open({out!r}, "w", newline="") as handle:
                    w = csv.writer(handle)
                    w.writerow(cols)
                    for rec in records:
                        w.writerow([get(rec, c) for c in cols])
                """)
            joined = f'return {sep!r}.join(rec.get("tags") or [])'
            near_misses = {
                "tags_as_list_text": bent(solution, joined, 'return str(rec.get("tags") or [])'),
                "tags_joined_with_commas": bent(solution, joined, 'return ",".join(rec.get("tags") or [])'),
            }
            expected = {"path": out, "records": want, "format": "csv", "columns": columns}
        body = """
            def _same(got, want):
                if want is None:
                    return got is None or got == ""
                if isinstance(want, bool) or not isinstance(want, (int, float)):
                    return str(got) == str(want)
                return not isinstance(got, bool) and isinstance(got, (int, float)) and abs(got - want) <= 0.011


            def test_converted_records():
                e = EXPECTED
                if e["format"] == "json":
                    data = load_json(e["path"])
                    assert isinstance(data, list), "the output must be a JSON array"
                    assert len(data) == len(e["records"]), f"{len(data)} records, expected {len(e['records'])}"
                    for got, want in zip(data, e["records"]):
                        assert isinstance(got, dict), f"{got!r} is not an object"
                        assert sorted(k for k in got if got[k] is not None) == sorted(k for k in want if want[k] is not None), f"keys of {got} != {want}"
                        for key, value in want.items():
                            assert _same(got.get(key), value), f"record {want.get('id')}: {key}={got.get(key)!r}, expected {value!r}"
                else:
                    rows = list(csv.reader(io.StringIO(read_text(e["path"]))))
                    rows = [r for r in rows if r]
                    assert rows and rows[0] == e["columns"], f"header {rows[:1]} != {e['columns']}"
                    assert len(rows) - 1 == len(e["records"]), f"{len(rows) - 1} rows, expected {len(e['records'])}"
                    for got, want in zip(rows[1:], e["records"]):
                        assert len(got) == len(e["columns"]), f"row {got} should have {len(e['columns'])} fields"
                        for col, cell in zip(e["columns"], got):
                            assert cell == want[col], f"row {got}: {col}={cell!r}, expected {want[col]!r}"
            """
        tests = test_module(self.name, expected, body, helpers=("json",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            extra={"mode": mode},
            near_misses=near_misses,
        )


def _yaml_list(records: list[dict]) -> str:
    """Block-style YAML for a list of flat-or-nested records (strings quoted when needed)."""

    def scalar(v):
        if isinstance(v, str):
            return (
                json.dumps(v)
                if any(ch in v for ch in ":#@,[]{}") or v.lower() in ("yes", "no", "on", "off", "true", "false", "null")
                else v
            )
        return str(v)

    lines = []
    for rec in records:
        first = True
        for key, value in rec.items():
            prefix = "- " if first else "  "
            first = False
            if isinstance(value, dict):
                lines.append(f"{prefix}{key}:")
                lines.extend(f"    {k}: {scalar(v)}" for k, v in value.items())
            elif isinstance(value, list):
                lines.append(
                    f"{prefix}{key}: [{', '.join(scalar(v) for v in value)}]" if value else f"{prefix}{key}: []"
                )
            else:
                lines.append(f"{prefix}{key}: {scalar(value)}")
    return "\n".join(lines) + "\n"
