"""Log and text families: web access-log reports, level counts in time windows, regex extraction."""

from __future__ import annotations

import random
import re

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import bullets, pick, python_block, test_module

MONTH_ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
STATUS_WEIGHTS = [
    (200, 60),
    (201, 5),
    (204, 4),
    (301, 5),
    (304, 6),
    (400, 4),
    (401, 3),
    (403, 3),
    (404, 8),
    (500, 3),
    (502, 2),
    (503, 2),
]


def _ip(rng: random.Random, pool: list[str]) -> str:
    return rng.choice(pool)


def _ip_pool(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        ip = rng.choice(
            [
                f"10.0.{rng.randint(0, 9)}.{rng.randint(1, 254)}",
                f"192.168.{rng.randint(0, 3)}.{rng.randint(1, 254)}",
                f"172.16.{rng.randint(0, 9)}.{rng.randint(1, 254)}",
            ]
        )
        if ip not in out:
            out.append(ip)
    return out


def _status(rng: random.Random) -> int:
    return rng.choices([s for s, _ in STATUS_WEIGHTS], weights=[w for _, w in STATUS_WEIGHTS])[0]


class AccessLogReport(Family):
    name = "access_log_report"
    domain = "data_processing"
    summary = "summarise web server access logs (status counts, top clients, per-path stats), rotated and gzipped"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        log_dir = f"/var/log/{rng.choice(['nginx', 'apache2', 'httpd', app])}"
        out_dir = rng.choice(pools.OUT_DIRS)
        ips = _ip_pool(rng, rng.randint(4, 9))
        paths = pick(rng, pools.URL_PATHS, rng.randint(5, 9))
        if difficulty == "hard" and "/health" not in paths:
            paths.append("/health")
        day = rng.randint(1, 27)
        month = rng.randint(0, 11)
        n_files = 1 if difficulty == "easy" else rng.randint(2, 3)
        entries = []  # (file index, record)
        for f in range(n_files):
            for minute_of_day in sorted(rng.sample(range(24 * 60), rng.randint(25, 50))):
                rec = {
                    "ip": _ip(rng, ips),
                    "day": day + (n_files - 1 - f),  # older files hold older days
                    "hour": minute_of_day // 60,
                    "minute": minute_of_day % 60,
                    "method": rng.choices(pools.HTTP_METHODS, weights=[70, 20, 6, 4])[0],
                    "path": rng.choice(paths),
                    "status": _status(rng),
                }
                rec["bytes"] = (
                    "-" if rec["status"] in (204, 304) or rng.random() < 0.05 else str(rng.randint(120, 60000))
                )
                entries.append((f, rec))

        def line(rec: dict) -> str:
            stamp = (
                f"{rec['day']:02d}/{MONTH_ABBR[month]}/2024:{rec['hour']:02d}:{rec['minute']:02d}:"
                f"{rng.randint(0, 59):02d} +0000"
            )
            return (
                f'{rec["ip"]} - - [{stamp}] "{rec["method"]} {rec["path"]} HTTP/1.1" {rec["status"]} {rec["bytes"]} '
                f'"-" "{rng.choice(pools.USER_AGENTS)}"'
            )

        name = rng.choice(["access.log", f"{app}-access.log"])
        files: dict[str, str] = {}
        setup: list[str] = []
        by_file: dict[int, list[str]] = {}
        for f, rec in entries:
            by_file.setdefault(f, []).append(line(rec))
        for f, lines in by_file.items():
            target = f"{log_dir}/{name}" if f == 0 else f"{log_dir}/{name}.{f}"
            files[target] = "\n".join(lines) + "\n"
            if f >= 2:  # logrotate compresses from .2 on
                setup.append(f"gzip -n {target}")
        records = [rec for _, rec in entries]
        log_desc = (
            f"`{log_dir}/{name}`"
            if n_files == 1
            else (
                f"`{log_dir}/{name}` and its rotated predecessors "
                f"(`{name}.1`{', and `' + name + '.2.gz`, gzip-compressed' if n_files > 2 else ''})"
            )
        )
        fmt_note = (
            "The log uses the combined log format (client IP first, then the timestamp in brackets, "
            "the quoted request line, the status code and the response size, `-` meaning 0 bytes)."
        )

        if difficulty == "easy":
            out = f"{out_dir}/{rng.choice(['status_report', 'http_status', 'status_counts'])}.json"
            counts: dict[str, int] = {}
            for rec in records:
                counts[str(rec["status"])] = counts.get(str(rec["status"]), 0) + 1
            method = rng.choice(["GET", "POST", None])
            if method:
                counts = {}
                for rec in records:
                    if rec["method"] == method:
                        counts[str(rec["status"])] = counts.get(str(rec["status"]), 0) + 1
            total = sum(counts.values())
            scope = f"`{method}` requests" if method else "requests"
            instruction = (
                f"{log_desc} is a web server access log. {fmt_note}\n\n"
                f"Write `{out}`: a JSON object with `total`, the number of {scope}, and `by_status`, "
                "an object mapping each status code that occurs "
                f'(as a string, like `"404"`) to its number of {scope}.\n'
            )
            expected = {"path": out, "total": total, "by_status": counts}
            filt = f'$6 == "\\"{method}"' if method else "1"
            solution = (
                f"mkdir -p {out_dir}\n"
                f"awk '{filt} {{ print $9 }}' {log_dir}/{name} | sort | uniq -c \\\n"
                f'  | jq -R -s \'split("\\n") | map(select(length > 0) | capture("(?<n>[0-9]+) (?<code>[0-9]+)")) '
                "| {total: (map(.n | tonumber) | add // 0), "
                f"by_status: (map({{key: .code, value: (.n | tonumber)}}) | from_entries)}}' > {out}\n"
            )
            body = """
                def test_status_counts():
                    data = load_json(EXPECTED["path"])
                    assert int(data["total"]) == EXPECTED["total"], f"total {data['total']} != {EXPECTED['total']}"
                    got = {str(k): int(v) for k, v in data["by_status"].items() if int(v)}
                    assert got == EXPECTED["by_status"], f"by_status {got} != {EXPECTED['by_status']}"
                """
        elif difficulty == "medium":
            top_n = rng.randint(3, min(5, len(ips)))
            out = f"{out_dir}/{rng.choice(['top_clients', 'client_report', 'traffic_summary'])}.json"
            per_ip: dict[str, int] = {}
            total_bytes = 0
            for rec in records:
                per_ip[rec["ip"]] = per_ip.get(rec["ip"], 0) + 1
                total_bytes += 0 if rec["bytes"] == "-" else int(rec["bytes"])
            ranked = sorted(per_ip.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
            instruction = (
                f"{log_desc} are web server access logs. {fmt_note}\n\n"
                f"Write `{out}`: a JSON object with\n"
                + bullets(
                    [
                        (
                            f"`top_clients`: the {top_n} client IPs with the most requests across all the files, as a "
                            'list of `{"ip": ..., "requests": ...}`, most requests first, ties by IP (string order)'
                        ),
                        "`total_bytes`: the sum of the response sizes of all requests",
                        "`requests`: the total number of requests",
                    ]
                )
                + "\n"
            )
            expected = {
                "path": out,
                "top": [{"ip": ip, "requests": c} for ip, c in ranked],
                "total_bytes": total_bytes,
                "requests": len(records),
            }
            solution = (
                f"mkdir -p {out_dir}\n"
                f"cd {log_dir}\n"
                f"zcat -f {name}* > /tmp/all.log\n"
                f"top=$(awk '{{ print $1 }}' /tmp/all.log | sort | uniq -c | sort -k1,1nr -k2,2 | head -n {top_n} | "
                'jq -R -s \'split("\\n") | map(select(length > 0) | capture(" *(?<n>[0-9]+) (?<ip>[0-9.]+)") '
                "| {ip: .ip, requests: (.n | tonumber)})')\n"
                f'bytes=$(awk \'$10 != "-" {{ s += $10 }} END {{ printf "%d", s }}\' /tmp/all.log)\n'
                f"n=$(wc -l < /tmp/all.log)\n"
                'jq -n --argjson top "$top" --argjson bytes "$bytes" --argjson n "$n" '
                f"'{{top_clients: $top, total_bytes: $bytes, requests: $n}}' > {out}\n"
            )
            body = """
                def test_client_report():
                    data = load_json(EXPECTED["path"])
                    assert int(data["requests"]) == EXPECTED["requests"], f"requests {data['requests']} != {EXPECTED['requests']}"
                    assert int(data["total_bytes"]) == EXPECTED["total_bytes"], f"total_bytes {data['total_bytes']} != {EXPECTED['total_bytes']}"
                    got = [(str(d["ip"]), int(d["requests"])) for d in data["top_clients"]]
                    want = [(d["ip"], d["requests"]) for d in EXPECTED["top"]]
                    assert got == want, f"top_clients {got} != {want}"
                """
        else:
            method = rng.choice(["GET", "POST"])
            out = f"{out_dir}/{rng.choice(['path_stats', 'endpoint_report', 'paths'])}.csv"
            for _ in range(30):  # a window that catches at least two paths
                start_h = rng.randint(0, 17)
                end_h = start_h + rng.randint(3, 6)
                stats: dict[str, list[int]] = {}
                for rec in records:
                    if rec["method"] != method or rec["path"] == "/health" or not (start_h <= rec["hour"] < end_h):
                        continue
                    s = stats.setdefault(rec["path"], [0, 0, 0])
                    s[0] += 1
                    s[1] += 1 if rec["status"] >= 500 else 0
                    s[2] += 0 if rec["bytes"] == "-" else int(rec["bytes"])
                if len(stats) >= 2:
                    break
            rows = sorted(([p, *v] for p, v in stats.items()), key=lambda r: (-r[1], r[0]))
            instruction = (
                f"{log_desc} are web server access logs. {fmt_note}\n\n"
                f"Write `{out}` with the header `path,requests,errors,bytes`:\n"
                + bullets(
                    [
                        (
                            f"count only `{method}` requests whose time of day is from {start_h:02d}:00 (inclusive) "
                            f"to {end_h:02d}:00 (exclusive), on any day, across all the files"
                        ),
                        "leave out requests for `/health`",
                        (
                            "one row per request path: number of requests, how many had a "
                            "5xx status, sum of response sizes"
                        ),
                        "most requests first, ties by path",
                    ]
                )
                + "\n"
            )
            expected = {
                "path": out,
                "header": ["path", "requests", "errors", "bytes"],
                "rows": rows,
                "numeric": ["requests", "errors", "bytes"],
            }
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import csv, glob, gzip, re
                pat = re.compile(r'^(\\S+) \\S+ \\S+ \\[[^:]+:(\\d\\d):\\d\\d:\\d\\d [^]]+\\] "(\\S+) (\\S+) [^"]*" (\\d{{3}}) (\\S+)')
                stats = {{}}
                for path in glob.glob({log_dir + "/" + name + "*"!r}):
                    opener = gzip.open if path.endswith(".gz") else open
                    with opener(path, "rt") as handle:
                        for line in handle:
                            m = pat.match(line)
                            if not m:
                                continue
                            hour, method, url, status, size = int(m[2]), m[3], m[4], int(m[5]), m[6]
                            if method != {method!r} or url == "/health" or not ({start_h} <= hour < {end_h}):
                                continue
                            s = stats.setdefault(url, [0, 0, 0])
                            s[0] += 1
                            s[1] += status >= 500
                            s[2] += 0 if size == "-" else int(size)
                rows = sorted(([p, *v] for p, v in stats.items()), key=lambda r: (-r[1], r[0]))
                with open({out!r}, "w", newline="") as handle:
                    w = csv.writer(handle)
                    w.writerow(["path", "requests", "errors", "bytes"])
                    w.writerows(rows)
                """)
            body = """
                def test_path_table():
                    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)
                """
        helpers = ("json", "csv")
        tests = test_module(self.name, expected, body, helpers=helpers)
        return Draft(instruction=instruction, tests=tests, solution=solution, outputs=[out], files=files, setup=setup)


# ------------------------------------------------------------------------------------------
# Log levels in a time window

SERVICES = ["api", "worker", "auth", "billing", "search", "cron", "mailer", "gateway"]
MESSAGES = {
    "DEBUG": ["cache lookup", "retrying request", "payload parsed", "connection reused"],
    "INFO": ["request served", "job finished", "user logged in", "config reloaded"],
    "WARN": ["slow query", "retry budget low", "disk 85% full", "deprecated flag used"],
    "ERROR": ["upstream timeout", "database unavailable", "payment declined", "unhandled exception"],
}


class LogLevelWindow(Family):
    name = "log_level_window"
    domain = "data_processing"
    summary = "count application log entries by level and service, within a time window, with multi-line entries"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        services = pick(rng, SERVICES, rng.randint(3, 5))
        style = rng.choice(["bracket", "logfmt"])
        log_dir = f"/var/log/{app}"
        out_dir = rng.choice(pools.OUT_DIRS)
        month, day = rng.randint(1, 12), rng.randint(1, 26)
        n_files = 1 if difficulty == "easy" else rng.randint(2, 3)
        entries = []  # (file, minute-of-day, day offset, service, level, continuation lines)
        for f in range(n_files):
            minute = rng.randint(0, 120)
            for _ in range(rng.randint(25, 45)):
                minute = min(24 * 60 - 1, minute + rng.randint(1, 35))
                level = rng.choices(["DEBUG", "INFO", "WARN", "ERROR"], weights=[2, 5, 3, 2])[0]
                cont = []
                if difficulty == "hard" and level == "ERROR" and rng.random() < 0.6:
                    cont = [
                        "Traceback (most recent call last):",
                        f'  File "/srv/{app}/handler.py", line {rng.randint(10, 300)}, in handle',
                        '    raise TimeoutError("ERROR upstream")',
                        "TimeoutError: ERROR upstream",
                    ][: rng.randint(2, 4)]
                entries.append((f, minute, n_files - 1 - f, rng.choice(services), level, cont))

        def render(e) -> str:
            _, minute, off, service, level, cont = e
            shown = level
            if difficulty == "hard" and level == "WARN" and rng.random() < 0.5:
                shown = "WARNING"
            stamp = f"2024-{month:02d}-{day + off:02d}T{minute // 60:02d}:{minute % 60:02d}:{rng.randint(0, 59):02d}Z"
            msg = rng.choice(MESSAGES[level])
            head = (
                f"{stamp} [{shown}] {service}: {msg}"
                if style == "bracket"
                else f'{stamp} level={shown} service={service} msg="{msg}"'
            )
            return "\n".join([head, *cont])

        files = {}
        name = rng.choice(["app.log", f"{app}.log", "service.log"])
        for f in range(n_files):
            lines = [render(e) for e in entries if e[0] == f]
            files[f"{log_dir}/{name}" if f == 0 else f"{log_dir}/{name}.{f}"] = "\n".join(lines) + "\n"
        sample = (
            "`2024-03-05T10:15:22Z [ERROR] api: upstream timeout`"
            if style == "bracket"
            else '`2024-03-05T10:15:22Z level=ERROR service=api msg="upstream timeout"`'
        )
        where = (
            f"`{log_dir}/{name}`"
            if n_files == 1
            else f"`{log_dir}/{name}` and its rotated predecessors `{name}.1`"
            + (f", `{name}.2`" if n_files > 2 else "")
        )
        intro = (
            f"{where} {'is an application log' if n_files == 1 else 'are application logs'}; "
            f"entries look like {sample}."
        )

        if difficulty == "easy":
            out = f"{out_dir}/{rng.choice(['level_counts', 'levels', 'log_levels'])}.json"
            service = rng.choice(services + [None])
            counts: dict[str, int] = {}
            for e in entries:
                if service is None or e[3] == service:
                    counts[e[4]] = counts.get(e[4], 0) + 1
            scope = f" from the `{service}` service" if service else ""
            instruction = (
                f"{intro}\n\nWrite `{out}`: a JSON object mapping each log level to its number of entries{scope}, e.g. "
                '`{"INFO": 12, "ERROR": 3}`; include only levels that occur.\n'
            )
            expected = {"path": out, "counts": counts, "nested": False}
            lvl = r"\[([A-Z]+)\]" if style == "bracket" else r"level=([A-Z]+)"
            svc_cond = ""
            if service:
                svc_cond = f" && $0 ~ /{'] ' + service + ':' if style == 'bracket' else 'service=' + service + ' '}/"
            solution = (
                f"mkdir -p {out_dir}\n"
                f"gawk 'match($0, /{lvl}/, m){svc_cond} {{ c[m[1]]++ }} "
                f"END {{ for (k in c) print k, c[k] }}' {log_dir}/{name} \\\n"
                '  | jq -R -s \'split("\\n") | map(select(length > 0) | split(" ") '
                f"| {{key: .[0], value: (.[1] | tonumber)}}) | from_entries' > {out}\n"
            )
        else:
            for _ in range(30):  # a window with WARN and ERROR entries in it
                start = rng.randint(2, 14) * 60
                end = start + rng.randint(3, 8) * 60
                window_day = day + rng.randint(0, n_files - 1)
                in_window = [e for e in entries if day + e[2] == window_day and start <= e[1] < end]
                if {"WARN", "ERROR"} <= {e[4] for e in in_window}:
                    break
            t0 = f"2024-{month:02d}-{window_day:02d}T{start // 60:02d}:00:00Z"
            t1 = f"2024-{month:02d}-{window_day:02d}T{end // 60:02d}:00:00Z"
            out = f"{out_dir}/{rng.choice(['window_counts', 'incident_window', 'levels_by_service'])}.json"
            if difficulty == "medium":
                level = rng.choice(["ERROR", "WARN"])
                counts = {}
                for e in in_window:
                    if e[4] == level:
                        counts[e[3]] = counts.get(e[3], 0) + 1
                instruction = (
                    f"{intro}\n\nWrite `{out}`: a JSON object mapping each service to its number of `{level}` entries "
                    f"with a timestamp from `{t0}` (inclusive) "
                    f"to `{t1}` (exclusive), across all the files. Leave out services with no such entries.\n"
                )
                expected = {"path": out, "counts": counts, "nested": False}
            else:
                nested: dict[str, dict[str, int]] = {}
                for e in in_window:
                    if e[4] in ("WARN", "ERROR"):
                        nested.setdefault(e[3], {}).setdefault(e[4], 0)
                        nested[e[3]][e[4]] += 1
                instruction = (
                    f"{intro} Some entries span several lines (a stack trace follows the first line); "
                    "count each entry once.\n\n"
                    f"Write `{out}`: a JSON object mapping each service to an object that maps `WARN` and `ERROR` to "
                    "the number of entries of that level "
                    f"with a timestamp from `{t0}` (inclusive) to `{t1}` (exclusive), across all the files. "
                    "The level `WARNING` counts as `WARN`. "
                    f"Leave out services with no such entries, and levels with a count of 0.\n"
                )
                expected = {"path": out, "counts": nested, "nested": True}
                level = None
            pattern = r"^(\S+) \[([A-Z]+)\] (\S+):" if style == "bracket" else r"^(\S+) level=([A-Z]+) service=(\S+) "
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import glob, json, re
                pat = re.compile({pattern!r})
                counts = {{}}
                for path in glob.glob({log_dir + "/" + name + "*"!r}):
                    for line in open(path):
                        m = pat.match(line)
                        if not m:
                            continue
                        stamp, level, service = m.groups()
                        level = "WARN" if level == "WARNING" else level
                        if not ({t0!r} <= stamp < {t1!r}):
                            continue
                        if {level!r} is None:
                            if level in ("WARN", "ERROR"):
                                counts.setdefault(service, {{}}).setdefault(level, 0)
                                counts[service][level] += 1
                        elif level == {level!r}:
                            counts[service] = counts.get(service, 0) + 1
                json.dump(counts, open({out!r}, "w"), indent=2)
                """)
        body = """
            def test_counts():
                data = load_json(EXPECTED["path"])
                assert isinstance(data, dict), "the output must be a JSON object"
                want = EXPECTED["counts"]
                if EXPECTED["nested"]:
                    got = {s: {lvl: int(n) for lvl, n in v.items() if int(n)} for s, v in data.items()}
                    got = {s: v for s, v in got.items() if v}
                else:
                    got = {k: int(v) for k, v in data.items() if int(v)}
                assert got == want, f"{got} != {want}"
            """
        tests = test_module(self.name, expected, body, helpers=("json",))
        return Draft(instruction=instruction, tests=tests, solution=solution, outputs=[out], files=files)


# ------------------------------------------------------------------------------------------
# Regex extraction

PROJECT_KEYS = ["OPS", "WEB", "DATA", "SEC", "PAY", "CORE"]
FILLER = [
    "processed batch",
    "user reported",
    "see thread",
    "escalated to",
    "closed after review",
    "mentioned by",
    "blocked on",
    "follow-up for",
    "copied from",
    "linked to",
]


def _item(rng: random.Random, kind: str) -> str:
    if kind == "email":
        return (
            f"{rng.choice(pools.PEOPLE)}{rng.choice(['', '.ops', '.dev', '_' + str(rng.randint(1, 9))])}@"
            f"{rng.choice(pools.MAIL_DOMAINS)}"
        )
    if kind == "ipv4":
        return f"{rng.choice([10, 172, 192])}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "order":
        return f"ORD-{rng.randint(0, 999999):06d}"
    return f"{rng.choice(PROJECT_KEYS)}-{rng.randint(1, 4999)}"


def _decoy(rng: random.Random, kind: str) -> str:
    """Text that looks like an item but breaks the stated rule."""
    if kind == "email":
        return rng.choice(
            [
                f"{rng.choice(pools.PEOPLE)}(at){rng.choice(pools.MAIL_DOMAINS)}",
                f"@{rng.choice(pools.PEOPLE)}",
                f"{rng.choice(pools.PEOPLE)}@localhost",
            ]
        )
    if kind == "ipv4":
        return rng.choice(
            [
                f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                f"10.{rng.randint(0, 255)}.{rng.randint(300, 999)}.1",
                f"{rng.randint(1, 99)}.{rng.randint(1, 99)}.{rng.randint(1, 99)}",
            ]
        )
    if kind == "order":
        return rng.choice(
            [
                f"ORD-{rng.randint(0, 99999):05d}",
                f"ord-{rng.randint(0, 999999):06d}",
                f"ORD-{rng.randint(1000000, 9999999)}",
            ]
        )
    return rng.choice(
        [
            f"{rng.choice(PROJECT_KEYS).lower()}-{rng.randint(1, 999)}",
            f"{rng.choice(PROJECT_KEYS)}_{rng.randint(1, 999)}",
            f"X-{rng.randint(1, 99)}",
        ]
    )


KIND_RULES = {
    "email": (
        "email addresses",
        (
            "an email address is `local@domain.tld`: letters, digits, `.`, `_` or `-` before the `@`, "
            "and a domain with at least one dot; `name(at)host` and `name@localhost` do not count"
        ),
        r"[A-Za-z0-9._-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+",
    ),
    "ipv4": (
        "IPv4 addresses",
        (
            "an IPv4 address is four dot-separated numbers, each from 0 to 255; anything else (such as `300.1.2.3` "
            "or three numbers) does not count"
        ),
        r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)",
    ),
    "order": (
        "order IDs",
        "an order ID is `ORD-` followed by exactly 6 digits (uppercase `ORD`, not followed by another digit)",
        r"\bORD-\d{6}(?!\d)",
    ),
    "ticket": (
        "ticket keys",
        (
            f"a ticket key is one of the project keys {', '.join('`' + k + '`' for k in PROJECT_KEYS)}, "
            "a hyphen and a number (uppercase key; `ops-12` or `OPS_12` do not count)"
        ),
        r"\b(?:" + "|".join(PROJECT_KEYS) + r")-\d+\b",
    ),
}


def _valid(kind: str, token: str) -> bool:
    if kind == "ipv4":
        return all(0 <= int(p) <= 255 for p in token.split("."))
    return True


class RegexExtract(Family):
    name = "regex_extract"
    domain = "data_processing"
    summary = "extract emails, IPv4 addresses, order IDs or ticket keys from text files by pattern"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        kind = rng.choice(sorted(KIND_RULES))
        plural, rule, regex = KIND_RULES[kind]
        root = rng.choice(pools.DATA_ROOTS)
        out_dir = rng.choice(pools.OUT_DIRS)
        doc = rng.choice(["notes", "messages", "support", "audit", "handover"])
        n_files = 1 if difficulty == "easy" else rng.randint(2, 4)
        vocab = sorted(
            {_item(rng, kind) for _ in range(rng.randint(5, 10) if difficulty != "hard" else rng.randint(10, 16))}
        )
        occurrences: dict[str, dict[str, int]] = {}
        files: dict[str, str] = {}
        setup: list[str] = []
        for f in range(n_files):
            rel = (
                f"{doc}.txt"
                if n_files == 1
                else (
                    f"{doc}-{f + 1}.txt"
                    if difficulty == "medium"
                    else f"{rng.choice(['2023', '2024'])}/{rng.choice(['q1', 'q2', 'q3', 'q4'])}/{doc}-{f + 1}.txt"
                )
            )
            lines = []
            for _ in range(rng.randint(10, 20) if difficulty != "hard" else rng.randint(5, 9)):
                words = [rng.choice(FILLER)]
                for _ in range(rng.randint(0, 2)):
                    token = rng.choice(vocab)
                    occurrences.setdefault(rel, {})
                    occurrences[rel][token] = occurrences[rel].get(token, 0) + 1
                    words.append(rng.choice([token, f"({token})", f"{token},", f"<{token}>"]))
                    words.append(rng.choice(FILLER))
                if difficulty != "easy" and rng.random() < 0.3:
                    words.insert(rng.randint(0, len(words)), _decoy(rng, kind))
                lines.append(" ".join(words) + rng.choice([".", "", ";"]))
            path = f"{root}/{doc}/{rel}"
            files[path] = "\n".join(lines) + "\n"
            if difficulty == "hard" and f == n_files - 1 and n_files > 1:
                setup.append(f"gzip -n {path}")
                occurrences[rel + ".gz"] = occurrences.pop(rel, {})
        totals: dict[str, int] = {}
        for per in occurrences.values():
            for token, c in per.items():
                totals[token] = totals.get(token, 0) + c
        src = f"{root}/{doc}"

        if difficulty == "easy":
            (path,) = files
            out = f"{out_dir}/{kind}_{rng.choice(['list', 'found', 'extracted'])}.txt"
            by_first = rng.random() < 0.5
            if by_first:
                found = [m.group(0) for m in re.finditer(regex, files[path])]
                want = list(dict.fromkeys(found))
                order = "in the order of their first appearance in the file"
                solution = f"mkdir -p {out_dir}\ngrep -oP {_shell_quote(regex)} {path} | awk '!seen[$0]++' > {out}\n"
            else:
                want = sorted(totals)
                order = "sorted in ascending string order"
                solution = f"mkdir -p {out_dir}\ngrep -oP {_shell_quote(regex)} {path} | sort -u > {out}\n"
            instruction = (
                f"`{path}` contains {plural} scattered through free text; {rule}.\n\n"
                f"Write every distinct one to `{out}`, one per line, {order} (no other lines).\n"
            )
            expected = {"path": out, "items": want, "mode": "list"}
            body = """
                def test_items():
                    got = content_lines(EXPECTED["path"])
                    assert got == EXPECTED["items"], f"{got} != {EXPECTED['items']}"
                """
        elif difficulty == "medium":
            out = f"{out_dir}/{kind}_{rng.choice(['counts', 'frequency', 'tally'])}.csv"
            at_least = rng.choice([1, 1, 2, 3])
            rows = sorted(([t, c] for t, c in totals.items() if c >= at_least), key=lambda r: (-r[1], r[0]))
            if not rows:
                at_least = 1
                rows = sorted(([t, c] for t, c in totals.items()), key=lambda r: (-r[1], r[0]))
            limit = f", leaving out items that occur fewer than {at_least} times" if at_least > 1 else ""
            instruction = (
                f"The `.txt` files in `{src}/` contain {plural} in free text; {rule}.\n\n"
                f"Write `{out}` with the header `item,count`: one row per distinct item with its number of occurrences "
                f"over all the files{limit}, most frequent first, ties by item (ascending string order).\n"
            )
            solution = (
                f"mkdir -p {out_dir}\n"
                f"{{ echo item,count; cat {src}/*.txt | grep -oP {_shell_quote(regex)} | sort | uniq -c | sort -k1,1nr "
                f"-k2,2 | awk '$1 >= {at_least} {{ print $2 \",\" $1 }}'; }} > {out}\n"
            )
            if kind == "ipv4":
                solution = solution.replace(
                    "| sort | uniq -c", "| awk -F. '$1<=255 && $2<=255 && $3<=255 && $4<=255' | sort | uniq -c"
                )
            expected = {"path": out, "header": ["item", "count"], "rows": rows, "numeric": ["count"], "mode": "csv"}
            body = """
                def test_counts():
                    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)
                """
        else:
            out = f"{out_dir}/{kind}_{rng.choice(['by_file', 'per_file', 'file_index'])}.json"
            counted = rng.random() < 0.5
            if counted:
                want = {rel: dict(sorted(per.items())) for rel, per in sorted(occurrences.items()) if per}
                value = "an object mapping each distinct item in it to its number of occurrences"
            else:
                want = {rel: sorted(per) for rel, per in sorted(occurrences.items()) if per}
                value = "the sorted list of distinct items in it"
            instruction = (
                f"`{src}/` holds text files in nested folders (one gzip-compressed, "
                f"`.txt.gz`) with {plural}; {rule}.\n\n"
                f"Write `{out}`: a JSON object mapping each file's path relative to `{src}/` "
                f"(like `2024/q1/{doc}-1.txt`, `.gz` kept) to {value}; leave out files without any.\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import gzip, json, os, re
                pat = re.compile({regex!r})
                src = {src!r}
                result = {{}}
                for folder, _, names in os.walk(src):
                    for name in names:
                        path = os.path.join(folder, name)
                        opener = gzip.open if name.endswith(".gz") else open
                        with opener(path, "rt") as handle:
                            found = [m.group(0) for m in pat.finditer(handle.read())]
                        if {kind == "ipv4"}:
                            found = [t for t in found if all(int(p) <= 255 for p in t.split("."))]
                        if found:
                            counts = {{t: found.count(t) for t in sorted(set(found))}}
                            result[os.path.relpath(path, src)] = counts if {counted} else sorted(counts)
                json.dump(result, open({out!r}, "w"), indent=2)
                """)
            expected = {"path": out, "by_file": want, "mode": "json"}
            body = """
                def test_items_by_file():
                    data = load_json(EXPECTED["path"])
                    assert isinstance(data, dict), "the output must be a JSON object"
                    got = {k.lstrip("./"): (v if isinstance(v, dict) else sorted(v)) for k, v in data.items() if v}
                    assert got == EXPECTED["by_file"], f"{got} != {EXPECTED['by_file']}"
                """
        # Every expected item must really be valid and found by the reference pattern.
        for token in totals:
            assert re.fullmatch(regex, token) and _valid(kind, token), token
        tests = test_module(self.name, expected, body, helpers=("json", "csv"))
        return Draft(instruction=instruction, tests=tests, solution=solution, outputs=[out], files=files, setup=setup)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
