"""Diagnosis families: a symptom to explain, not a spec to follow.

Medium and hard instances state what is wrong as a user would see it ("the nightly job never
runs", "the report tool fails", "the daemon refuses its configuration") and the outcome wanted;
they do not name the file at fault or the fix. The agent has to look: list /etc/cron.d, read a
log, run the program and read its error. Each environment also holds decoys, files that look
related (an unused script without its exec bit, a disabled config file with bad keys, an old copy
of the job) but are not the cause; the tests check that the fixed program works as it is run
(cron's rules, the tool's own path, the daemon's own check) and that the decoys were left alone.
Hard instances have two causes, the second visible only once the first is fixed, and ask for
more turns (metadata max_turns). Easy instances name the cause: they are the spec-style rung.

Each task records metadata style = "symptom" | "spec" (generate counts the symptom share).
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import add_user, csv_text, test_module

HARD_MAX_TURNS = 30  # two causes, found one after the other: exploring takes more than the default 16 turns
# Phrasings a symptom instruction is assembled from (neutral: none hints at the cause).
CONTEXT = [
    "",
    "It was set up last week.",
    "Users noticed it this morning.",
    "The on-call engineer could not find out why.",
    "The team relies on it, so it is urgent.",
    "Nobody on the team knows this machine well.",
]
HARD_NOTES = [
    "More than one thing may be wrong: check again after each fix.",
    "Expect more than one problem; re-check after every fix.",
    "The first fix may not be the last one.",
]
CRON_TASKS = ["backup", "cleanup", "report", "sync", "rotate", "reindex", "export", "archive"]
REPORT_TOOLS = ["nightly-report", "export-totals", "usage-summary", "billing-digest", "stock-report"]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def metadata(difficulty: str) -> dict[str, str | int | float | bool]:
    """style (and, for hard, the turn cap the task asks for) for task.toml's [metadata]."""
    if difficulty == "easy":
        return {"style": "spec"}
    extra: dict[str, str | int | float | bool] = {"style": "symptom"}
    if difficulty == "hard":
        extra["max_turns"] = HARD_MAX_TURNS
    return extra


def symptom_instruction(rng: random.Random, difficulty: str, opening: str, goals: list[str], keeps: list[str]) -> str:
    """A symptom-style instruction: what is wrong, some context, the outcome wanted, what to leave alone."""
    parts = [opening, rng.choice(CONTEXT), rng.choice(goals), rng.choice(keeps)]
    if difficulty == "hard":
        parts.append(rng.choice(HARD_NOTES))
    return " ".join(part for part in parts if part) + "\n"


def looks(rng: random.Random, commands: list[str]) -> list[str]:
    """What a person looks at before fixing: two or more of these commands, in their order."""
    keep = sorted(rng.sample(range(len(commands)), rng.randint(2, len(commands))))
    return [commands[i] for i in keep]


def sed_pattern(text: str) -> str:
    """text as a literal basic regular expression, for `sed 's|...|...|'`."""
    return re.sub(r"([\\.*\[\]^$|])", r"\\\1", text)


def sed_replacement(text: str) -> str:
    return re.sub(r"([\\&|])", r"\\\1", text)


def draw_schedule(rng: random.Random) -> str:
    minute, hour = rng.choice([0, 5, 10, 15, 20, 30, 40, 45]), rng.randint(0, 23)
    return rng.choice(
        [
            f"{minute} {hour} * * *",
            f"{minute} {hour} * * 1-5",
            f"{minute} {hour} * * {rng.randint(0, 6)}",
            f"{minute} */{rng.choice([2, 3, 4, 6])} * * *",
            f"{minute} {hour} {rng.randint(1, 28)} * *",
        ]
    )


DIGEST_HELPER = """
import hashlib


def digest(path):
    p = pathlib.Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def test_decoys_left_alone():
    changed = [path for path, want in EXPECTED["untouched"].items() if digest(path) != want]
    assert not changed, f"these files are not the cause and must stay as they were: {changed}"
"""


# ------------------------------------------------------------------------------------------
# A cron job that never runs

CRON_TEST = '''
import pwd

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\\s*=\\s*(.*)$")
RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # cron ignores /etc/cron.d files with other names


def cron_files():
    """The /etc/cron.d files cron reads: run-parts names, owned by root, not writable by group or others."""
    for entry in sorted(pathlib.Path("/etc/cron.d").iterdir()):
        st = os.lstat(entry)
        if entry.is_file() and not entry.is_symlink() and RUN_PARTS_NAME.match(entry.name):
            if st.st_uid == 0 and not st.st_mode & 0o022:
                yield entry


def parse(path):
    """(environment assignments, job lines split into 5 time fields, user, command)."""
    env, jobs = {}, []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = ASSIGNMENT.match(line)
        if match:
            env[match.group(1)] = match.group(2).strip().strip('"')
        else:
            jobs.append(line.split(None, 6))
    return env, jobs


def target_job():
    found = []
    for path in cron_files():
        env, jobs = parse(path)
        for parts in jobs:
            if len(parts) == 7 and EXPECTED["script_name"] in parts[6]:
                found.append((path, env, parts, jobs))
    assert found, f"cron reads no job line (5 time fields, a user, a command) that runs {EXPECTED['script_name']}"
    assert len(found) == 1, f"{len(found)} job lines run {EXPECTED['script_name']}; there should be one"
    return found[0]


def test_job_keeps_its_schedule_and_user():
    path, env, parts, jobs = target_job()
    assert parts[:5] == EXPECTED["schedule"].split(), f"{path}: schedule {parts[:5]} changed from {EXPECTED['schedule']!r}"
    assert parts[5] == EXPECTED["user"], f"{path}: the job runs as {parts[5]!r}, it must run as {EXPECTED['user']!r}"


def test_job_runs_as_cron_runs_it():
    path, env, parts, jobs = target_job()
    stamp = pathlib.Path(EXPECTED["stamp"])
    stamp.unlink(missing_ok=True)
    user = pwd.getpwnam(parts[5])
    cron_env = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "HOME": user.pw_dir, "LOGNAME": user.pw_name}
    cron_env.update(env)
    done = subprocess.run(
        ["runuser", "-u", user.pw_name, "--", "env", "-i", *[f"{k}={v}" for k, v in cron_env.items()],
         cron_env["SHELL"], "-c", parts[6]],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"the job exited {done.returncode}: {done.stdout}{done.stderr}"
    assert stamp.is_file(), f"the job ran but did not write {stamp}"
    assert stamp.read_text().strip() == EXPECTED["token"], f"{stamp} does not hold what the job writes"


def test_other_jobs_kept():
    path, env, parts, jobs = target_job()
    others = sorted(" ".join(job) for job in jobs if job is not parts)
    assert others == sorted(EXPECTED["siblings"]), f"{path}: the other jobs changed: {others}"
    for script, mode in EXPECTED["modes"].items():
        got = os.stat(script).st_mode & 0o777
        assert got == mode, f"{script} is not the cause: its mode must stay {mode:o} (it is {got:o})"
'''

# cause -> (what an easy instruction says, the fix a skilled person types)
CRON_CAUSES_FILE = ["file_mode", "file_name", "no_user", "wrong_path", "bare_command"]
CRON_CAUSES_SCRIPT = ["no_exec", "dir_owner"]
CRON_EASY = ["file_mode", "no_exec", "dir_owner"]


class CronJobNeverRuns(Family):
    name = "cron_job_silent"
    domain = "system_operations"
    summary = "find why a cron job never runs (file mode, name, user field, path, exec bit, owner) among decoys"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app, other_app = rng.sample(pools.APPS, 2)
        task, sibling_task, decoy_task, other_task = rng.sample(CRON_TASKS, 4)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        other_user = rng.choice([u for u in pools.SERVICE_ACCOUNTS if u != user] + ["root"])
        script = f"/usr/local/bin/{app}-{task}.sh"
        script_name = f"{app}-{task}.sh"
        state_dir = f"/var/lib/{app}"
        stamp = f"{state_dir}/{task}.last"
        token = f"{app}-{task}-ok-{rng.randrange(16**6):06x}"
        schedule = draw_schedule(rng)
        if difficulty == "easy":
            causes = [rng.choice(CRON_EASY)]
        elif difficulty == "medium":
            causes = [rng.choice(CRON_CAUSES_FILE + CRON_CAUSES_SCRIPT)]
        else:
            causes = [rng.choice(CRON_CAUSES_FILE), rng.choice(CRON_CAUSES_SCRIPT)]
        rng.shuffle(causes)

        cron_name = f"{app}.cron" if "file_name" in causes else app
        cron_path = f"/etc/cron.d/{cron_name}"
        command = script
        path_line = "PATH=/usr/local/bin:/usr/bin:/bin"
        if "wrong_path" in causes:
            command = f"/usr/local/sbin/{script_name}"
        if "bare_command" in causes:
            command, path_line = script_name, "PATH=/usr/bin:/bin"
        user_field = "" if "no_user" in causes else f"{user} "
        sibling_line = f"{draw_schedule(rng)} {user} /usr/local/bin/{app}-{sibling_task}.sh"
        target_line = f"{schedule} {user_field}{command}"
        job_lines = [target_line, sibling_line]
        rng.shuffle(job_lines)
        cron_text = f"# {app} maintenance\nSHELL=/bin/sh\n{path_line}\n" + "\n".join(job_lines) + "\n"
        other_path = f"/etc/cron.d/{other_app}"
        other_text = (
            f"# {other_app} jobs\n{draw_schedule(rng)} {other_user} /usr/local/bin/{other_app}-{other_task}.sh\n"
            f"# disabled until the new storage is ready:\n"
            f"# {draw_schedule(rng)} {other_user} /usr/local/bin/{other_app}-{decoy_task}.sh\n"
        )
        # An old copy of the job with another schedule: cron skips names with a dot, and so must the fix.
        old_copy = f"/etc/cron.d/{app}.dpkg-old"
        old_text = f"# {app} maintenance (old)\n{draw_schedule(rng)} {user} {script}\n"
        decoy_script = f"/usr/local/bin/{app}-{decoy_task}.sh"

        def job_script(name: str, writes: str) -> str:
            return f"#!/bin/sh\n# {name}: run from cron as {user}\nset -e\necho {writes}\n"

        files = {
            script: f"#!/bin/sh\n# {script_name}: {task} for {app}, run from cron as {user}\nset -e\n"
            f"echo {token} > {stamp}\n",
            f"/usr/local/bin/{app}-{sibling_task}.sh": job_script(f"{app}-{sibling_task}", "done"),
            f"/usr/local/bin/{other_app}-{other_task}.sh": job_script(f"{other_app}-{other_task}", "done"),
            decoy_script: f"#!/bin/sh\n# one-off {decoy_task} for {app}: run by hand, never from cron\necho {decoy_task}\n",
            cron_path: cron_text,
            other_path: other_text,
            old_copy: old_text,
            "/var/log/cron.log": self.cron_log(
                rng, causes, app, cron_path, user, other_app, other_user, other_task, command
            ),
        }
        setup = [
            add_user(user, system=True),
            *([add_user(other_user, system=True)] if other_user != "root" else []),
            f"mkdir -p {state_dir}",
            f"chown {'root' if 'dir_owner' in causes else user} {state_dir}",
            "chmod 755 /usr/local/bin/*.sh",
            f"chmod 644 {decoy_script}",
            f"chmod {'664' if 'file_mode' in causes else '644'} {cron_path}",
        ]
        if "no_exec" in causes:
            setup.append(f"chmod 644 {script}")

        fixes = {cause: self.fix(cause, cron_path, app, schedule, user, command, script, state_dir) for cause in causes}
        explore = [
            "ls -l /etc/cron.d/",
            f"grep -rn {app}-{task} /etc/cron.d/",
            "tail -n 5 /var/log/cron.log",
            f"ls -l {script} {state_dir}",
        ]
        verify = [f"runuser -u {user} -- {script}", f"cat {stamp}"]
        solution = "\n".join([*explore, *fixes.values(), *verify]) + "\n"
        job_file = f"/etc/cron.d/{app}"  # where the job line lives once fixed
        near_misses = {
            "fixes_decoy": f"chmod 755 {decoy_script}\n"
            f"sed -i 's|^# \\(.*{other_app}-{decoy_task}\\.sh\\)$|\\1|' {other_path}\n",
            "runs_as_root": "\n".join(fixes.values())
            + f"\nsed -i 's|^\\(.*\\) {user} \\(.*{sed_pattern(script_name)}\\)$|\\1 root \\2|' {job_file}\n",
            "reschedules": "\n".join(fixes.values())
            + f"\nsed -i 's|^{sed_pattern(schedule)} |* * * * * |' {job_file}\n",
        }
        if difficulty == "hard":
            near_misses["first_cause_only"] = fixes[causes[0]] + "\n"
        expected = {
            "script_name": script_name,
            "schedule": schedule,
            "user": user,
            "stamp": stamp,
            "token": token,
            "siblings": [sibling_line],
            "modes": {decoy_script: 0o644, f"/usr/local/bin/{other_app}-{other_task}.sh": 0o755},
            "untouched": {other_path: sha256_text(other_text), old_copy: sha256_text(old_text)},
        }
        instruction = self.instruction(rng, difficulty, causes[0], app, task, user, stamp, cron_path, script, state_dir)
        tests = test_module(self.name, expected, CRON_TEST + DIGEST_HELPER)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[stamp],
            files=files,
            setup=setup,
            extra=metadata(difficulty) | {"causes": " ".join(causes)},
            near_misses=near_misses,
        )

    @staticmethod
    def fix(cause: str, cron_path: str, app: str, schedule: str, user: str, command: str, script: str, state: str):
        if cause == "file_mode":
            return f"chmod 644 {cron_path}"
        if cause == "file_name":
            return f"mv {cron_path} /etc/cron.d/{app}"
        if cause == "no_user":
            line = f"{sed_replacement(schedule)} {user} {command}"
            return f"sed -i 's|^{sed_pattern(schedule)} {sed_pattern(command)}$|{line}|' {cron_path}"
        if cause == "wrong_path":
            return f"sed -i 's|{sed_pattern(command)}|{script}|' {cron_path}"
        if cause == "bare_command":
            return f"sed -i 's|^PATH=.*|PATH=/usr/local/bin:/usr/bin:/bin|' {cron_path}"
        if cause == "no_exec":
            return f"chmod 755 {script}"
        return f"chown {user} {state}"

    @staticmethod
    def cron_log(rng, causes, app, cron_path, user, other_app, other_user, other_task, command) -> str:
        """What cron wrote to syslog: the decoy's runs, and what it said about the broken file (if anything)."""
        lines = []
        for day in range(1, 4):
            stamp = f"Jun {day:2d} 0{rng.randint(1, 5)}:{rng.randint(10, 59)}:01 host"
            pid = rng.randint(300, 9000)
            lines.append(f"{stamp} CRON[{pid}]: ({other_user}) CMD (/usr/local/bin/{other_app}-{other_task}.sh)")
            if "file_mode" in causes:
                lines.append(f"{stamp} cron[412]: (*system*{app}) INSECURE MODE (group/other writable) ({cron_path})")
            elif "no_user" in causes:
                lines.append(f"{stamp} cron[412]: Error: bad username; while reading {cron_path}")
            elif "file_name" not in causes:
                lines.append(f"{stamp} CRON[{pid + 7}]: ({user}) CMD ({command})")
                lines.append(f"{stamp} CRON[{pid + 7}]: (CRON) info (No MTA installed, discarding output)")
        return "\n".join(lines) + "\n"

    @staticmethod
    def instruction(rng, difficulty, cause, app, task, user, stamp, cron_path, script, state_dir) -> str:
        if difficulty == "easy":
            said = {
                "file_mode": f"cron ignores `{cron_path}` because the file is writable by its group. "
                "Make it mode 644 so cron reads it again",
                "no_exec": f"its script `{script}` is not executable, so the job fails with 'Permission denied'. "
                "Make the script executable (mode 755)",
                "dir_owner": f"the job runs as `{user}` but `{state_dir}` belongs to root, so it cannot write "
                f"there. Make `{user}` the owner of `{state_dir}`",
            }[cause]
            return (
                f"The cron job `{app}-{task}` should write `{stamp}` on every run, but {said}. "
                "Leave the job's schedule and everything else as they are.\n"
            )
        opening = rng.choice(
            [
                f"The scheduled `{task}` job of {app} never seems to run: `{stamp}`, which it writes on every "
                "run, has never appeared.",
                f"Someone noticed that `{stamp}` does not exist, although {app}'s cron job for `{task}` should "
                "write it every time it runs.",
                f"{app}'s `{task}` job is in cron, yet nothing shows it ever ran: it writes `{stamp}` each time, "
                "and that file is missing.",
            ]
        )
        goals = [
            f"The job must run as `{user}`, on the schedule it has now. Find out why it does not run and fix that, "
            "so that cron runs it as installed.",
            f"Make cron run it as it is installed: as `{user}` and on its current schedule. Find the cause first.",
        ]
        keeps = [
            "Leave the other cron jobs, old copies and scripts on this machine as they are.",
            "Other jobs, old copies of files and unrelated scripts must stay as they are.",
        ]
        return symptom_instruction(rng, difficulty, opening, goals, keeps)


# ------------------------------------------------------------------------------------------
# A report tool that fails every time

TOOL_TEST = """
def test_tool_runs_and_writes_the_report():
    report = pathlib.Path(EXPECTED["report"])
    report.unlink(missing_ok=True)
    done = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/root", EXPECTED["tool"]], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{EXPECTED['tool']} exited {done.returncode}: {done.stdout}{done.stderr}"
    assert report.is_file(), f"{EXPECTED['tool']} ran but did not write {report}"
    values = dict(line.split("=", 1) for line in content_lines(report))
    assert set(values) == {"rows", "total"}, f"{report}: {sorted(values)} (the tool writes rows= and total=)"
    assert int(values["rows"]) == EXPECTED["rows"], f"{report}: rows={values['rows']}, the data has {EXPECTED['rows']}"
    assert close(values["total"], EXPECTED["total"]), f"{report}: total={values['total']}, expected {EXPECTED['total']}"
"""

TOOL_CAUSES_SCRIPT = ["crlf", "shebang", "no_exec"]
TOOL_CAUSES_ENV = ["env_key", "missing_dir"]


class ReportToolFails(Family):
    name = "report_tool_fails"
    domain = "development_tooling"
    summary = "make a failing report tool run again (CRLF, shebang, exec bit, env file key, missing dir) among decoys"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        tool = rng.choice(REPORT_TOOLS)
        tool_path = f"/opt/{app}/bin/{tool}"
        data_name = rng.choice(["orders", "sales", "usage", "invoices", "shipments"])
        data_dir = f"/srv/{app}/data"
        report_dir = rng.choice([f"/var/reports/{app}", f"/srv/{app}/reports", f"/home/user/reports/{app}"])
        report = f"{report_dir}/{tool}.txt"
        env_path = f"/etc/{app}/{app}.env"
        log_path = f"/var/log/{app}/{tool}.log"
        if difficulty == "easy":
            causes = [rng.choice(TOOL_CAUSES_SCRIPT)]
        elif difficulty == "medium":
            causes = [rng.choice(TOOL_CAUSES_SCRIPT + TOOL_CAUSES_ENV)]
        else:
            causes = [rng.choice(TOOL_CAUSES_SCRIPT), rng.choice(TOOL_CAUSES_ENV)]

        columns = ["id", rng.choice(["region", "warehouse", "channel"]), "amount", "status"]
        labels = {"region": pools.REGIONS, "warehouse": pools.WAREHOUSES, "channel": pools.CHANNELS}[columns[1]]
        amount_col = 3  # awk field of the summed column
        rows = [
            [i, rng.choice(labels), f"{rng.randint(100, 99999) / 100:.2f}", rng.choice(["paid", "open"])]
            for i in range(1, rng.randint(12, 40))
        ]
        total = round(sum(float(r[2]) for r in rows), 2)
        old_rows = [[r[0], r[1], f"{float(r[2]) + rng.randint(1, 50):.2f}", r[3]] for r in rows[: len(rows) // 2]]
        shebang = "#!/usr/local/bin/bash" if "shebang" in causes else "#!/bin/bash"
        program = (
            f"{shebang}\n# {tool}: row count and total amount of {data_name}.csv\nset -euo pipefail\n"
            f"source {env_path}\n"
            f"awk -F, 'NR > 1 {{ n++; total += ${amount_col} }} END {{ printf \"rows=%d\\ntotal=%.2f\\n\", n, total }}' "
            f'"$DATA_DIR/{data_name}.csv" > "$REPORT_DIR/{tool}.txt"\n'
            f'echo "{tool}: wrote $REPORT_DIR/{tool}.txt"\n'
        )
        report_key = "REPORT_DIRECTORY" if "env_key" in causes else "REPORT_DIR"
        env_text = f"# {app} tools\nDATA_DIR={data_dir}\n{report_key}={report_dir}\n"
        example_text = f"# example settings for a laptop\nDATA_DIR=/srv/{app}/sample\nREPORT_DIR=/tmp/{app}-reports\n"
        legacy = f"{tool_path}-legacy"
        legacy_text = f"#!/bin/bash\r\n# {tool}-legacy: replaced by {tool}, kept for reference\r\nexit 1\r\n"
        files = {
            tool_path: program,
            legacy: legacy_text,
            env_path: env_text,
            f"{env_path}.example": example_text,
            f"{data_dir}/{data_name}.csv": csv_text(["id", columns[1], "amount", "status"], rows),
            f"/srv/{app}/sample/{data_name}.csv": csv_text(["id", columns[1], "amount", "status"], old_rows),
            log_path: self.log_text(rng, causes[0], tool, tool_path, env_path, data_dir, report_dir),
        }
        setup = [f"chmod {'644' if 'no_exec' in causes else '755'} {tool_path}", f"chmod 644 {legacy}"]
        if "crlf" in causes:
            setup.append(f"sed -i 's/$/\\r/' {tool_path}")
        if "missing_dir" not in causes:
            setup.append(f"mkdir -p {report_dir}")

        fix_of = {
            "crlf": f"sed -i 's/\\r$//' {tool_path}",
            "shebang": f"sed -i '1s|.*|#!/bin/bash|' {tool_path}",
            "no_exec": f"chmod 755 {tool_path}",
            "env_key": f"sed -i 's/^REPORT_DIRECTORY=/REPORT_DIR=/' {env_path}",
            "missing_dir": f"mkdir -p {report_dir}",
        }
        fixes = [fix_of[c] for c in causes]
        explore = looks(
            rng,
            [
                f"ls -l /opt/{app}/bin/",
                f"{tool_path} || echo exit $?",
                rng.choice([f"tail -n 3 {log_path}", f"ls /var/log/{app}/ && tail -n 3 {log_path}"]),
                rng.choice([f"head -n 3 {tool_path} | cat -A", f"file {tool_path}", f"cat -A {tool_path}"]),
                rng.choice([f"cat {env_path}", f"ls -la /etc/{app}/ && cat {env_path}"]),
            ],
        )
        solution = "\n".join([*explore, *fixes, tool_path, f"cat {report}"]) + "\n"
        near_misses = {
            "fixes_decoy": f"sed -i 's/\\r$//' {legacy}\nchmod 755 {legacy}\n",
            "uses_example_settings": "\n".join(fixes)
            + f"\ncp {env_path}.example {env_path}\nmkdir -p /tmp/{app}-reports\n",
        }
        if difficulty == "hard":
            near_misses["first_cause_only"] = fixes[0] + "\n"
        expected = {
            "tool": tool_path,
            "report": report,
            "rows": len(rows),
            "total": total,
            "untouched": {legacy: sha256_text(legacy_text), f"{env_path}.example": sha256_text(example_text)},
        }
        instruction = self.instruction(rng, difficulty, causes[0], app, tool, tool_path, report)
        return Draft(
            instruction=instruction,
            tests=test_module(self.name, expected, TOOL_TEST + DIGEST_HELPER),
            solution=solution,
            outputs=[report],
            files=files,
            setup=setup,
            extra=metadata(difficulty) | {"causes": " ".join(causes)},
            near_misses=near_misses,
        )

    @staticmethod
    def log_text(rng, cause, tool, tool_path, env_path, data_dir, report_dir) -> str:
        error = {
            "crlf": f"{tool_path}: /bin/bash^M: bad interpreter: No such file or directory",
            "shebang": f"{tool_path}: /usr/local/bin/bash: bad interpreter: No such file or directory",
            "no_exec": f"{tool_path}: Permission denied",
            "env_key": f"{tool_path}: line 5: REPORT_DIR: unbound variable",
            "missing_dir": f"{tool_path}: line 5: {report_dir}/{tool}.txt: No such file or directory",
        }[cause]
        code = {"crlf": 126, "shebang": 126, "no_exec": 126}.get(cause, 1)
        lines = [f"2024-06-0{day}T02:{rng.randint(0, 59):02d}:01 run {tool}\n{error}\nexit {code}" for day in (1, 2, 3)]
        return "\n".join(lines) + "\n"

    @staticmethod
    def instruction(rng, difficulty, cause, app, tool, tool_path, report) -> str:
        if difficulty == "easy":
            said = {
                "crlf": f"`{tool_path}` was saved with Windows (CRLF) line endings, so it cannot start. "
                "Give it Unix line endings",
                "shebang": f"the first line of `{tool_path}` names an interpreter that does not exist here "
                "(`/usr/local/bin/bash`). Make it start with bash from `/bin/bash`",
                "no_exec": f"`{tool_path}` lost its exec bit, so running it fails with 'Permission denied'. "
                "Make it executable (mode 755)",
            }[cause]
            return (
                f"Running {app}'s `{tool}` should write `{report}`, but {said}. Do not change what the tool computes.\n"
            )
        opening = rng.choice(
            [
                f"{app}'s `{tool}` tool (in /opt/{app}/bin) fails every time it runs, so `{report}` is never written.",
                f"Since the last deploy, running `{tool_path}` ends in an error and `{report}` does not appear.",
                f"The `{tool}` job of {app} has stopped working: it is supposed to write `{report}`, and it fails.",
            ]
        )
        goals = [
            f"Make `{tool_path}` work again when run as it is, by its path. The report must still be computed by "
            "the tool from the current data.",
            f"Find out why and fix it, so that running `{tool_path}` by its path writes the report from the "
            "current data again.",
        ]
        keeps = [
            "Leave the other tools and the example settings as they are.",
            "Other tools and example settings files must stay as they are.",
        ]
        return symptom_instruction(rng, difficulty, opening, goals, keeps)


# ------------------------------------------------------------------------------------------
# A daemon that rejects its configuration

DAEMON = r'''#!/usr/bin/env python3
"""@APP@d: the @APP@ daemon. In this image it only checks and prints its configuration.

usage: @APP@d --check | --dump
Reads /etc/@APP@/@APP@.conf, then /etc/@APP@/conf.d/*.conf in name order (later files win).
Each line is `key = value`; `#` starts a comment. Known keys (and defaults): see DEFAULTS.
"""
import glob
import json
import os
import sys

DEFAULTS = @DEFAULTS@
LEVELS = ("debug", "info", "warn", "error")
LOG = "/var/log/@APP@/@APP@d.log"


def fail(message):
    with open(LOG, "a") as log:
        log.write(f"@APP@d: error: {message}\n")
    sys.exit(f"@APP@d: error: {message}")


def value_of(where, key, text):
    if key == "log_level":
        if text not in LEVELS:
            fail(f"{where}: log_level must be one of {', '.join(LEVELS)}, not '{text}'")
        return text
    if key == "data_dir":
        if not os.path.isdir(text):
            fail(f"{where}: data_dir {text} is not a directory")
        return text
    if not text.isdigit():
        fail(f"{where}: {key} must be a whole number, not '{text}'")
    return int(text)


def load():
    settings = dict(DEFAULTS)
    for path in ["/etc/@APP@/@APP@.conf", *sorted(glob.glob("/etc/@APP@/conf.d/*.conf"))]:
        with open(path) as handle:
            for number, raw in enumerate(handle, 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                key, sep, text = (part.strip() for part in line.partition("="))
                where = f"{path}:{number}"
                if not sep:
                    fail(f"{where}: expected `key = value`")
                if key not in DEFAULTS:
                    fail(f"{where}: unknown key '{key}'")
                settings[key] = value_of(where, key, text)
    return settings


if __name__ == "__main__":
    if sys.argv[1:] not in (["--check"], ["--dump"]):
        sys.exit(__doc__)
    config = load()
    print(json.dumps(config, sort_keys=True) if sys.argv[1] == "--dump" else "configuration ok")
'''

CONFIG_TEST = """
def daemon(flag):
    return subprocess.run([EXPECTED["daemon"], flag], capture_output=True, text=True, timeout=60)


def test_daemon_accepts_its_configuration():
    done = daemon("--check")
    assert done.returncode == 0, f"{EXPECTED['daemon']} --check still fails: {done.stdout}{done.stderr}"


def test_settings_are_the_intended_ones():
    done = daemon("--dump")
    assert done.returncode == 0, f"{EXPECTED['daemon']} --dump fails: {done.stderr}"
    settings = json.loads(done.stdout)
    wrong = {k: settings.get(k) for k, v in EXPECTED["settings"].items() if settings.get(k) != v}
    assert not wrong, f"settings {wrong} are not the values the configuration meant: {EXPECTED['settings']}"
"""

CONFIG_DEFAULTS = {
    "listen_port": 8080,
    "workers": 2,
    "log_level": "info",
    "timeout_sec": 30,
    "max_connections": 100,
    "cache_mb": 64,
    "data_dir": "/var/lib/@APP@",
}
MISSPELLINGS = {
    "listen_port": ["listen_prot", "listenport", "listen-port"],
    "workers": ["worker", "wokers", "num_workers"],
    "timeout_sec": ["timeout_secs", "timout_sec", "timeout"],
    "max_connections": ["max_conections", "max_connection", "maxconnections"],
    "cache_mb": ["cache_mbs", "cahce_mb", "cache_size_mb"],
}
UNITS = {"timeout_sec": "s", "cache_mb": "M", "max_connections": " conns"}
LEVEL_ALIASES = {"warn": "warning", "info": "information", "error": "err", "debug": "verbose"}
CONF_PARTS = ["10-network", "20-workers", "30-limits", "40-cache", "50-logging"]


class ConfigRejected(Family):
    name = "config_rejected"
    domain = "system_operations"
    summary = "find why a daemon rejects its configuration (misspelt key, unit, alias, missing dir) from its error"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        daemon = f"/usr/local/bin/{app}d"
        defaults = {k: (v.replace("@APP@", app) if isinstance(v, str) else v) for k, v in CONFIG_DEFAULTS.items()}
        intended = {
            "listen_port": rng.choice([8000, 8081, 8443, 9000, 9090, 5000, 7070]),
            "workers": rng.randint(3, 16),
            "log_level": rng.choice(["warn", "error", "debug"]),
            "timeout_sec": rng.choice([10, 15, 45, 60, 90, 120]),
            "max_connections": rng.choice([50, 200, 250, 500, 1000]),
            "cache_mb": rng.choice([32, 128, 256, 512]),
            "data_dir": rng.choice([f"/srv/{app}/data", f"/var/lib/{app}/store", f"/opt/{app}/data"]),
        }
        kinds = ["misspelt", "unit", "alias", "missing_dir"]
        n_causes = {"easy": 1, "medium": 1, "hard": 2}[difficulty]
        causes = rng.sample(kinds, n_causes)
        # Which keys each cause breaks: distinct keys, so every fix is independent.
        broken: dict[str, str] = {}
        for cause in causes:
            pool = {
                "misspelt": [k for k in MISSPELLINGS if k not in broken],
                "unit": [k for k in UNITS if k not in broken],
                "alias": ["log_level"],
                "missing_dir": ["data_dir"],
            }[cause]
            broken[rng.choice(pool)] = cause
        # Settings spread over the main file and conf.d parts; the main file has listen_port and data_dir.
        parts = sorted(rng.sample(CONF_PARTS, 3))
        placement = {"listen_port": "main", "data_dir": "main"}
        for key in ["workers", "log_level", "timeout_sec", "max_connections", "cache_mb"]:
            placement[key] = rng.choice(parts)
        main_path = f"/etc/{app}/{app}.conf"
        texts: dict[str, list[str]] = {main_path: [f"# {app} daemon settings"]}
        for part in parts:
            texts[f"/etc/{app}/conf.d/{part}.conf"] = [f"# {part.split('-', 1)[1]}"]
        spelled: dict[str, str] = {}
        for key, value in intended.items():
            path = main_path if placement[key] == "main" else f"/etc/{app}/conf.d/{placement[key]}.conf"
            name, text = key, str(value)
            cause = broken.get(key)
            if cause == "misspelt":
                name = rng.choice(MISSPELLINGS[key])
            elif cause == "unit":
                text = f"{value}{UNITS[key]}"
            elif cause == "alias":
                text = LEVEL_ALIASES[str(value)]
            spelled[key] = f"{name} = {text}"
            texts[path].append(spelled[key])
        files = {path: "\n".join(lines) + "\n" for path, lines in texts.items()}
        disabled = f"/etc/{app}/conf.d/60-tuning.conf.disabled"
        files[disabled] = (
            f"# tried during the load test, off for now\nthread_pool = 64\nworkers = {rng.randint(20, 40)}\n"
        )
        old = f"/etc/{app}/{app}.conf.dpkg-old"
        files[old] = f"# settings of {app} 1.x\nport = {rng.choice([80, 8080])}\nloglevel = notice\n"
        program = DAEMON.replace("@APP@", app).replace("@DEFAULTS@", json.dumps(defaults, sort_keys=True))
        files[daemon] = program
        setup = [f"chmod 755 {daemon}", f"mkdir -p /var/log/{app}"]
        if "missing_dir" not in causes:
            setup.append(f"mkdir -p {intended['data_dir']}")
        # The daemon was tried once after the change: its log holds the first error.
        setup.append(f"{daemon} --check >/dev/null 2>&1 || true")

        def where(key: str) -> str:
            return main_path if placement[key] == "main" else f"/etc/{app}/conf.d/{placement[key]}.conf"

        def fix(key: str) -> str:
            if broken[key] == "missing_dir":
                return f"mkdir -p {intended['data_dir']}"
            return f"sed -i 's|^{sed_pattern(spelled[key])}$|{key} = {intended[key]}|' {where(key)}"

        broken_keys = sorted(broken, key=lambda k: (where(k) != main_path, where(k)))  # the order --check meets them
        fixes = [fix(key) for key in broken_keys]
        explore = looks(
            rng,
            [
                f"{daemon} --check || echo exit $?",
                rng.choice([f"tail -n 3 /var/log/{app}/{app}d.log", f"cat /var/log/{app}/{app}d.log"]),
                rng.choice([f"ls /etc/{app}/ /etc/{app}/conf.d/", f"ls -la /etc/{app}/conf.d/"]),
                rng.choice([f"head -n 8 {daemon}", f"grep -n DEFAULTS {daemon}", f"{daemon} --help || true"]),
                f"grep -rn = /etc/{app}/{app}.conf /etc/{app}/conf.d/",
            ],
        )
        checks = [f"{daemon} --check", f"{daemon} --dump"]
        solution = "\n".join([*explore, *fixes, *checks]) + "\n"
        drop_lines = "\n".join(
            f"sed -i '/^{sed_pattern(spelled[k])}$/d' {where(k)}" for k in broken_keys if broken[k] != "missing_dir"
        )
        near_misses = {
            "fixes_decoy": f"sed -i '/^thread_pool/d' {disabled}\nmv {disabled} /etc/{app}/conf.d/60-tuning.conf\n"
        }
        if difficulty == "hard":
            near_misses["first_cause_only"] = fixes[0] + "\n"
        if drop_lines:
            near_misses["deletes_bad_lines"] = drop_lines + (
                f"\nmkdir -p {intended['data_dir']}\n" if "missing_dir" in causes else "\n"
            )
        else:
            near_misses["other_data_dir"] = (
                f"mkdir -p /var/lib/{app}\nsed -i 's|^data_dir = .*|data_dir = /var/lib/{app}|' {main_path}\n"
            )
        expected = {
            "daemon": daemon,
            "settings": intended,
            "untouched": {p: sha256_text(files[p]) for p in (disabled, old, daemon)},
        }
        instruction = self.instruction(rng, difficulty, broken, app, daemon, spelled, intended, where)
        return Draft(
            instruction=instruction,
            tests=test_module(self.name, expected, CONFIG_TEST + DIGEST_HELPER),
            solution=solution,
            outputs=[daemon],
            files=files,
            setup=setup,
            extra=metadata(difficulty) | {"causes": " ".join(broken[k] for k in broken_keys)},
            near_misses=near_misses,
        )

    @staticmethod
    def instruction(rng, difficulty, broken, app, daemon, spelled, intended, where) -> str:
        if difficulty == "easy":
            key, cause = next(iter(broken.items()))
            said = {
                "misspelt": f"`{where(key)}` spells the key `{key}` as `{spelled[key].split(' = ')[0]}`",
                "unit": f"`{where(key)}` gives `{key}` with a unit (`{spelled[key]}`); it takes a whole number",
                "alias": f"`{where(key)}` sets `log_level` to `{spelled[key].split(' = ')[1]}`, which it does not "
                f"know; the value meant is `{intended[key]}`",
                "missing_dir": f"its `data_dir`, `{intended['data_dir']}`, does not exist; create that directory",
            }[cause]
            return (
                f"`{daemon} --check` fails: {said}. Fix it so the check passes with the values the configuration "
                "means; do not change the daemon itself.\n"
            )
        opening = rng.choice(
            [
                f"{app}'s daemon refuses to start since its configuration was last edited: `{daemon} --check` fails.",
                f"After a configuration change, `{daemon} --check` reports an error and {app} will not start.",
                f"The {app} daemon no longer accepts its configuration (`{daemon} --check` fails).",
            ]
        )
        goals = [
            "Find what it objects to and fix the configuration so that the check passes and every setting keeps "
            "the value it was meant to have (`--dump` prints them).",
            "Make the check pass again, with every setting at the value the configuration means (`--dump` prints "
            "the values in effect).",
        ]
        keeps = [
            "Do not change the daemon itself or the files it does not read.",
            "The daemon's own code and any file it does not read must stay as they are.",
        ]
        return symptom_instruction(rng, difficulty, opening, goals, keeps)


# ------------------------------------------------------------------------------------------
# A project's tests fail, and the cause is a data file

RATES_CODE = '''"""Currency conversion for @APP@ invoices."""

import csv
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def load_rates(path=DATA / "rates.csv"):
    """code -> rate (one unit of the currency in the base currency)."""
    rates = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rates[row["code"]] = float(row["rate"])
    return rates


def convert(amount, code, rates=None):
    rates = rates or load_rates()
    return round(amount * rates[code], 2)
'''

DATA_TEST = """
def parsed_rates():
    with open(EXPECTED["rates_file"], newline="", encoding="utf-8") as handle:
        return {row["code"]: row["rate"] for row in csv.DictReader(handle)}


def test_project_tests_pass():
    copy_for_nobody(EXPECTED["project"], "/tmp/project-check")
    done = run_as_nobody(["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test"], "/tmp/project-check")
    assert done.returncode == 0, f"the project's tests fail:\\n{done.stdout[-3000:]}{done.stderr[-1000:]}"


def test_every_rate_kept_with_its_value():
    rates = parsed_rates()
    assert sorted(rates) == sorted(EXPECTED["rates"]), f"currencies {sorted(rates)}, the data had {sorted(EXPECTED['rates'])}"
    for code, rate in EXPECTED["rates"].items():
        assert close(rates[code], rate, 1e-9), f"{code}: rate {rates[code]!r}, it was meant to be {rate}"
"""

CURRENCIES = ["EUR", "USD", "JPY", "GBP", "CHF", "BRL", "INR", "CAD", "NGN", "SEK", "NOK", "PLN"]
DATA_CAUSES = ["decimal_comma", "semicolon", "bom"]


class FailingTestData(Family):
    name = "failing_test_data"
    domain = "development_tooling"
    summary = "find why a project's tests fail when the cause is its data file (decimal comma, separator, BOM)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        project = f"/home/user/{app}-tools"
        package = f"{app}_tools"
        rates_file = f"{project}/data/rates.csv"
        codes = rng.sample(CURRENCIES, rng.randint(5, 8))
        rates = {code: round(rng.uniform(0.2, 3.0), rng.choice([2, 3, 4])) for code in codes}
        causes = rng.sample(DATA_CAUSES if difficulty != "easy" else DATA_CAUSES[:2], 2 if difficulty == "hard" else 1)
        row_causes = [c for c in causes if c != "bom"]
        bad_codes = dict(zip(row_causes, rng.sample(codes, len(row_causes)), strict=True))
        lines = ["code,rate"]
        for code in codes:
            rate = str(rates[code])
            if bad_codes.get("decimal_comma") == code:
                lines.append(f"{code},{rate.replace('.', ',')}")
            elif bad_codes.get("semicolon") == code:
                lines.append(f"{code};{rate}")
            else:
                lines.append(f"{code},{rate}")
        rates_text = "\n".join(lines) + "\n"
        old_text = "code,rate\n" + "".join(f"{c};{round(r * 0.9, 2)}\n" for c, r in rates.items())
        amounts = {code: rng.randint(5, 900) for code in codes}
        test_text = f"from {package}.rates import convert\n\n\n" + "\n\n".join(
            f"def test_{code.lower()}():\n    assert convert({amounts[code]}, {code!r}) == "
            f"{round(amounts[code] * rates[code], 2)!r}\n"
            for code in codes
        )
        code_path = f"{project}/{package}/rates.py"
        code_text = RATES_CODE.replace("@APP@", app)
        test_path = f"{project}/test/test_rates.py"  # test/, not tests/: lint refuses a tests/ in the build context
        old_path = f"{project}/data/rates-2023.csv"
        files = {
            code_path: code_text,
            f"{project}/{package}/__init__.py": "",
            test_path: test_text,
            f"{project}/test/__init__.py": "",
            rates_file: rates_text,
            old_path: old_text,
            f"{project}/README.md": f"# {app}-tools\n\nRun the tests with `python3 -m pytest test`.\n",
        }
        setup = [f"sed -i '1s/^/\\xEF\\xBB\\xBF/' {rates_file}"] if "bom" in causes else []
        bad_comma, bad_semicolon = bad_codes.get("decimal_comma"), bad_codes.get("semicolon")
        fix_of = {
            "decimal_comma": f"sed -i 's/^{bad_comma},\\([0-9]*\\),\\([0-9]*\\)$/{bad_comma},\\1.\\2/' {rates_file}",
            "semicolon": f"sed -i 's/^{bad_semicolon};/{bad_semicolon},/' {rates_file}",
            "bom": f"sed -i '1s/^\\xEF\\xBB\\xBF//' {rates_file}",
        }
        fixes = {cause: fix_of[cause] for cause in causes}
        explore = looks(
            rng,
            [
                "ls -R",
                "python3 -m pytest -q -p no:cacheprovider test 2>&1 | tail -n 20 || true",
                rng.choice([f"cat -A {rates_file}", f"head -c 64 {rates_file} | od -c"]),
                f"grep -n 'rates.csv' -r {package}",
            ],
        )
        checks = ["python3 -m pytest -q -p no:cacheprovider test"]
        solution = "\n".join([f"cd {project}", *explore, *fixes.values(), *checks]) + "\n"
        row_fixes = "".join(fix + "\n" for cause, fix in fixes.items() if cause != "bom")
        near_misses = {
            "fixes_decoy": f"sed -i 's/;/,/' {old_path}\n",
            "edits_the_code": f'sed -i \'s/encoding="utf-8"/encoding="utf-8-sig"/\' {code_path}\n{row_fixes}',
        }
        if row_causes:
            drop = "|".join(bad_codes.values())
            near_misses["drops_bad_rows"] = fixes.get("bom", "") + f"\nsed -i -E '/^({drop})[,;]/d' {rates_file}\n"
        if difficulty == "hard":
            near_misses["first_cause_only"] = fixes[causes[0]] + "\n"
        expected = {
            "project": project,
            "rates_file": rates_file,
            "rates": rates,
            "untouched": {p: sha256_text(files[p]) for p in (code_path, test_path, old_path)},
        }
        if difficulty == "easy":
            said = {
                "decimal_comma": f"the rate of `{bad_codes.get('decimal_comma')}` in `{rates_file}` is written with "
                "a decimal comma",
                "semicolon": f"the `{bad_codes.get('semicolon')}` row of `{rates_file}` uses `;` instead of `,` "
                "between its fields",
            }[causes[0]]
            instruction = (
                f"The tests of `{project}` fail because {said}. Fix the data file so that "
                "`python3 -m pytest test` passes there, keeping every rate's value; do not change the code or the "
                "tests.\n"
            )
        else:
            opening = rng.choice(
                [
                    f"The tests of `{project}` (`python3 -m pytest test`) started failing after the last data update.",
                    f"`python3 -m pytest test` fails in `{project}`, although nobody changed its code.",
                    f"CI reports failing tests for `{project}` since the currency data was refreshed.",
                ]
            )
            goals = [
                "Find the cause and fix it so the tests pass, keeping every currency at the value the data means.",
                "Make the tests pass again; every currency must keep the rate the data gives it.",
            ]
            keeps = [
                "Do not change the code or the tests, and leave older data files as they are.",
                "The code, the tests and older data files must stay as they are.",
            ]
            instruction = symptom_instruction(rng, difficulty, opening, goals, keeps)
        return Draft(
            instruction=instruction,
            tests=test_module(self.name, expected, DATA_TEST + DIGEST_HELPER, helpers=("base", "nobody")),
            solution=solution,
            outputs=[project],
            files=files,
            setup=setup,
            extra=metadata(difficulty) | {"causes": " ".join(causes)},
            near_misses=near_misses,
        )
