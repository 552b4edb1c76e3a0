"""Configuration-file families: cron.d jobs, systemd units, layered .env files, logrotate policies."""

from __future__ import annotations

import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import add_group, add_user, bullets, heredoc, pick, python_block, test_module

DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
CRON_TASKS = ["backup", "cleanup", "report", "sync", "rotate", "healthcheck", "reindex", "export"]


def _schedule(rng: random.Random) -> tuple[str, str]:
    """(English phrase, a cron expression for it)."""
    h, m = rng.randint(0, 23), rng.choice([0, 5, 10, 15, 20, 30, 45, 50])
    kind = rng.choice(["daily", "minutes", "hourly", "weekdays", "weekly", "monthly", "hours"])
    if kind == "daily":
        return f"every day at {h:02d}:{m:02d}", f"{m} {h} * * *"
    if kind == "minutes":
        n = rng.choice([5, 10, 15, 20, 30])
        return f"every {n} minutes", f"*/{n} * * * *"
    if kind == "hourly":
        return f"every hour at minute {m}", f"{m} * * * *"
    if kind == "weekdays":
        return f"Monday to Friday at {h:02d}:{m:02d}", f"{m} {h} * * 1-5"
    if kind == "weekly":
        d = rng.randint(0, 6)
        return f"every {DAYS[d]} at {h:02d}:{m:02d}", f"{m} {h} * * {d}"
    if kind == "monthly":
        dom = rng.randint(1, 28)
        return f"on day {dom} of every month at {h:02d}:{m:02d}", f"{m} {h} {dom} * *"
    n = rng.choice([2, 3, 4, 6, 8, 12])
    return f"every {n} hours, on the hour (00:00, {n:02d}:00, ...)", f"0 */{n} * * *"


CRON_TEST = '''
NAMES = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
         "sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
SPECIAL = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}


def expand(field, lo, hi):
    values = set()
    for part in field.lower().split(","):
        rng, _, step = part.partition("/")
        step = int(step) if step else 1
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (int(NAMES.get(x, x)) for x in rng.split("-"))
        else:
            a = int(NAMES.get(rng, rng))
            b = hi if step > 1 else a
        values.update(range(a, b + 1, step))
    return values


def schedule_sets(fields):
    sets = [expand(f, lo, hi) for f, (lo, hi) in zip(fields, BOUNDS)]
    sets[4] = {0 if d == 7 else d for d in sets[4]}
    return sets


def cron_jobs(path):
    """command -> (user, [minute, hour, dom, month, dow] as sets), and the KEY=value lines."""
    jobs, env = {}, {}
    for raw in read_text(path).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\\s*=", line):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
            continue
        parts = line.split()
        if parts[0] in SPECIAL:
            parts = SPECIAL[parts[0]].split() + parts[1:]
        assert len(parts) >= 7, f"{path}: not a cron.d job line (5 time fields, user, command): {line!r}"
        command = " ".join(parts[6:])
        assert command not in jobs, f"{path}: the job {command!r} appears twice"
        jobs[command] = (parts[5], schedule_sets(parts[:5]))
    return jobs, env


def test_jobs():
    jobs, env = cron_jobs(EXPECTED["path"])
    want = EXPECTED["jobs"]
    assert sorted(jobs) == sorted(want), f"jobs for {sorted(jobs)}, expected {sorted(want)}"
    for command, (user, expr) in want.items():
        got_user, got_sets = jobs[command]
        assert got_user == user, f"{command}: runs as {got_user}, expected {user}"
        assert got_sets == schedule_sets(expr.split()), f"{command}: schedule does not match {expr!r}"


def test_environment_and_mode():
    jobs, env = cron_jobs(EXPECTED["path"])
    for key, value in EXPECTED["env"].items():
        assert env.get(key) == value, f"{key}={env.get(key)!r}, expected {value!r}"
    mode = os.stat(EXPECTED["path"]).st_mode & 0o777
    assert not mode & 0o022, f"{EXPECTED['path']} is group- or world-writable (mode {mode:o}); cron ignores such files"
'''


class CronSchedule(Family):
    name = "cron_schedule"
    domain = "system_operations"
    summary = "write or edit /etc/cron.d jobs from schedules given in words"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        tasks = pick(rng, CRON_TASKS, 5)
        rng.shuffle(tasks)
        user = rng.choice(pools.SERVICE_ACCOUNTS + ["root"])
        path = f"/etc/cron.d/{app}-{rng.choice(['jobs', 'maintenance', 'tasks'])}"

        def command(task: str) -> str:
            return f"/usr/local/bin/{app}-{task}.sh" + (" --quiet" if rng.random() < 0.3 else "")

        jobs = [(command(t), *_schedule(rng)) for t in tasks]  # (command, phrase, expr)
        setup = [add_user(user, system=True)] if user != "root" else []
        files: dict[str, str] = {}
        env: dict[str, str] = {}
        for command_line, _, _ in jobs:  # the scripts the jobs run exist
            script = command_line.split()[0]
            files[script] = (
                f"#!/bin/sh\n# {script.rsplit('/', 1)[1]}: {app} maintenance ({rng.randint(1000, 9999)})\nexit 0\n"
            )
        setup.append("chmod 755 /usr/local/bin/*.sh")
        if difficulty in ("easy", "medium"):
            chosen = jobs[:1] if difficulty == "easy" else jobs[: rng.randint(2, 3)]
            want = {c: (user, e) for c, _, e in chosen}
            lines = [f"`{c}` {p}" for c, p, _ in chosen]
            if difficulty == "medium":
                env = {"MAILTO": f"{rng.choice(pools.PEOPLE)}@{rng.choice(pools.MAIL_DOMAINS)}", "SHELL": "/bin/bash"}
                lines.append(
                    f"mail job output to `{env['MAILTO']}` and run the jobs with `/bin/bash` "
                    "(set `MAILTO` and `SHELL` in the file)"
                )
            instruction = (
                f"Schedule {'this job' if len(chosen) == 1 else 'these jobs'} for the system "
                f"cron daemon by creating `{path}` "
                f"(the `/etc/cron.d` format, with a user field); every job runs as user `{user}`:\n{bullets(lines)}\n"
            )
            body = "".join(f"{k}={v}\n" for k, v in env.items()) + "".join(f"{e} {user} {c}\n" for c, _, e in chosen)
            solution = heredoc(path, body) + f"\nchmod 644 {path}\n"
            command0, _, expr0 = chosen[0]
            near_misses = {
                "no_user_field": bent(solution, f" {user} ", " "),
                "ignores_schedule": bent(solution, f"{expr0} {user} {command0}\n", f"* * * * * {user} {command0}\n"),
            }
            if env:
                near_misses["no_mailto"] = bent(solution, f"MAILTO={env['MAILTO']}\n", "")
        else:
            existing = jobs[:4]
            change, drop, keep = existing[0], existing[1], existing[2:]
            new_phrase, new_expr = _schedule(rng)
            while new_expr == change[2]:
                new_phrase, new_expr = _schedule(rng)
            added = jobs[4]
            text = "# maintenance jobs\nSHELL=/bin/sh\n" + "".join(f"{e} {user} {c}\n" for c, _, e in existing)
            files[path] = text
            setup.append(f"chmod 664 {path}")
            want = {change[0]: (user, new_expr), **{c: (user, e) for c, _, e in keep}, added[0]: (user, added[2])}
            env = {"SHELL": "/bin/sh"}
            instruction = (
                (
                    f"`{path}` holds cron jobs (the `/etc/cron.d` format, with a user field). "
                    "Cron currently ignores the file. Edit it:\n"
                )
                + bullets(
                    [
                        f"run `{change[0]}` {new_phrase} instead",
                        f"remove the job that runs `{drop[0]}`",
                        f"add a job that runs `{added[0]}` as user `{user}` {added[1]}",
                        "keep the other jobs and the `SHELL` setting as they are",
                        "make sure cron will read the file (it skips files that are writable by group or others)",
                    ]
                )
                + "\n"
            )
            esc = lambda s: s.replace("/", "\\/").replace(".", "\\.")  # noqa: E731
            solution = (
                f"sed -i '/{esc(drop[0])}$/d' {path}\n"
                f"sed -i 's/^.* {user} {esc(change[0])}$/{new_expr.replace('*', '\\*').replace('/', '\\/')} "
                f"{user} {esc(change[0])}/' {path}\n"
                f"echo '{added[2]} {user} {added[0]}' >> {path}\n"
                f"chmod 644 {path}\n"
            )
            # The sed replacement above must not carry regex escapes into the file.
            solution = solution.replace("\\*", "*")
            near_misses = {
                "keeps_dropped_job": bent(solution, solution.splitlines()[0] + "\n", ""),
                "leaves_file_group_writable": bent(solution, f"chmod 644 {path}\n", ""),
            }
        expected = {"path": path, "jobs": want, "env": env}
        tests = test_module(self.name, expected, CRON_TEST)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[path],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


UNIT_TEST = """
import shlex


def parse_unit(path):
    sections, current = {}, None
    for raw in read_text(path).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: cannot parse {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment(values):
    env = {}
    for value in values:
        for token in shlex.split(value):
            key, _, val = token.partition("=")
            env[key] = val
    return env


def check_unit(path, want):
    assert os.path.isfile(path), f"{path} does not exist"
    unit = parse_unit(path)
    for section, keys in want.items():
        assert section in unit, f"{path}: no [{section}] section"
        for key, value in keys.items():
            got = unit[section].get(key)
            assert got, f"{path}: [{section}] has no {key}="
            if key == "Environment":
                assert environment(got) == value, f"{path}: Environment {environment(got)} != {value}"
            elif key == "ExecStart":
                assert " ".join(got[-1].split()) == value, f"{path}: ExecStart={got[-1]!r}, expected {value!r}"
            else:
                assert got[-1] == value, f"{path}: {key}={got[-1]!r}, expected {value!r}"
    return unit


def test_units():
    for path, want in EXPECTED["units"].items():
        check_unit(path, want)
    for path, key in EXPECTED["absent_keys"]:
        unit = parse_unit(path)
        assert all(key not in keys for keys in unit.values()), f"{path}: {key}= should be gone"


def test_enabled():
    for link, target in EXPECTED["links"].items():
        assert os.path.islink(link), f"{link} is not a symlink"
        assert os.path.realpath(link) == target, f"{link} points to {os.path.realpath(link)}, expected {target}"
    assert EXPECTED["units"], "units are checked"
"""


class SystemdUnit(Family):
    name = "systemd_unit"
    domain = "system_operations"
    summary = "write, fix, override and enable systemd service and timer units (parsed, not run)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        port = rng.choice([8000, 8080, 8081, 8443, 9000, 9090, 5000, 7000])
        workdir = rng.choice([f"/srv/{app}", f"/opt/{app}", f"/var/lib/{app}"])
        binary = rng.choice([f"/usr/local/bin/{app}", f"/opt/{app}/bin/{app}-server", f"/usr/local/bin/{app}d"])
        exec_start = f"{binary} --port {port}" + (f" --workers {rng.randint(2, 8)}" if rng.random() < 0.5 else "")
        restart = rng.choice(["on-failure", "always"])
        description = f"{app.capitalize()} {rng.choice(['service', 'daemon', 'API server', 'worker'])}"
        unit_path = f"/etc/systemd/system/{app}.service"
        service = {
            "Unit": {"Description": description},
            "Service": {"ExecStart": exec_start, "User": user, "WorkingDirectory": workdir, "Restart": restart},
            "Install": {"WantedBy": "multi-user.target"},
        }
        units: dict[str, dict] = {}
        links: dict[str, str] = {}
        absent: list[tuple[str, str]] = []
        files: dict[str, str] = {}
        setup = [f"mkdir -p /etc/systemd/system {workdir}"]

        def render(sections: dict) -> str:
            out = []
            for section, keys in sections.items():
                out.append(f"[{section}]")
                for key, value in keys.items():
                    if key == "Environment":
                        out.extend(f"Environment={k}={v}" for k, v in value.items())
                    else:
                        out.append(f"{key}={value}")
                out.append("")
            return "\n".join(out)

        files[f"{workdir}/config.yaml"] = f"port: {port}\nname: {app}\ntoken: {rng.randrange(16**12):012x}\n"
        if difficulty in ("easy", "medium"):
            files[binary] = f"#!/bin/sh\necho {app} server {rng.randint(100, 999)}\n"
            setup.append(f"chmod 755 {binary}")
            lines = [
                f"description `{description}`",
                f"runs `{exec_start}` as user `{user}` in the working directory `{workdir}`",
                f"restart policy `{restart}`",
                "started at boot by `multi-user.target`",
            ]
            if difficulty == "medium":
                env = {
                    k: v
                    for k, v in pick(
                        rng,
                        [
                            ("LOG_LEVEL", rng.choice(["info", "debug", "warning"])),
                            ("PORT", str(port)),
                            ("APP_ENV", rng.choice(["production", "staging"])),
                            ("CACHE_DIR", f"/var/cache/{app}"),
                        ],
                        2,
                    )
                }
                restart_sec = rng.choice([2, 5, 10, 30])
                service["Service"]["Environment"] = env
                service["Service"]["RestartSec"] = str(restart_sec)
                service["Unit"]["After"] = "network.target"
                lines += [
                    f"environment variables {', '.join(f'`{k}={v}`' for k, v in env.items())}",
                    f"waits `{restart_sec}` seconds before a restart (`RestartSec`)",
                    "ordered after `network.target`",
                ]
                job = rng.choice(["cleanup", "report", "backup", "reindex"])
                calendar = rng.choice(
                    [
                        "daily",
                        "weekly",
                        "hourly",
                        f"*-*-* {rng.randint(0, 23):02d}:{rng.choice([0, 15, 30, 45]):02d}:00",
                        f"Mon *-*-* {rng.randint(0, 23):02d}:00:00",
                    ]
                )
                timer_path = f"/etc/systemd/system/{app}-{job}.timer"
                job_path = f"/etc/systemd/system/{app}-{job}.service"
                job_exec = f"/usr/local/bin/{app}-{job}.sh"
                units[job_path] = {"Service": {"Type": "oneshot", "ExecStart": job_exec, "User": user}}
                units[timer_path] = {
                    "Timer": {"OnCalendar": calendar, "Persistent": "true", "Unit": f"{app}-{job}.service"},
                    "Install": {"WantedBy": "timers.target"},
                }
            units[unit_path] = service
            instruction = f"Write the systemd unit `{unit_path}` for the `{app}` service:\n{bullets(lines)}\n"
            if difficulty == "medium":
                instruction += (
                    f"\nAlso add a `{job}` job: `{job_path}` (a `oneshot` service running `{job_exec}` "
                    f"as `{user}`) and `{timer_path}` "
                    f"that triggers it with `OnCalendar={calendar}` and `Persistent=true`, names the service in "
                    "`Unit=`, and is wanted by `timers.target`.\n"
                )
            solution = (
                "mkdir -p /etc/systemd/system\n" + "\n".join(heredoc(p, render(u)) for p, u in units.items()) + "\n"
            )
            near_misses = {
                "no_user": bent(solution, f"User={user}\n", ""),
                "not_wanted_at_boot": bent(solution, "[Install]\nWantedBy=multi-user.target\n", ""),
            }
            if difficulty == "medium":
                near_misses["timer_not_persistent"] = bent(solution, "Persistent=true\n", "")
            outputs = list(units)
        else:
            limit = rng.choice([4096, 8192, 16384, 65536])
            level = rng.choice(["debug", "info", "warning"])
            old_binary = binary.replace(app, f"{app}-old", 1) if "/bin/" in binary else binary + "-old"
            broken = (
                f"[Unit]\nDescription={description}\nAfter=network.target\n\n[Service]\n"
                f"ExecStart={exec_start.replace(binary, old_binary)}\n"
                f"User=root\nWorkingDirectory={workdir}\nRestrat={restart}\n\n[Install]\nWantedBy=multi-user.target\n"
            )
            files[unit_path] = broken
            files[binary] = f"#!/bin/sh\necho {app} server\n"
            setup.append(f"chmod 755 {binary}")
            service["Unit"]["After"] = "network.target"
            units[unit_path] = service
            override = f"/etc/systemd/system/{app}.service.d/override.conf"
            units[override] = {"Service": {"Environment": {"LOG_LEVEL": level}, "LimitNOFILE": str(limit)}}
            absent.append((unit_path, "Restrat"))
            wants = f"/etc/systemd/system/multi-user.target.wants/{app}.service"
            links[wants] = unit_path
            instruction = (
                f"The unit `{unit_path}` is broken. Fix it in place:\n"
                + bullets(
                    [
                        f"`ExecStart` must run `{exec_start}` (the binary now lives at `{binary}`)",
                        f"the service runs as user `{user}`, not root",
                        (
                            f"the restart policy `{restart}` is set with a misspelled key: "
                            "spell it `Restart` (no `Restrat` line may remain)"
                        ),
                        "keep the description, ordering, working directory and install section",
                    ]
                )
                + f"\n\nThen add a drop-in `{override}` that sets the environment variable "
                f"`LOG_LEVEL={level}` and `LimitNOFILE={limit}`, "
                "and enable the service the way `systemctl enable` would (there is no systemd here): "
                f"a symlink `{wants}` pointing to the unit file.\n"
            )
            solution = (
                f"sed -i 's#^ExecStart=.*#ExecStart={exec_start}#; s#^User=.*#User={user}#; "
                f"s#^Restrat=#Restart=#' {unit_path}\n"
                f"mkdir -p /etc/systemd/system/{app}.service.d /etc/systemd/system/multi-user.target.wants\n"
                + heredoc(override, f"[Service]\nEnvironment=LOG_LEVEL={level}\nLimitNOFILE={limit}\n")
                + f"\nln -sf {unit_path} {wants}\n"
            )
            near_misses = {
                "not_enabled": bent(solution, f"\nln -sf {unit_path} {wants}\n", "\n"),
                "keeps_misspelled_restart": bent(solution, "; s#^Restrat=#Restart=#", ""),
                "runs_as_root": bent(solution, f" s#^User=.*#User={user}#;", ""),
            }
            outputs = [unit_path, override, wants]
        expected = {"units": units, "links": links, "absent_keys": absent}
        tests = test_module(self.name, expected, UNIT_TEST)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


ENV_KEYS = [
    "APP_ENV",
    "APP_PORT",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "LOG_LEVEL",
    "CACHE_TTL",
    "WORKERS",
    "REDIS_HOST",
    "SMTP_HOST",
    "TIMEOUT",
    "FEATURE_FLAGS",
    "API_BASE",
]
STAGES = ["production", "staging", "test", "development", "ci", "qa"]


def _env_value(rng: random.Random, key: str, app: str) -> str:
    if key.endswith("PORT"):
        return str(rng.choice([5432, 3306, 6379, 8080, 8000, 9000, 25, 587]) + rng.randint(0, 9))
    if key.endswith("HOST"):
        return (
            f"{rng.choice(['db', 'cache', 'mail', 'app'])}{rng.randint(1, 9)}."
            f"{rng.choice(['internal', 'local', 'example.com'])}"
        )
    if key in ("CACHE_TTL", "WORKERS", "TIMEOUT"):
        return str(rng.randint(1, 600))
    if key == "LOG_LEVEL":
        return rng.choice(["debug", "info", "warning", "error"])
    if key == "APP_ENV":
        return rng.choice(STAGES)
    if key == "FEATURE_FLAGS":
        return ",".join(rng.sample(["search", "beta", "dark-mode", "exports", "sso"], 2))
    if key == "DB_NAME":
        return f"{app}_{rng.choice(['prod', 'main', 'db'])}"
    if key == "DB_USER":
        return rng.choice(pools.SERVICE_ACCOUNTS)
    return f"https://{app}.example.com/v{rng.randint(1, 3)}"


class EnvMerge(Family):
    name = "env_merge"
    domain = "system_operations"
    summary = "merge layered .env files (overrides, export prefixes, quotes, ${VAR} references)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        stage = rng.choice(STAGES)
        folder = rng.choice([f"/home/user/{app}", f"/srv/{app}", f"/opt/{app}/config"])
        layers = [".env", f".env.{stage}"] + (
            [rng.choice([".env.local", ".env.override", ".env.secrets"])] if difficulty != "easy" else []
        )
        keys = pick(rng, ENV_KEYS, rng.randint(6, 9))
        merged: dict[str, str] = {}
        first: dict[str, str] = {}  # the value each key has in the first layer that sets it
        raw_layers: list[list[str]] = []
        for i, _ in enumerate(layers):
            lines = [f"# {app} settings, layer {i + 1}"]
            layer_keys = keys if i == 0 else rng.sample(keys, rng.randint(2, max(2, len(keys) // 2)))
            for key in layer_keys:
                value = _env_value(rng, key, app)
                written = value
                if difficulty != "easy":
                    quote = rng.choice(["", "", '"', "'"])
                    written = f"{quote}{value}{quote}"
                    if rng.random() < 0.3:
                        written = f"export {key}={written}"
                    else:
                        written = f"{key}={written}"
                else:
                    written = f"{key}={written}"
                lines.append(written)
                merged[key] = value
                first.setdefault(key, value)
                if rng.random() < 0.2:
                    lines.append("")
            raw_layers.append(lines)
        if all(first[key] == merged[key] for key in keys):  # a later layer overrides a value: precedence is tested
            value = merged[keys[0]]
            while value == merged[keys[0]]:
                value = _env_value(rng, keys[0], app)
            raw_layers[-1].append(f"{keys[0]}={value}")
            merged[keys[0]] = value
        refs: dict[str, str] = {}
        if difficulty == "hard":  # values that refer to other keys, in the last layer that sets them
            host_key = next((k for k in keys if k.endswith("HOST")), None) or keys[0]
            port_key = next((k for k in keys if k.endswith("PORT")), None) or keys[1]
            targets = [k for k in ["DATABASE_URL", "SERVICE_URL", "HEALTH_URL"]][: rng.randint(1, 2)]
            for t in targets:
                template = rng.choice(
                    [
                        f"postgres://${{{host_key}}}:${{{port_key}}}/{app}",
                        f"http://${{{host_key}}}:${{{port_key}}}/health",
                        f"${{{host_key}}}:${{{port_key}}}",
                    ]
                )
                quote = rng.choice(["", '"'])
                layer = rng.randrange(len(layers))
                raw_layers[layer].append(f"{t}={quote}{template}{quote}")
                refs[t] = template
                merged[t] = template.replace(f"${{{host_key}}}", "\0H").replace(f"${{{port_key}}}", "\0P")
            trap_key = "LITERAL_NOTE"
            raw_layers[0].append(f"{trap_key}='cost is ${{{host_key}}} dollars'")
            merged[trap_key] = f"cost is ${{{host_key}}} dollars"
            for t in targets:
                merged[t] = merged[t].replace("\0H", merged[host_key]).replace("\0P", merged[port_key])
        files = {f"{folder}/{name}": "\n".join(lines) + "\n" for name, lines in zip(layers, raw_layers, strict=False)}
        out = f"{folder}/{rng.choice(['merged.env', 'resolved.env', f'{app}.env'])}"
        exported = difficulty != "hard" and rng.random() < 0.5  # `export KEY=value` lines (a file to `source`)
        json_out = out.rsplit(".", 1)[0] + ".json" if difficulty == "hard" else None
        order = " < ".join(f"`{n}`" for n in layers)
        rules = [
            f"precedence: {order} (later files win)",
            "output: one `export KEY=value` line per key, sorted by key, unquoted, nothing else"
            if exported
            else "output: one `KEY=value` line per key, sorted by key, unquoted, nothing else",
        ]
        if difficulty != "easy":
            rules.insert(1, "an `export ` prefix or quotes around a value are not part of it")
        if difficulty == "hard":
            rules.insert(
                2,
                (
                    "`${NAME}` in an unquoted or double-quoted value means the merged value of `NAME`; "
                    "single-quoted values are literal"
                ),
            )
            rules.append(f"also write `{json_out}`: the same keys and values as a JSON object")
        instruction = f"Merge the environment files of `{app}` in `{folder}` into `{out}`:\n{bullets(rules)}\n"
        solution = python_block(_merge_script(folder, layers, out, json_out, exported, difficulty))
        near_misses = {
            "first_layer_wins": bent(solution, f"for name in {layers!r}:", f"for name in {layers[::-1]!r}:"),
            "reverse_sorted": bent(solution, "for k in sorted(merged)", "for k in sorted(merged, reverse=True)"),
        }
        if difficulty == "hard":
            near_misses["references_unresolved"] = bent(solution, _RESOLVE.lstrip("\n"), "")
        expected = {
            "path": out,
            "merged": dict(sorted(merged.items())),
            "json": json_out,
            "prefix": "export " if exported else "",
        }
        body = """
            def test_merged_env():
                lines = content_lines(EXPECTED["path"])
                got = {}
                for line in lines:
                    assert line.startswith(EXPECTED["prefix"]) and not line.startswith("#"), f"unexpected line {line!r}"
                    line = line[len(EXPECTED["prefix"]):]
                    assert "=" in line and not line.startswith("export "), f"unexpected line {line!r}"
                    key, _, value = line.partition("=")
                    got[key] = value
                assert got == EXPECTED["merged"], f"{got} != {EXPECTED['merged']}"
                assert [l[len(EXPECTED["prefix"]):].partition("=")[0] for l in lines] == sorted(got), "lines are not sorted by key"


            def test_json_copy():
                if EXPECTED["json"]:
                    assert json.loads(read_text(EXPECTED["json"])) == EXPECTED["merged"]
                else:
                    assert EXPECTED["merged"]
            """
        outputs = [out] + ([json_out] if json_out else [])
        tests = test_module(self.name, expected, body)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            extra={"env_keys": len(merged)},
            near_misses=near_misses,
        )


_RESOLVE = r"""
for key in merged:
    if key not in literal:
        merged[key] = re.sub(r"\$\{(\w+)\}", lambda m: merged[m.group(1)], merged[key])
"""


def _merge_script(
    folder: str, layers: list[str], out: str, json_out: str | None, exported: bool, difficulty: str
) -> str:
    """The reference merge: later layers win; medium and hard strip `export ` and quotes; hard resolves
    ${NAME} outside single quotes and writes a JSON copy."""
    easy, hard = difficulty == "easy", difficulty == "hard"
    body = ["line = line.strip()", 'if not line or line.startswith("#"):', "    continue"]
    if not easy:
        body += ['if line.startswith("export "):', '    line = line[len("export "):]']
    body.append('key, _, value = line.partition("=")')
    if hard:
        body.append("literal.discard(key)")
    if not easy:
        body.append('if len(value) >= 2 and value[0] == value[-1] and value[0] in "\'\\"":')
        if hard:
            body += ['    if value[0] == "\'":', "        literal.add(key)"]
        body.append("    value = value[1:-1]")
    body.append("merged[key] = value")
    prefix = "export " if exported else ""
    lines = [
        "import json, re" if hard else "",
        f"folder, merged = {folder!r}, {{}}",
        "literal = set()" if hard else "",
        f"for name in {layers!r}:",
        '    for line in open(f"{folder}/{name}"):',
        *("        " + line for line in body),
        _RESOLVE.strip("\n") if hard else "",
        f'with open({out!r}, "w") as handle:',
        f'    handle.writelines(f"{prefix}{{k}}={{merged[k]}}\\n" for k in sorted(merged))',
        f'json.dump(merged, open({json_out!r}, "w"), indent=2)' if json_out else "",
    ]
    return "\n".join(line for line in lines if line)


LOGROTATE_TEST = '''
def parse_logrotate(path):
    """[(patterns, directives {word: args}, scripts {name: text})] of a logrotate config."""
    blocks, current, script, pending = [], None, None, []
    for raw in read_text(path).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if script is not None:
            if line == "endscript":
                script = None
            else:
                current["scripts"][script] += line + "\\n"
            continue
        if current is None:
            if line.endswith("{"):
                current = {"patterns": pending + line[:-1].split(), "directives": {}, "scripts": {}}
                pending = []
            else:
                pending += line.split()
            continue
        if line == "}":
            blocks.append(current)
            current = None
            continue
        word, *args = line.split()
        if word in ("postrotate", "prerotate", "firstaction", "lastaction"):
            script = word
            current["scripts"][word] = ""
            continue
        current["directives"][word] = args
    return blocks


def block_for(blocks, pattern):
    for block in blocks:
        if pattern in block["patterns"]:
            return block
    raise AssertionError(f"no block for {pattern}; blocks cover {[b['patterns'] for b in blocks]}")


def test_policy():
    blocks = parse_logrotate(EXPECTED["config"])
    for pattern, want in EXPECTED["blocks"].items():
        d = block_for(blocks, pattern)["directives"]
        freq = [w for w in ("daily", "weekly", "monthly", "yearly") if w in d]
        assert freq == [want["frequency"]], f"{pattern}: rotation frequency {freq}, expected {want['frequency']}"
        assert d.get("rotate") == [str(want["rotate"])], f"{pattern}: rotate {d.get('rotate')}, expected {want['rotate']}"
        for flag in want["flags"]:
            assert flag in d, f"{pattern}: missing {flag}"
        for flag in want["absent"]:
            assert flag not in d, f"{pattern}: {flag} must not be set"
        if want.get("create"):
            mode, user, group = want["create"]
            args = d.get("create", [])
            assert len(args) == 3 and int(args[0], 8) == int(mode, 8) and args[1:] == [user, group], f"{pattern}: create {args}, expected {want['create']}"
        if want.get("maxsize"):
            assert d.get("maxsize") == [want["maxsize"]], f"{pattern}: maxsize {d.get('maxsize')}, expected {want['maxsize']}"
        if want.get("su"):
            assert d.get("su") == want["su"], f"{pattern}: su {d.get('su')}, expected {want['su']}"
        if want.get("postrotate"):
            script = block_for(blocks, pattern)["scripts"].get("postrotate", "")
            assert want["postrotate"] in script, f"{pattern}: postrotate does not run {want['postrotate']}"
    debug = subprocess.run(["logrotate", "-d", "-s", "/tmp/forge-logrotate.state", EXPECTED["config"]], capture_output=True, text=True, timeout=60)
    assert debug.returncode == 0 and "error:" not in debug.stderr + debug.stdout, f"logrotate rejects the config: {debug.stderr[-800:]}"


def test_rotated_files():
    for path, text in EXPECTED["rotated"].items():
        assert os.path.isfile(path), f"{path} does not exist: the logs were not rotated"
        data = open(path, "rb").read()
        if path.endswith(".gz"):
            import gzip
            data = gzip.decompress(data)
        assert data.decode() == text, f"{path} does not hold the old log contents"
    for path, (mode, owner) in EXPECTED["fresh"].items():
        assert os.path.isfile(path), f"{path} was not recreated"
        st = os.stat(path)
        import pwd
        assert st.st_mode & 0o777 == mode, f"{path}: mode {st.st_mode & 0o777:o}, expected {mode:o}"
        assert pwd.getpwuid(st.st_uid).pw_name == owner, f"{path}: owner {pwd.getpwuid(st.st_uid).pw_name}, expected {owner}"
        assert os.path.getsize(path) == 0, f"{path} should be a new, empty log"
    for path in EXPECTED["marker"]:
        assert os.path.exists(path), f"{path} missing: the postrotate command did not run"
'''


class LogrotateConfig(Family):
    name = "logrotate_config"
    domain = "system_operations"
    summary = "write logrotate policies (frequency, retention, create, su, scripts) and force a rotation"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        log_dir = f"/var/log/{app}"
        config = f"/etc/logrotate.d/{app}"
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        group = rng.choice(pools.GROUPS)
        freq = rng.choice(["daily", "weekly", "monthly"])
        keep = rng.choice([3, 4, 5, 7, 10, 14, 30])
        files: dict[str, str] = {}
        setup = [add_group(group), add_user(user, system=True, group=group), "mkdir -p /var/lib/logrotate"]
        names = pick(rng, ["app", "worker", "jobs", "api", "audit"], rng.randint(1, 3))
        for n in names:
            files[f"{log_dir}/{n}.log"] = "".join(
                f"2024-05-{rng.randint(10, 28)} {n} event {rng.randint(0, 10**6)}\n" for _ in range(rng.randint(2, 5))
            )
        blocks: dict[str, dict] = {}
        rotated: dict[str, str] = {}
        fresh: dict[str, tuple[int, str]] = {}
        marker: list[str] = []
        pattern = f"{log_dir}/*.log"
        if difficulty == "easy":
            if rng.random() < 0.4:
                pattern = f"{log_dir}/{names[0]}.log"
            delay = rng.random() < 0.5
            dateext = rng.random() < 0.5
            maxsize = rng.choice([None, "10M", "50M", "100M", "500k"])
            flags = (
                ["compress", "missingok", "notifempty"]
                + (["delaycompress"] if delay else [])
                + (["dateext"] if dateext else [])
            )
            blocks[pattern] = {
                "frequency": freq,
                "rotate": keep,
                "flags": flags + (["maxsize"] if maxsize else []),
                "absent": [] if delay else ["delaycompress"],
            }
            if maxsize:
                blocks[pattern]["maxsize"] = maxsize
            lines = [
                f"{freq}, keep {keep} rotated copies, "
                + (
                    "compress them from the second rotation on (newest copy uncompressed)"
                    if delay
                    else "compress them right away"
                ),
                "no error when the log is missing; skip empty logs",
            ]
            if dateext:
                lines.append("rotated copies get a date suffix instead of a number")
            if maxsize:
                lines.append(f"also rotate early when a log grows past `{maxsize}` (`maxsize`)")
            instruction = f"Write `{config}` with one logrotate block for `{pattern}`:\n{bullets(lines)}\n"
            text = (
                f"{pattern} {{\n    {freq}\n    rotate {keep}\n    "
                + "\n    ".join(flags + ([f"maxsize {maxsize}"] if maxsize else []))
                + "\n}\n"
            )
            solution = heredoc(config, text) + "\n"
            near_misses = {"skips_missingok": bent(solution, "\n    missingok", "")}
        elif difficulty == "medium":
            mode = rng.choice(["0640", "0644", "0600"])
            reload_cmd = f"/usr/local/bin/{app}-reload"
            marker_path = f"/run/{app}.reloaded"
            files[reload_cmd] = f"#!/bin/sh\ndate > {marker_path}\n"
            setup.append(f"chmod 755 {reload_cmd}")
            blocks[pattern] = {
                "frequency": freq,
                "rotate": keep,
                "flags": ["compress", "missingok", "sharedscripts"],
                "absent": ["delaycompress"],
                "create": [mode, user, group],
                "postrotate": reload_cmd,
            }
            instruction = (
                f"Write `{config}` with one block for `{pattern}`:\n"
                + bullets(
                    [
                        (
                            f"rotate {freq}, keep {keep} rotated copies, compress them right away "
                            "(no delayed compression), tolerate missing logs"
                        ),
                        f"recreate each log after rotation with mode `{mode}`, owner `{user}`, group `{group}`",
                        f"after rotating, run `{reload_cmd}` once for the whole block (not once per log)",
                    ]
                )
                + (
                    "\n\nThen force one rotation of this config now, so that each log's previous contents end up in "
                    "`<name>.log.1.gz` next to a new, empty `<name>.log`.\n"
                )
            )
            for n in names:
                rotated[f"{log_dir}/{n}.log.1.gz"] = files[f"{log_dir}/{n}.log"]
                fresh[f"{log_dir}/{n}.log"] = (int(mode, 8), user)
            marker.append(marker_path)
            text = (
                f"{pattern} {{\n    {freq}\n    rotate {keep}\n    compress\n    missingok\n"
                f"    create {mode} {user} {group}\n    sharedscripts\n    postrotate\n"
                f"        {reload_cmd}\n    endscript\n}}\n"
            )
            solution = heredoc(config, text) + f"\nlogrotate -f {config}\n"
            near_misses = {
                "no_forced_rotation": bent(solution, f"\nlogrotate -f {config}\n", "\n"),
                "reloads_once_per_log": bent(solution, "    sharedscripts\n", ""),
            }
        else:
            access = [n for n in names][:1]
            other = [f"{log_dir}/{n}.log" for n in names[1:]]
            access_pattern = f"{log_dir}/{access[0]}.log"
            err_freq = rng.choice([f for f in ["daily", "weekly", "monthly"] if f != freq])
            err_keep = rng.choice([k for k in [2, 4, 6, 8, 12] if k != keep])
            files[f"{log_dir}/error.log"] = "".join(
                f"2024-05-{rng.randint(10, 28)} ERROR {rng.randint(0, 10**6)}\n" for _ in range(rng.randint(2, 4))
            )
            # The log folder belongs to the service account, so logrotate needs `su`.
            setup.append(f"chown -R {user}:{group} {log_dir} && chmod 775 {log_dir}")
            blocks[access_pattern] = {
                "frequency": freq,
                "rotate": keep,
                "flags": ["compress", "delaycompress", "missingok"],
                "absent": [],
                "su": [user, group],
            }
            blocks[f"{log_dir}/error.log"] = {
                "frequency": err_freq,
                "rotate": err_keep,
                "flags": ["compress", "missingok"],
                "absent": ["delaycompress"],
                "su": [user, group],
            }
            rotated[f"{log_dir}/{access[0]}.log.1"] = files[access_pattern]
            rotated[f"{log_dir}/error.log.1.gz"] = files[f"{log_dir}/error.log"]
            instruction = (
                f"`{log_dir}` is owned by `{user}:{group}` and group-writable. Write `{config}` with two blocks:\n"
                + bullets(
                    [
                        (
                            f"`{access_pattern}`: {freq}, keep {keep} copies, compress them but only from the second "
                            "rotation on (the newest rotated copy stays uncompressed), tolerate a missing log"
                        ),
                        (
                            f"`{log_dir}/error.log`: {err_freq}, keep {err_keep} copies, "
                            "compress right away, tolerate a missing log"
                        ),
                        (
                            f"both rotate as user `{user}` and group `{group}` (logrotate refuses to work in a folder "
                            "writable by non-root users otherwise)"
                        ),
                    ]
                )
                + f"\n\nThen force one rotation of this config now. Leave any other files in `{log_dir}` alone"
                + (f" ({', '.join('`' + o + '`' for o in other)})" if other else "")
                + ".\n"
            )
            text = (
                f"{access_pattern} {{\n    su {user} {group}\n    {freq}\n    rotate {keep}\n    compress\n"
                "    delaycompress\n    missingok\n}\n\n"
                f"{log_dir}/error.log {{\n    su {user} {group}\n    {err_freq}\n    rotate {err_keep}\n"
                "    compress\n    missingok\n}\n"
            )
            solution = heredoc(config, text) + f"\nlogrotate -f {config}\n"
            near_misses = {"no_su": bent(solution, f"    su {user} {group}\n", "")}
            for o in other:
                rotated[o] = files[o]
        expected = {
            "config": config,
            "blocks": blocks,
            "rotated": rotated,
            "fresh": {p: list(v) for p, v in fresh.items()},
            "marker": marker,
        }
        tests = test_module(self.name, expected, LOGROTATE_TEST)
        near_misses["keeps_one_copy_more"] = bent(solution, f"rotate {keep}\n", f"rotate {keep + 1}\n")
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[config, log_dir],
            files=files,
            setup=setup,
            extra={"blocks": len(blocks)},
            near_misses=near_misses,
        )
