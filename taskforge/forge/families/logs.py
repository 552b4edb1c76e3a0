"""Log and text families: web access-log reports, level counts in time windows, regex extraction."""

from __future__ import annotations

import random
import re

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
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
        # medium always has a gzip-compressed rotation (name.2.gz), so reading it is checked
        n_files = 1 if difficulty == "easy" else 3 if difficulty == "medium" else rng.randint(2, 3)
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
            method = rng.choice(["GET", "POST", None])
            if all(rec["method"] == (method or "GET") for rec in records):  # the method filter must matter
                records[0]["method"] = "PUT"
            counted = [rec for rec in records if method is None or rec["method"] == method]
            for rec in records[1:4] if len(counted) < 3 else []:
                rec["method"] = method
            counted = [rec for rec in records if method is None or rec["method"] == method]
            # a status that recurs after another one, so counting needs sorting first (uniq alone splits it)
            if counted[1]["status"] == counted[0]["status"]:
                counted[1]["status"] = 404 if counted[0]["status"] != 404 else 200
            counted[-1]["status"] = counted[0]["status"]
            counts: dict[str, int] = {}
            for rec in counted:
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

            def status_counts(requests: str, count: str = "sort | uniq -c") -> str:
                return (
                    f"mkdir -p {out_dir}\n"
                    f"awk '{requests + ' ' if requests else ''}{{ print $9 }}' {log_dir}/{name} | {count} \\\n"
                    f'  | jq -R -s \'split("\\n") | map(select(length > 0) | capture("(?<n>[0-9]+) (?<code>[0-9]+)")) '
                    "| {total: (map(.n | tonumber) | add // 0), "
                    f"by_status: (map({{key: .code, value: (.n | tonumber)}}) | from_entries)}}' > {out}\n"
                )

            filt = f'$6 == "\\"{method}"' if method else ""
            solution = status_counts(filt)
            near_misses = {"uniq_without_sort": status_counts(filt, count="uniq -c")}
            if method:
                near_misses["ignores_method"] = status_counts("")
            else:
                near_misses["counts_get_only"] = status_counts('$6 == "\\"GET"')
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
            near_misses = {
                "current_file_only": solution.replace(f"zcat -f {name}* >", f"cat {name} >"),
                "skips_compressed": solution.replace(f"zcat -f {name}* >", f"cat {name} {name}.1 >"),
            }
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
            # requests that must be left out: one for /health inside the window, one at its end hour
            for path, hour in (("/health", start_h), (rows[0][0], end_h)):
                extra = dict(rng.choice(records), method=method, path=path, hour=hour, minute=rng.randint(0, 59))
                extra["day"] = day + n_files - 1  # file 0 holds the newest day
                extra["status"] = 200
                entries.append((0, extra))
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
                            if method != {method!r} or url == "/health" or not {start_h} <= hour < {end_h}:
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
            near_misses = {
                "includes_health": bent(solution, ' or url == "/health"', ""),
                "end_hour_inclusive": bent(solution, f"hour < {end_h}", f"hour <= {end_h}"),
            }
            body = """
                def test_path_table():
                    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)
                """
        files: dict[str, str] = {}
        setup: list[str] = []
        for f in range(n_files):
            recs = sorted((rec for g, rec in entries if g == f), key=lambda rec: (rec["hour"], rec["minute"]))
            target = f"{log_dir}/{name}" if f == 0 else f"{log_dir}/{name}.{f}"
            files[target] = "\n".join(line(rec) for rec in recs) + "\n"
            if f >= 2:  # logrotate compresses from .2 on
                setup.append(f"gzip -n {target}")
        tests = test_module(self.name, expected, body, helpers=("json", "csv"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


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

        warning_shown: set[int] = set()  # entries written as WARNING (hard): one lies in the window

        def render(index: int, e) -> str:
            _, minute, off, service, level, cont = e
            shown = level
            if difficulty == "hard" and level == "WARN" and (index in warning_shown or rng.random() < 0.5):
                shown = "WARNING"
            stamp = f"2024-{month:02d}-{day + off:02d}T{minute // 60:02d}:{minute % 60:02d}:{rng.randint(0, 59):02d}Z"
            msg = rng.choice(MESSAGES[level])
            head = (
                f"{stamp} [{shown}] {service}: {msg}"
                if style == "bracket"
                else f'{stamp} level={shown} service={service} msg="{msg}"'
            )
            return "\n".join([head, *cont])

        name = rng.choice(["app.log", f"{app}.log", "service.log"])
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
        entry = r"^(\S+) \[([A-Z]+)\] (\S+):" if style == "bracket" else r"^(\S+) level=([A-Z]+) service=(\S+) "

        if difficulty == "easy":
            out = f"{out_dir}/{rng.choice(['level_counts', 'levels', 'log_levels'])}.json"
            service = rng.choice(services + [None])
            # make the scope matter: another service's entry, or a DEBUG entry to count
            if service and all(e[3] == service for e in entries):
                entries[0] = (*entries[0][:3], next(s for s in services if s != service), *entries[0][4:])
            if not service and all(e[4] != "DEBUG" for e in entries):
                entries[0] = (*entries[0][:4], "DEBUG", entries[0][5])
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
                svc_cond = f"$0 ~ /{'] ' + service + ':' if style == 'bracket' else 'service=' + service + ' '}/"

            def level_counts(match: str, condition: str, level: str = "m[1]") -> str:
                pattern = " && ".join(p for p in (match, condition) if p)
                return (
                    f"mkdir -p {out_dir}\n"
                    f"gawk '{pattern} {{ c[{level}]++ }} "
                    f"END {{ for (k in c) print k, c[k] }}' {log_dir}/{name} \\\n"
                    '  | jq -R -s \'split("\\n") | map(select(length > 0) | split(" ") '
                    f"| {{key: .[0], value: (.[1] | tonumber)}}) | from_entries' > {out}\n"
                )

            solution = level_counts(f"match($0, /{lvl}/, m)", svc_cond)
            near_misses = {"second_field_as_level": level_counts("", svc_cond, level="$2")}
            if service:
                near_misses["ignores_service"] = level_counts(f"match($0, /{lvl}/, m)", "")
            else:
                near_misses["skips_debug"] = level_counts(f"match($0, /{lvl}/, m)", 'm[1] != "DEBUG"')
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
                counting = [
                    f"        if level == {level!r}:",
                    "            counts[service] = counts.get(service, 0) + 1",
                ]
                all_levels = ["        counts[service] = counts.get(service, 0) + 1"]
                solution = _window_counts(out_dir, log_dir, name, entry, out, t0, t1, counting)
                near_misses = {
                    "ignores_window": _window_counts(out_dir, log_dir, name, entry, out, None, None, counting),
                    "counts_all_levels": _window_counts(out_dir, log_dir, name, entry, out, t0, t1, all_levels),
                }
            else:
                # one WARN entry in the window is written as WARNING
                warning_shown.add(entries.index(next(e for e in in_window if e[4] == "WARN")))
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
                alias = ['        level = "WARN" if level == "WARNING" else level']
                counting = [
                    '        if level in ("WARN", "ERROR"):',
                    "            per_level = counts.setdefault(service, {})",
                    "            per_level[level] = per_level.get(level, 0) + 1",
                ]
                solution = _window_counts(out_dir, log_dir, name, entry, out, t0, t1, alias + counting)
                near_misses = {
                    "warning_not_counted_as_warn": _window_counts(out_dir, log_dir, name, entry, out, t0, t1, counting),
                    "ignores_window": _window_counts(out_dir, log_dir, name, entry, out, None, None, alias + counting),
                }
        files = {}
        for f in range(n_files):
            lines = [render(i, e) for i, e in enumerate(entries) if e[0] == f]
            files[f"{log_dir}/{name}" if f == 0 else f"{log_dir}/{name}.{f}"] = "\n".join(lines) + "\n"
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
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            near_misses=near_misses,
        )


def _window_counts(
    out_dir: str, log_dir: str, name: str, entry: str, out: str, t0: str | None, t1: str | None, counting: list[str]
) -> str:
    """The medium/hard log_level_window program: entries in [t0, t1) (no window: a near-miss), counted by `counting`."""
    lines = [
        "import glob, json, re",
        f"entry = re.compile({entry!r})",
        "counts = {}",
        f"for path in glob.glob({log_dir + '/' + name + '*'!r}):",
        "    for line in open(path):",
        "        m = entry.match(line)",
        "        if not m:",
        "            continue",
        "        stamp, level, service = m.groups()",
    ]
    if t0 and t1:
        lines += [f"        if not {t0!r} <= stamp < {t1!r}:", "            continue"]
    lines += [*counting, f"json.dump(counts, open({out!r}, 'w'), indent=2)"]
    return f"mkdir -p {out_dir}\n" + python_block("\n".join(lines))


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


# What a too-loose extraction matches: the stated rule without its exclusions (a near-miss).
LOOSE = {
    "email": r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+",
    "ipv4": r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)",  # no 0-255 check
    "order": r"\bORD-\d+",
    "ticket": r"\b[A-Za-z]+-\d+\b",
}


def _loose_decoy(rng: random.Random, kind: str) -> str:
    """A decoy the loose pattern takes for an item, so that a too-loose extraction is caught."""
    if kind == "email":
        return f"{rng.choice(pools.PEOPLE)}@localhost"
    if kind == "ipv4":
        return f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "order":
        return f"ORD-{rng.randint(0, 99999):05d}"
    return f"{rng.choice(PROJECT_KEYS).lower()}-{rng.randint(1, 999)}"


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
                if rng.random() < 0.3:
                    words.insert(rng.randint(0, len(words)), _decoy(rng, kind))
                lines.append(" ".join(words) + rng.choice([".", "", ";"]))
            # every file names an item (the compressed one too) and the first holds a decoy that a
            # too-loose pattern takes; easy repeats an item, so listing each once matters
            extra = [rng.choice(vocab)] + (
                [rng.choice(sorted(occurrences.get(rel, vocab)))] if difficulty == "easy" else []
            )
            for token in extra:
                occurrences.setdefault(rel, {})
                occurrences[rel][token] = occurrences[rel].get(token, 0) + 1
                lines.insert(rng.randint(0, len(lines)), f"{rng.choice(FILLER)} {token} {rng.choice(FILLER)}")
            if f == 0:  # three times, so that medium's "at least N occurrences" keeps it too
                decoy = _loose_decoy(rng, kind)
                for _ in range(3):
                    lines.insert(rng.randint(0, len(lines)), f"{rng.choice(FILLER)} {decoy}")
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
            valid = "| awk -F. '$1<=255 && $2<=255 && $3<=255 && $4<=255' " if kind == "ipv4" else ""
            if by_first:
                found = [m.group(0) for m in re.finditer(regex, files[path])]
                want = list(dict.fromkeys(t for t in found if _valid(kind, t)))
                order = "in the order of their first appearance in the file"
                distinct, repeats = "| awk '!seen[$0]++'", ""
            else:
                want = sorted(totals)
                order = "sorted in ascending string order"
                distinct, repeats = "| sort -u", "| sort"
            solution = f"mkdir -p {out_dir}\ngrep -oP {_shell_quote(regex)} {path} {valid}{distinct} > {out}\n"
            near_misses = {
                "loose_pattern": f"mkdir -p {out_dir}\ngrep -oP {_shell_quote(LOOSE[kind])} {path} {distinct} > {out}\n",
                "keeps_repeats": f"mkdir -p {out_dir}\ngrep -oP {_shell_quote(regex)} {path} {valid}{repeats} > {out}\n",
            }
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
            loose = solution.replace(_shell_quote(regex), _shell_quote(LOOSE[kind]))
            if kind == "ipv4":
                solution = solution.replace(
                    "| sort | uniq -c", "| awk -F. '$1<=255 && $2<=255 && $3<=255 && $4<=255' | sort | uniq -c"
                )
            near_misses = {"loose_pattern": loose, "no_header": solution.replace("{ echo item,count; ", "{ ")}
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
            solution = f"mkdir -p {out_dir}\n" + _items_by_file(src, out, regex, kind == "ipv4", counted)
            near_misses = {
                "loose_pattern": f"mkdir -p {out_dir}\n" + _items_by_file(src, out, LOOSE[kind], False, counted),
                "skips_compressed": f"mkdir -p {out_dir}\n"
                + _items_by_file(src, out, regex, kind == "ipv4", counted, gzipped=False),
            }
            first_seen = [
                list(dict.fromkeys(m[0] for m in re.finditer(regex, text) if _valid(kind, m[0])))
                for text in files.values()
            ]
            if not counted and any(items != sorted(items) for items in first_seen):
                near_misses["lists_unsorted"] = f"mkdir -p {out_dir}\n" + _items_by_file(
                    src, out, regex, kind == "ipv4", counted, ordered=False
                )
            expected = {"path": out, "by_file": want, "mode": "json"}
            body = """
                def test_items_by_file():
                    data = load_json(EXPECTED["path"])
                    assert isinstance(data, dict), "the output must be a JSON object"
                    got = {k.lstrip("./"): v for k, v in data.items() if v}
                    assert got == EXPECTED["by_file"], f"{got} != {EXPECTED['by_file']}"
                """
        # Every expected item must really be valid and found by the reference pattern.
        for token in totals:
            assert re.fullmatch(regex, token) and _valid(kind, token), token
        tests = test_module(self.name, expected, body, helpers=("json", "csv"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


def _items_by_file(
    src: str, out: str, regex: str, check_octets: bool, counted: bool, *, gzipped: bool = True, ordered: bool = True
) -> str:
    """The hard regex_extract program; gzipped=False and ordered=False are near-misses."""
    lines = [
        "import gzip, json, os, re" if gzipped else "import json, os, re",
        f"pattern = re.compile({regex!r})",
        f"src = {src!r}",
        "result = {}",
        "for folder, _, names in os.walk(src):",
        "    for name in names:",
        "        path = os.path.join(folder, name)",
    ]
    if gzipped:
        lines += [
            '        opener = gzip.open if name.endswith(".gz") else open',
            '        with opener(path, "rt") as handle:',
        ]
    else:
        lines += ['        if name.endswith(".gz"):', "            continue", "        with open(path) as handle:"]
    lines.append("            found = [m.group(0) for m in pattern.finditer(handle.read())]")
    if check_octets:
        lines.append('        found = [t for t in found if all(int(p) <= 255 for p in t.split("."))]')
    lines += ["        if found:"]
    if counted:
        lines.append("            result[os.path.relpath(path, src)] = {t: found.count(t) for t in sorted(set(found))}")
    else:
        distinct = "sorted(set(found))" if ordered else "list(dict.fromkeys(found))"
        lines.append(f"            result[os.path.relpath(path, src)] = {distinct}")
    lines.append(f'json.dump(result, open({out!r}, "w"), indent=2)')
    return python_block("\n".join(lines))


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
